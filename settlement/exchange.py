"""The exchange's single writer: the engine and the settlement ledger behind one entry.

``Exchange.apply(cmd)`` and ``Exchange.apply_batch(cmds)`` are the only ways in. They
take one sequenced stream holding both engine commands (orders, halts, the end of day)
and registry commands (accounts, cash, allocation, transfers, surrender, retirement),
in sequence order with no gaps, and append every event to one list, ``out`` (the
engine's own list, shared). The engine's pre-trade holds and fills work on the same
``Ledger`` that registry commands change, so the two can never disagree.

A registry command first passes through the engine as a ``Tick`` with the command's
``seq`` and ``ts``: the engine checks the sequence and the clock and changes trading
phases exactly as for any other command. The registry's end of day is the engine's
``EndOfDay`` (it calls ``Ledger.end_of_day`` after the books close); a ``SettleDay``
sent here is rejected with USE_END_OF_DAY, so T+1 quantities can never be freed in the
middle of a trading day.

Deterministic like the engine: the same commands give the same events, postings and
``state_hash()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, ClassVar, Final

import msgspec

from engine.instrument import ALWAYS_OPEN, Instrument, Schedule
from engine.matching import Engine
from engine.messages import Command, EndOfDay, Event, Stp, Tick
from settlement.ledger import Ledger
from settlement.messages import (
    REGISTRY_COMMANDS,
    HolderType,
    OpenAccount,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    SettleDay,
)
from settlement.structs import ExchangeSnapshot

# Final: compiled by mypyc, these are C statics, not a lookup in the module's dict per
# command (as a name imported from an interpreted module would be).
_REGISTRY: Final = frozenset(REGISTRY_COMMANDS)
_END_OF_DAY: Final = EndOfDay
_STAFF: Final = int(HolderType.STAFF)


class Exchange:
    SNAPSHOT_TYPE: ClassVar[type] = ExchangeSnapshot  # what snapshot() returns (see Engine)

    def __init__(
        self,
        instruments: Iterable[Instrument],
        ledger: Ledger,
        *,
        schedule: Schedule = ALWAYS_OPEN,
        stp_default: int = int(Stp.CANCEL_RESTING),
        member_stp: dict[str, int] | None = None,
    ) -> None:
        self.ledger = ledger
        self.engine = Engine(instruments, ledger, schedule=schedule, stp_default=stp_default, member_stp=member_stp)
        self.out: list[Event] = self.engine.out

    @property
    def last_seq(self) -> int:
        return self.engine.last_seq

    def apply(self, cmd: Command) -> None:
        kind = type(cmd)
        if kind in _REGISTRY:
            self._registry(cmd)
            return
        if kind is _END_OF_DAY:
            self.ledger.cause_seq, self.ledger.cause_ts = cmd.seq, cmd.ts  # type: ignore[attr-defined]
        self.engine.apply(cmd)

    def apply_batch(self, cmds: Iterable[Command]) -> None:
        """The same as apply on each command; runs of engine commands go to the
        engine's batch entry in one call."""
        engine, ledger = self.engine, self.ledger
        run: list[Command] = []
        for cmd in cmds:
            kind = type(cmd)
            if kind in _REGISTRY or kind is _END_OF_DAY:
                if run:
                    engine.apply_batch(run)
                    run = []
                if kind is _END_OF_DAY:
                    ledger.cause_seq, ledger.cause_ts = cmd.seq, cmd.ts  # type: ignore[attr-defined]
                    engine.apply(cmd)
                else:
                    self._registry(cmd)
            else:
                run.append(cmd)
        if run:
            engine.apply_batch(run)

    def _registry(self, cmd: Any) -> None:
        self.engine.apply(Tick(seq=cmd.seq, ts=cmd.ts))  # sequence, clock and phase changes
        if type(cmd) is SettleDay:
            self.out.append(RegistryRejected(cmd.seq, cmd.ts, cmd.actor, "eod", int(RegistryReason.USE_END_OF_DAY),
                                             "the exchange settles the day with the engine's EndOfDay", cmd.ref))
            return
        answer = self.ledger.execute(cmd)
        self.out.append(answer)
        if type(cmd) is OpenAccount and cmd.holder_type == _STAFF and type(answer) is RegistryDone:
            self.engine.staff.add(cmd.account)

    # --- state ------------------------------------------------------------------------

    def state(self) -> list[Any]:
        return [self.engine.state(), self.ledger.full_state()]

    def state_hash(self) -> str:
        return hashlib.blake2b(msgspec.msgpack.encode(self.state()), digest_size=16).hexdigest()

    def snapshot(self) -> ExchangeSnapshot:
        return ExchangeSnapshot(self.engine.snapshot(), self.ledger.snapshot())

    def restore(self, snap: ExchangeSnapshot) -> None:
        """Load a snapshot into an exchange freshly built with the same configuration."""
        self.engine.restore(snap.engine)
        self.ledger.restore(snap.ledger)
        self.ledger.take_postings()
        self.engine.staff = {a for a, s in self.ledger.accounts.items() if s.holder_type == _STAFF}  # the genesis postings of the fresh ledger are recorded already

    def _check(self) -> None:
        self.engine._check()
        self.ledger._check()

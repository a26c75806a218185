"""Shared test helpers: a sequenced registry driver and a small market setup."""

from __future__ import annotations

from typing import Any

from engine import Instrument, ManualClock, Sequencer
from settlement import (
    Allocate,
    ComplianceRules,
    Deposit,
    Exchange,
    Fees,
    HolderType,
    Ledger,
    OpenAccount,
    RegistryDone,
    RegistryRejected,
)

FEES = Fees(trading_ppm=500, settlement_ppm=100, reserve_share_ppm=200_000)
INSTRUMENTS = [Instrument(symbol="CEA24", ref_price=10_000, qty_max=99_999),
               Instrument(symbol="CEA23", ref_price=9_000, qty_max=99_999)]


class Driver:
    """Stamps registry commands with consecutive sequence numbers and applies them to
    a bare ledger (no engine)."""

    def __init__(self, ledger: Ledger, seq: int = 0) -> None:
        self.ledger = ledger
        self.seq = seq

    def __call__(self, cmd: Any) -> RegistryDone | RegistryRejected:
        self.seq += 1
        cmd.seq, cmd.ts = self.seq, self.seq * 1000
        return self.ledger.execute(cmd)

    def ok(self, cmd: Any) -> RegistryDone:
        ev = self(cmd)
        assert isinstance(ev, RegistryDone), ev
        return ev


def member(drive: Driver, account: str, cash: int = 0, holdings: dict[str, int] | None = None,
           holder_type: int = HolderType.COMPLIANCE) -> None:
    drive.ok(OpenAccount("clerk", account, int(holder_type), f"{account} Ltd"))
    if cash:
        drive.ok(Deposit("clerk", account, cash))
    for asset, qty in (holdings or {}).items():
        drive.ok(Allocate("mee", "AUTHORITY", account, asset, qty))


class Market:
    """An exchange on a manual clock with a sequencer: ``send`` stamps and applies."""

    def __init__(self, fees: Fees = FEES, instruments: list[Instrument] = INSTRUMENTS,
                 rules: ComplianceRules | None = None) -> None:
        self.ledger = Ledger(fees, rules)
        self.exchange = Exchange(instruments, self.ledger)
        self.clock = ManualClock(1_700_000_000_000_000_000)
        self.seq = Sequencer(self.clock)

    def send(self, *cmds: Any) -> list[Any]:
        start = len(self.exchange.out)
        for cmd in cmds:
            self.clock.advance(1000)
            self.seq.stamp(cmd)
        self.exchange.apply_batch(list(cmds))
        return self.exchange.out[start:]

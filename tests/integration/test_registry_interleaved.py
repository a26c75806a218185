"""One history, whoever writes it: registry operations through a running exchange and on
a stopped one, interleaved with trading, clean restarts and SIGKILLs.

One seeded run (``ETX_SEED``, printed) against a real ``etx serve`` process
(``tests/integration/exchange.py``). The seed chooses every registry operation, the
user and the way it is sent: ``etx registry --data DIR --credentials F`` beside the
running exchange, a staff user's gateway session (``staff_command``), or ``etx registry``
on the stopped exchange. Between the phases the exchange is stopped cleanly or killed
with SIGKILL while its traders are in the middle of a trade. The traders (M1-M4) trade
all the time the exchange runs, in rounds of one order resting and one crossing it in
full, so every trade settles with fees; some registry operations touch their accounts.

What must hold:
- every operation gets the answer the test's model predicts: "done", or a refusal with
  the predicted reason (a withdrawal of more than is withdrawable, a transfer of more
  than is held, an operation on a suspended account, a clerk allocating ...), and a
  refusal changes nothing;
- the sequence numbers of the answers (the tool's "(seq N)", the gateway's
  ``RegistryDone.seq``) increase strictly across online and offline operations;
- at every stop: the balances the exchange reported just before it (a staff
  ``QueryBalances``), the store (``open_store(...).balances()``), what ``etx registry
  balances`` prints and the model agree; the store has settled through the journal's
  end; ``etx registry audit`` is clean; the journal holds exactly the registry
  commands the test sent (each once, its user as the actor, at the seq its answer
  named) and the store holds a posting ``C<seq>`` for each one answered "done" and for
  nothing else;
- after a SIGKILL: an offline operation works at once (the lock died with the
  process), nothing acknowledged is missing from the journal or the store, and the
  restarted exchange gives the traders the fills they missed.

The model is exact and kept from answers only: accounts, obligations and balances
change with each operation answered "done"; a trade changes the traders' and the fee
accounts' balances by the fee rule of docs/registry.md ("Fees"), applied to the fills
the traders received. After a SIGKILL the traders have not seen every fill until they
log on again, so until then only the accounts that never trade are compared.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.journal import command_decoder, read_journal
from engine.ledger import CASH
from engine.messages import Accepted, Reason, Rejected, Side
from gateway.client import Client
from gateway.config import load
from gateway.protocol import Fill, GatewayReason, Report
from gateway.recovery import JOURNAL_DIR, core_factory, journal_command_types
from settlement.ledger import ACTIVE, CCER, CCER_SHARE_PERCENT, SUSPENDED, vintage
from settlement.messages import (
    REGISTRY_COMMANDS,
    AccountState,
    Allocate,
    Deposit,
    HolderType,
    ObligationState,
    OpenAccount,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    Surrender,
    SuspendAccount,
    Transfer,
    Withdraw,
)
from settlement.store import open_store
from settlement.structs import PPM, Fees
from settlement.units import format_yuan, parse_tonnes, parse_yuan
from tests.integration.exchange import TRADERS, Exchange, staff_command

SEED = int(os.environ.get("ETX_SEED", "20240617"))
SYMBOL = "CEA24"  # the instrument the traders trade (tests/integration/exchange.py)
REF_FEN = 10_000
TRADER_CASH_FEN = 10**10  # CNY 100,000,000.00 each: far more than the rounds ever spend
TRADER_TONNES = 100_000  # far more than the rounds and the transfers out ever take
WARMUP_ROUNDS = 3
ONLINE_OPS = (8, 12)  # operations per phase, inclusive
OFFLINE_OPS = (3, 6)
WAIT_S = 60.0  # any one answer, fill or start, on a loaded machine
TOTAL_S = 900.0
SERVE_ARGS = ("--snapshot-every", "50", "--snapshot-interval", "0.5")  # restarts start from snapshots too
REGISTRY_TYPES = frozenset(REGISTRY_COMMANDS)
COMPLIANCE, INSTITUTION, INDIVIDUAL = int(HolderType.COMPLIANCE), int(HolderType.INSTITUTION), int(HolderType.INDIVIDUAL)
TYPE_NAMES = {COMPLIANCE: "compliance", INSTITUTION: "institution", INDIVIDUAL: "individual"}
# Accounts that never trade, opened at the start and later.
FIRST_ACCOUNTS = {"CO-A": COMPLIANCE, "CO-B": COMPLIANCE, "INST-C": INSTITUTION, "IND-D": INDIVIDUAL}
LATER_ACCOUNTS = {"CO-E": COMPLIANCE, "INST-F": INSTITUTION, "IND-G": INDIVIDUAL}
ASSETS = ("CEA23", "CEA24", CCER)
YEARS = (2023, 2024)
SUSPENDED_MAX = 2  # of the accounts that never trade, so that most stay usable

DONE_LINE = re.compile(r"done: (C\d+) .* \(seq (\d+)\)")
REJECTED_LINE = re.compile(r"rejected: ([A-Z_]+) \((\d+)\): ")
Key = tuple[str, str]


def reason_name(code: int) -> str:
    for enum in (RegistryReason, GatewayReason, Reason):
        try:
            return enum(code).name
        except ValueError:
            continue
    return f"REASON_{code}"


def command_key(cmd: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """A registry command without the numbers the sequencer stamps (actor included)."""
    fields = msgspec.structs.asdict(cmd)
    del fields["seq"], fields["ts"], fields["ref"]  # the tool names its command with a fresh ref
    return type(cmd).__name__, tuple(sorted(fields.items()))


def differences(got: dict[Any, Any], want: dict[Any, Any], got_name: str, want_name: str) -> str:
    lines = [f"  {k}: {got_name} {got.get(k)!r}, {want_name} {want.get(k)!r}"
             for k in sorted(set(got) | set(want), key=repr) if got.get(k) != want.get(k)]
    return "\n".join(lines[:40]) + (f"\n  ... and {len(lines) - 40} more" if len(lines) > 40 else "")


# --- the model ------------------------------------------------------------------------


class Model:
    """What every account should hold, from the answers and the fills received."""

    def __init__(self, fees: Fees, system: dict[str, AccountState]) -> None:
        self.fees = fees
        self.balances: dict[Key, int] = {}
        self.accounts: dict[str, AccountState] = dict(system)
        self.obligations: dict[tuple[str, int], ObligationState] = {}
        self.quiet: set[str] = set()  # accounts that never trade

    def get(self, account: str, asset: str) -> int:
        return self.balances.get((account, asset), 0)

    def add(self, account: str, asset: str, delta: int) -> None:
        value = self.get(account, asset) + delta
        assert value >= 0, f"the model would take {account} {asset} to {value}: the test predicted wrongly"
        self.balances[account, asset] = value

    def nonzero(self, accounts: set[str] | None = None) -> dict[Key, int]:
        return {k: v for k, v in self.balances.items() if v and (accounts is None or k[0] in accounts)}

    def active(self, account: str) -> bool:
        state = self.accounts.get(account)
        return state is not None and state.status == ACTIVE

    def apply(self, cmd: Any) -> None:
        """A command answered "done"."""
        t = type(cmd)
        if t is OpenAccount:
            self.accounts[cmd.account] = AccountState(cmd.account, cmd.holder_type, cmd.name, ACTIVE)
        elif t is SuspendAccount or t is ReinstateAccount:
            old = self.accounts[cmd.account]
            status = SUSPENDED if t is SuspendAccount else ACTIVE
            self.accounts[cmd.account] = AccountState(old.account, old.holder_type, old.name, status)
        elif t is Deposit:
            self.add(cmd.account, CASH, cmd.amount)
        elif t is Withdraw:
            self.add(cmd.account, CASH, -cmd.amount)
        elif t is Allocate:
            self.add(cmd.account, cmd.asset, cmd.qty)
        elif t is Transfer:
            self.add(cmd.source, cmd.asset, -cmd.qty)
            self.add(cmd.target, cmd.asset, cmd.qty)
        elif t is Retire:
            self.add(cmd.account, cmd.asset, -cmd.qty)
        elif t is Surrender:
            self.add(cmd.account, cmd.asset, -cmd.qty)
            ob = self.obligations[cmd.account, cmd.year]
            ccer = ob.ccer + (cmd.qty if cmd.asset == CCER else 0)
            self.obligations[cmd.account, cmd.year] = ObligationState(ob.account, ob.year, ob.required,
                                                                      ob.surrendered + cmd.qty, ccer)
        elif t is SetObligation:
            ob = self.obligations.get((cmd.account, cmd.year)) or ObligationState(cmd.account, cmd.year, 0, 0, 0)
            self.obligations[cmd.account, cmd.year] = ObligationState(cmd.account, cmd.year, cmd.qty, ob.surrendered,
                                                                      ob.ccer)
        else:  # pragma: no cover - the workload makes no other command
            raise AssertionError(f"no model for {cmd!r}")

    def trade(self, price: int, qty: int, buyer: str, seller: str) -> None:
        """docs/registry.md "Fees": both sides pay both fees, floored per fill; the buyer
        on top of the notional, the seller out of the proceeds."""
        f = self.fees
        notional = price * qty
        trading = notional * f.trading_ppm // PPM
        settlement = notional * f.settlement_ppm // PPM
        reserve = 2 * trading * f.reserve_share_ppm // PPM
        self.add(buyer, CASH, -(notional + trading + settlement))
        self.add(seller, CASH, notional - trading - settlement)
        self.add(buyer, SYMBOL, qty)
        self.add(seller, SYMBOL, -qty)
        self.add(f.exchange_account, CASH, 2 * trading - reserve)
        self.add(f.reserve_account, CASH, reserve)
        self.add(f.registry_account, CASH, 2 * settlement)


# --- the operations -------------------------------------------------------------------


@dataclass
class Op:
    cmd: Any  # the command as the core must journal it, its actor filled in
    argv: list[str]  # the same for etx registry
    user: str  # "clerk" or "auth"
    want: str = ""  # "" for done, else the name of the refusal's reason
    journaled: bool = True  # False: refused before the core (the user's role may not send it)
    channel: str = ""  # "tool online", "gateway" or "tool offline"
    seq: int = 0  # the answer's (0: a refusal by the tool, which prints none, or by the gateway)

    def __str__(self) -> str:
        return f"[{self.channel}] {self.user}: {' '.join(self.argv)} (expected {self.want or 'done'})"


def op(cmd: Any, argv: list[str], user: str = "clerk", want: str = "", journaled: bool = True) -> Op:
    cmd.actor = f"EXCH/{user}"
    return Op(cmd, argv, user, want, journaled)


def yuan(fen: int) -> str:
    return format_yuan(fen)


class Workload:
    """The seeded choice of operations. Each is made from what the model knows for
    certain, so its answer is known in advance: the accounts that never trade are exact
    at any moment; of the traders' accounts only what trading cannot change (they stay
    active; their cash and CEA24 stay far above what any operation takes) is used."""

    def __init__(self, rng: random.Random, model: Model) -> None:
        self.rng = rng
        self.model = model
        self.later = list(LATER_ACCOUNTS)
        self.fee_room: dict[str, int] = {}  # fee cash known to be there whatever trades come (set after warm-up)
        self.good: list[Callable[[], Op | None]] = [
            self.open_new, self.deposit, self.deposit, self.withdraw, self.withdraw_trader, self.withdraw_fees,
            self.allocate, self.allocate, self.obligation, self.transfer, self.transfer, self.transfer_from_trader,
            self.surrender, self.surrender, self.retire, self.suspend, self.reinstate,
        ]
        self.bad: list[Callable[[], Op | None]] = [
            self.withdraw_too_much, self.withdraw_too_much_trader, self.transfer_too_much, self.retire_too_much,
            self.on_suspended, self.open_existing, self.surrender_no_obligation, self.surrender_beyond,
            self.surrender_late_vintage, self.surrender_too_much_ccer, self.obligation_wrong_type,
            self.reinstate_active, self.allocate_not_authority, self.transfer_to_self, self.unknown_account,
            self.clerk_allocates,
        ]

    def next(self) -> Op:
        while True:
            make = self.rng.choice(self.bad if self.rng.random() < 0.3 else self.good)
            made = make()
            if made is not None:
                return made

    # --- helpers

    def quiet(self, *, active: bool = True, types: tuple[int, ...] | None = None) -> list[str]:
        m = self.model
        return sorted(a for a in m.quiet if m.active(a) == active
                      and (types is None or m.accounts[a].holder_type in types))

    def holding(self, account: str) -> list[str]:
        return [s for s in ASSETS if self.model.get(account, s) > 0]

    def pick(self, items: list[str]) -> str | None:
        return self.rng.choice(items) if items else None

    # --- setup

    def setup(self) -> list[Op]:
        rng, ops = self.rng, []
        for m in TRADERS:
            ops.append(self._open(m, COMPLIANCE))
            ops.append(op(Deposit("", m, TRADER_CASH_FEN), ["deposit", m, yuan(TRADER_CASH_FEN)]))
            ops.append(op(Allocate("", "AUTHORITY", m, SYMBOL, TRADER_TONNES),
                          ["allocate", m, SYMBOL, str(TRADER_TONNES)], "auth"))
        for account, holder in FIRST_ACCOUNTS.items():
            ops.append(self._open(account, holder))
            amount = rng.randint(10**5, 10**7)
            ops.append(op(Deposit("", account, amount), ["deposit", account, yuan(amount)]))
            for asset in ASSETS:
                qty = rng.randint(100, 5_000)
                ops.append(op(Allocate("", "AUTHORITY", account, asset, qty), ["allocate", account, asset, str(qty)],
                              "auth"))
        for account, year in (("CO-A", 2024), ("CO-B", 2023)):
            qty = rng.randint(1_000, 5_000)
            ops.append(op(SetObligation("", "AUTHORITY", account, year, qty), ["obligation", account, str(year),
                                                                               str(qty)], "auth"))
        return ops

    def _open(self, account: str, holder: int) -> Op:
        name = f"{account} Ltd"
        return op(OpenAccount("", account, holder, name),
                  ["open", account, "--type", TYPE_NAMES[holder], "--name", name])

    def sure(self) -> Op:
        """An operation certain to be done: a deposit into an account that never trades."""
        account = self.rng.choice(self.quiet())
        amount = self.rng.randint(1, 10**6)
        return op(Deposit("", account, amount), ["deposit", account, yuan(amount)])

    # --- done

    def open_new(self) -> Op | None:
        if not self.later:
            return None
        account = self.later.pop(0)
        return self._open(account, LATER_ACCOUNTS[account])

    def deposit(self) -> Op | None:
        account = self.pick(self.quiet() + list(TRADERS))
        if account is None:
            return None
        amount = self.rng.randint(1, 10**7)
        return op(Deposit("", account, amount), ["deposit", account, yuan(amount)])

    def withdraw(self) -> Op | None:
        account = self.pick([a for a in self.quiet() if self.model.get(a, CASH) > 0])
        if account is None:
            return None
        cash = self.model.get(account, CASH)
        amount = cash if self.rng.random() < 0.2 else self.rng.randint(1, cash)  # all of it, now and then
        return op(Withdraw("", account, amount), ["withdraw", account, yuan(amount)])

    def withdraw_trader(self) -> Op | None:
        account = self.rng.choice(TRADERS)
        amount = self.rng.randint(1, 100_000)
        return op(Withdraw("", account, amount), ["withdraw", account, yuan(amount)])

    def withdraw_fees(self) -> Op | None:
        account = self.pick(sorted(a for a, room in self.fee_room.items() if room > 0))
        if account is None:
            return None
        amount = self.rng.randint(1, self.fee_room[account])
        self.fee_room[account] -= amount
        return op(Withdraw("", account, amount), ["withdraw", account, yuan(amount)])

    def allocate(self) -> Op | None:
        account = self.pick(self.quiet() + list(TRADERS))
        if account is None:
            return None
        asset = self.rng.choice(ASSETS)
        qty = self.rng.randint(1, 5_000)
        return op(Allocate("", "AUTHORITY", account, asset, qty), ["allocate", account, asset, str(qty)], "auth")

    def obligation(self) -> Op | None:
        account = self.pick(self.quiet(types=(COMPLIANCE,)))
        if account is None:
            return None
        year = self.rng.choice(YEARS)
        ob = self.model.obligations.get((account, year))
        low = max(ob.surrendered, -(-ob.ccer * 100 // CCER_SHARE_PERCENT)) if ob else 0
        qty = self.rng.randint(max(low, 1), low + 5_000)
        return op(SetObligation("", "AUTHORITY", account, year, qty), ["obligation", account, str(year), str(qty)],
                  "auth")

    def transfer(self) -> Op | None:
        source = self.pick([a for a in self.quiet() if self.holding(a)])
        if source is None:
            return None
        target = self.pick([a for a in self.quiet() + list(TRADERS) if a != source])
        if target is None:
            return None
        asset = self.rng.choice(self.holding(source))
        qty = self.rng.randint(1, self.model.get(source, asset))
        return op(Transfer("", source, target, asset, qty), ["transfer", source, target, asset, str(qty)])

    def transfer_from_trader(self) -> Op | None:
        target = self.pick(self.quiet())
        if target is None:
            return None
        source = self.rng.choice(TRADERS)
        qty = self.rng.randint(1, 50)
        return op(Transfer("", source, target, SYMBOL, qty), ["transfer", source, target, SYMBOL, str(qty)])

    def _surrenderable(self) -> list[tuple[str, int, str, int]]:
        """(account, year, asset, most) for every surrender that can be done now."""
        out = []
        for (account, year), ob in sorted(self.model.obligations.items()):
            if account not in self.model.quiet or not self.model.active(account):
                continue
            for asset in ASSETS:
                if vintage(asset) > year:
                    continue
                most = min(self.model.get(account, asset), ob.required - ob.surrendered)
                if asset == CCER:
                    most = min(most, ob.required * CCER_SHARE_PERCENT // 100 - ob.ccer)
                if most > 0:
                    out.append((account, year, asset, most))
        return out

    def surrender(self) -> Op | None:
        choices = self._surrenderable()
        if not choices:
            return None
        account, year, asset, most = self.rng.choice(choices)
        qty = self.rng.randint(1, most)
        return op(Surrender("", account, asset, qty, year), ["surrender", account, asset, str(qty), str(year)])

    def retire(self) -> Op | None:
        account = self.pick([a for a in self.quiet() if self.holding(a)])
        if account is None:
            return None
        asset = self.rng.choice(self.holding(account))
        qty = self.rng.randint(1, self.model.get(account, asset))
        return op(Retire("", account, asset, qty), ["retire", account, asset, str(qty)])

    def suspend(self) -> Op | None:
        if len(self.quiet(active=False)) >= SUSPENDED_MAX:
            return None
        account = self.pick(self.quiet())
        return None if account is None else op(SuspendAccount("", account), ["suspend", account])

    def reinstate(self) -> Op | None:
        account = self.pick(self.quiet(active=False))
        return None if account is None else op(ReinstateAccount("", account), ["reinstate", account])

    # --- refused

    def withdraw_too_much(self) -> Op | None:
        account = self.pick(self.quiet())
        if account is None:
            return None
        amount = self.model.get(account, CASH) + self.rng.randint(1, 10**6)
        return op(Withdraw("", account, amount), ["withdraw", account, yuan(amount)], want="INSUFFICIENT_CASH")

    def withdraw_too_much_trader(self) -> Op | None:
        account = self.rng.choice(TRADERS)
        amount = 10**12  # CNY 10,000,000,000.00: far more than a trader ever holds
        return op(Withdraw("", account, amount), ["withdraw", account, yuan(amount)], want="INSUFFICIENT_CASH")

    def transfer_too_much(self) -> Op | None:
        source = self.pick(self.quiet())
        target = self.pick([a for a in self.quiet() if a != source])
        if source is None or target is None:
            return None
        asset = self.rng.choice(ASSETS)
        qty = self.model.get(source, asset) + self.rng.randint(1, 1_000)
        return op(Transfer("", source, target, asset, qty), ["transfer", source, target, asset, str(qty)],
                  want="INSUFFICIENT_HOLDINGS")

    def retire_too_much(self) -> Op | None:
        account = self.pick(self.quiet())
        if account is None:
            return None
        asset = self.rng.choice(ASSETS)
        qty = self.model.get(account, asset) + self.rng.randint(1, 1_000)
        return op(Retire("", account, asset, qty), ["retire", account, asset, str(qty)], want="INSUFFICIENT_HOLDINGS")

    def on_suspended(self) -> Op | None:
        account = self.pick(self.quiet(active=False))
        if account is None:
            return None
        if self.rng.random() < 0.5:
            amount = self.rng.randint(1, 10**6)
            return op(Deposit("", account, amount), ["deposit", account, yuan(amount)], want="ACCOUNT_SUSPENDED")
        asset = self.rng.choice(ASSETS)
        return op(Allocate("", "AUTHORITY", account, asset, 10), ["allocate", account, asset, "10"], "auth",
                  want="ACCOUNT_SUSPENDED")

    def open_existing(self) -> Op | None:
        account = self.rng.choice(sorted(self.model.quiet) + list(TRADERS))
        return op(OpenAccount("", account, COMPLIANCE, "again"), ["open", account, "--type", "compliance", "--name",
                                                                  "again"], want="ACCOUNT_EXISTS")

    def surrender_no_obligation(self) -> Op | None:
        account = self.pick(self.quiet(types=(INSTITUTION, INDIVIDUAL)))
        if account is None:
            return None
        return op(Surrender("", account, "CEA23", 1, 2024), ["surrender", account, "CEA23", "1", "2024"],
                  want="NO_OBLIGATION")

    def _obligated(self) -> list[tuple[str, int]]:
        return [k for k in sorted(self.model.obligations) if k[0] in self.model.quiet and self.model.active(k[0])]

    def surrender_beyond(self) -> Op | None:
        if not self._obligated():
            return None
        account, year = self.rng.choice(self._obligated())
        ob = self.model.obligations[account, year]
        qty = ob.required - ob.surrendered + self.rng.randint(1, 100)
        return op(Surrender("", account, "CEA23", qty, year), ["surrender", account, "CEA23", str(qty), str(year)],
                  want="EXCEEDS_OBLIGATION")

    def surrender_late_vintage(self) -> Op | None:
        found = [k for k in self._obligated() if k[1] == 2023]
        if not found:
            return None
        account, year = self.rng.choice(found)
        return op(Surrender("", account, "CEA24", 1, year), ["surrender", account, "CEA24", "1", str(year)],
                  want="VINTAGE_TOO_LATE")

    def surrender_too_much_ccer(self) -> Op | None:
        for account, year in self._obligated():
            ob = self.model.obligations[account, year]
            qty = ob.required * CCER_SHARE_PERCENT // 100 - ob.ccer + 1
            if qty <= ob.required - ob.surrendered:  # else EXCEEDS_OBLIGATION comes first
                return op(Surrender("", account, CCER, qty, year), ["surrender", account, CCER, str(qty), str(year)],
                          want="CCER_LIMIT")
        return None

    def obligation_wrong_type(self) -> Op | None:
        account = self.pick(self.quiet(types=(INSTITUTION, INDIVIDUAL)))
        if account is None:
            return None
        return op(SetObligation("", "AUTHORITY", account, 2024, 100), ["obligation", account, "2024", "100"], "auth",
                  want="WRONG_ACCOUNT_TYPE")

    def reinstate_active(self) -> Op | None:
        account = self.pick(self.quiet() + list(TRADERS))
        return None if account is None else op(ReinstateAccount("", account), ["reinstate", account],
                                                want="NOT_SUSPENDED")

    def allocate_not_authority(self) -> Op | None:
        source = self.rng.choice(sorted(self.model.quiet) + list(TRADERS))
        account = self.rng.choice(TRADERS)
        return op(Allocate("", source, account, SYMBOL, 10), ["allocate", account, SYMBOL, "10", "--authority", source],
                  "auth", want="NOT_AUTHORITY")

    def transfer_to_self(self) -> Op | None:
        account = self.rng.choice(sorted(self.model.quiet) + list(TRADERS))
        return op(Transfer("", account, account, SYMBOL, 1), ["transfer", account, account, SYMBOL, "1"],
                  want="SAME_ACCOUNT")

    def unknown_account(self) -> Op | None:
        return op(Deposit("", "NOBODY", 100), ["deposit", "NOBODY", "1.00"], want="UNKNOWN_ACCOUNT")

    def clerk_allocates(self) -> Op | None:
        account = self.rng.choice(TRADERS)
        return op(Allocate("", "AUTHORITY", account, SYMBOL, 10), ["allocate", account, SYMBOL, "10"], "clerk",
                  want="NOT_PERMITTED", journaled=False)


# --- the traders ----------------------------------------------------------------------


class Trader:
    """A member's session and what it received."""

    def __init__(self, client: Client, member: str) -> None:
        self.client = client
        self.member = member
        self.accepted: dict[str, int] = {}  # coid -> order id
        self.refused: dict[str, Any] = {}  # coid -> Rejected
        self.fills: dict[int, Fill] = {}  # trade id -> this member's fill
        self.complete: set[str] = set()  # coids of orders filled in full
        self.twice: list[str] = []

    def drain(self) -> None:
        inbox = self.client._inbox  # what the exchange sent so far, without waiting
        while not inbox.empty():
            msg = inbox.get_nowait()
            if type(msg) is not Report:
                continue
            body = msg.body
            if isinstance(body, Accepted):
                self.accepted[body.coid] = body.order_id
            elif isinstance(body, Rejected) and body.coid:
                self.refused[body.coid] = body
            elif isinstance(body, Fill):
                if body.trade_id in self.fills:
                    self.twice.append(f"{self.member}: fill of trade {body.trade_id} received twice")
                self.fills[body.trade_id] = body
                if body.leaves == 0:
                    self.complete.add(body.coid)

    async def until(self, done: Callable[[], bool], what: str, coid: str = "") -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            self.drain()
            if coid in self.refused:
                raise AssertionError(f"seed {SEED}: {self.member}'s order {coid} was refused: {self.refused[coid]}")
            if done():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"seed {SEED}: {what} did not happen within {WAIT_S:g} s")
            await asyncio.sleep(0.005)


class Market:
    """Rounds of trading: one trader's order rests, another's crosses it in full."""

    def __init__(self, traders: list[Trader], rng: random.Random) -> None:
        self.traders = traders
        self.rng = rng
        self.rounds = 0
        self.stop = asyncio.Event()
        self.crossing = asyncio.Event()  # set when a round's crossing order has just been sent
        self.task: asyncio.Task[None] | None = None

    async def round(self) -> None:
        seller, buyer = self.rng.sample(self.traders, 2)
        qty = self.rng.randint(2, 20)
        price = REF_FEN + self.rng.randint(-30, 30)
        sell = seller.client.new_order(SYMBOL, Side.SELL, qty, price)
        await seller.until(lambda: sell in seller.accepted, f"{seller.member}'s sell {sell} accepted", sell)
        buy = buyer.client.new_order(SYMBOL, Side.BUY, qty, price)
        self.crossing.set()
        await buyer.until(lambda: buy in buyer.complete, f"{buyer.member}'s buy {buy} filled", buy)
        await seller.until(lambda: sell in seller.complete, f"{seller.member}'s sell {sell} filled", sell)
        self.rounds += 1

    async def _run(self) -> None:
        while not self.stop.is_set():
            await self.round()
            await asyncio.sleep(self.rng.uniform(0.005, 0.03))

    def start(self) -> None:
        self.stop.clear()
        self.task = asyncio.create_task(self._run())

    def check_alive(self) -> None:
        if self.task is not None and self.task.done() and not self.task.cancelled() and self.task.exception():
            raise AssertionError(f"seed {SEED}: trading stopped") from self.task.exception()

    async def finish(self) -> None:
        """Let the round in progress end, then stop."""
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT_S * 3)
            self.task = None

    async def abandon(self) -> None:
        """After a SIGKILL: the round in progress never ends."""
        self.check_alive()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


# --- the run --------------------------------------------------------------------------


class Run:
    def __init__(self, tmp_path: Path) -> None:
        self.rng = random.Random(SEED)
        self.ex = Exchange(tmp_path, *SERVE_ARGS)
        self.cfg = load(self.ex.config)
        ledger = core_factory(self.cfg)().ledger
        self.model = Model(ledger.fees, dict(ledger.accounts))
        self.work = Workload(self.rng, self.model)
        self.traders = [Trader(self.ex.client(m), m) for m in TRADERS]
        self.market = Market(self.traders, random.Random(self.rng.random()))
        self.staff = {"clerk": self.ex.client("EXCH", "clerk"), "auth": self.ex.client("EXCH", "auth")}
        self.store_url = str(self.ex.data / "registry.sqlite")
        self.ops: list[Op] = []
        self.last_seq = 0
        self.applied_trades: set[int] = set()
        self.kills = self.stops = 0
        self.late_fills = 0  # fills a SIGKILL kept from the traders, received at their next logon
        self.left_resting = 0  # orders a SIGKILL left resting mid-round, cancelled at the next logon
        self.channels: Counter[str] = Counter()

    # --- running one operation

    async def online(self, o: Op) -> None:
        o.channel = self.rng.choice(("tool online", "gateway"))
        if o.channel == "gateway":
            client = self.staff[o.user]
            await self.settle_staff(client)  # no earlier staff answer left to take for this one
            answer = await staff_command(client, o.cmd, timeout=WAIT_S)
            self.record(o, *self.gateway_answer(o, answer))
        else:
            done = await asyncio.to_thread(self.ex.registry, o.user, *o.argv)
            self.record(o, *self.tool_answer(o, done))
        self.market.check_alive()
        reply = await self.staff["clerk"].query_balances("", timeout=WAIT_S)
        got = {(b.account, b.asset): b.balance for b in reply.balances if b.account in self.model.quiet and b.balance}
        self.compare_quiet(got, f"the exchange after {o}")

    async def offline(self, o: Op) -> None:
        o.channel = "tool offline"
        done = await asyncio.to_thread(self.ex.registry, o.user, *o.argv)
        self.record(o, *self.tool_answer(o, done))
        got = {(a, s): b for a, s, b, _ in self.store_balances() if a in self.model.quiet and b}
        self.compare_quiet(got, f"the store after {o}")

    def compare_quiet(self, got: dict[Key, int], where: str) -> None:
        want = self.model.nonzero(self.model.quiet)
        assert got == want, (f"seed {SEED}: {where}: the accounts that never trade differ from the model\n"
                             f"{differences(got, want, 'got', 'model')}")

    def tool_answer(self, o: Op, done: Any) -> tuple[str, int, str]:
        """(reason name or "", seq, text) from what etx registry printed."""
        out = f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        if done.returncode == 0:
            m = DONE_LINE.fullmatch(done.stdout.strip())
            assert m is not None, f"seed {SEED}: {o}: etx registry said done but printed no 'done: ... (seq N)'\n{out}"
            assert m.group(1) == f"C{m.group(2)}", f"seed {SEED}: {o}: posting id and seq disagree\n{out}"
            return "", int(m.group(2)), done.stdout.strip()
        m = REJECTED_LINE.match(done.stderr.strip())
        assert done.returncode == 1 and m is not None, f"seed {SEED}: {o}: etx registry failed\n{out}"
        return m.group(1), 0, done.stderr.strip()

    def gateway_answer(self, o: Op, answer: Any) -> tuple[str, int, str]:
        if type(answer) is RegistryDone:
            assert answer.posting_id == f"C{answer.seq}" and answer.actor == o.cmd.actor, f"seed {SEED}: {o}: {answer}"
            return "", answer.seq, repr(answer)
        if type(answer) is RegistryRejected:
            assert answer.actor == o.cmd.actor, f"seed {SEED}: {o}: {answer}"
            return reason_name(answer.reason), answer.seq, repr(answer)
        assert type(answer) is Rejected and answer.seq == 0, f"seed {SEED}: {o}: unexpected answer {answer!r}"
        return reason_name(answer.reason), 0, repr(answer)  # the gateway's refusal, outside the sequence

    def record(self, o: Op, reason: str, seq: int, text: str) -> None:
        assert reason == o.want, (f"seed {SEED}: {o}: expected {o.want or 'done'}, got {reason or 'done'}: {text}\n"
                                  f"after {len(self.ops)} operations")
        if seq:
            assert seq > self.last_seq, (f"seed {SEED}: {o}: seq {seq} after seq {self.last_seq}: the sequence "
                                         f"numbers of the answers must increase strictly")
            self.last_seq = seq
        o.seq = seq
        assert o.journaled or not seq, f"seed {SEED}: {o}: refused before the core yet answered with seq {seq}"
        if not o.want:
            assert seq, f"seed {SEED}: {o}: done without a sequence number: {text}"
            self.model.apply(o.cmd)
            if isinstance(o.cmd, OpenAccount) and o.cmd.account not in TRADERS:
                self.model.quiet.add(o.cmd.account)
        self.ops.append(o)
        self.channels[f"{o.channel} {'done' if not o.want else 'refused'}"] += 1

    # --- sessions

    async def settle_staff(self, client: Client) -> None:
        """A query round trip, then drop what arrived: its reply comes after every
        report the exchange queued before it, so no answer to an earlier operation of
        this staff user (the tool's sessions share its stream) is left to be mistaken
        for the next one's."""
        await client.query_instruments(timeout=WAIT_S)
        while not client._inbox.empty():
            client._inbox.get_nowait()

    async def connect_staff(self) -> None:
        for client in self.staff.values():
            await client.reconnect(timeout=WAIT_S)

    async def connect_traders(self) -> None:
        """Log on again from the last report received: the exchange sends what was
        missed (fills of trades made while a SIGKILL came). Then cancel whatever a killed
        round left resting."""
        for t in self.traders:
            await t.client.reconnect(timeout=WAIT_S)
        for t in self.traders:
            seen = len(t.fills)
            await t.client.query_instruments(timeout=WAIT_S)
            t.drain()
            self.late_fills += len(t.fills) - seen
            resting = await t.client.query_orders(timeout=WAIT_S)
            self.left_resting += len(resting)
            for o in resting:
                t.client.cancel(o.order_id)
            deadline = time.monotonic() + WAIT_S
            while resting:
                assert time.monotonic() < deadline, f"seed {SEED}: {t.member}: orders not cancelled: {resting}"
                await asyncio.sleep(0.02)
                resting = await t.client.query_orders(timeout=WAIT_S)
            await t.client.query_instruments(timeout=WAIT_S)
            t.drain()

    async def close_sessions(self) -> None:
        for client in [*self.staff.values(), *(t.client for t in self.traders)]:
            await client.close()

    async def start(self) -> None:
        self.ex.serve.start()
        recovered, _ = await self.ex.serve.ready()
        assert recovered >= self.last_seq, (f"seed {SEED}: etx serve recovered to seq {recovered}, but seq "
                                            f"{self.last_seq} was acknowledged")

    # --- trades

    def take_trades(self, complete: bool) -> None:
        """Apply to the model every trade both of whose fills have arrived; with
        ``complete``, every trade a fill was received of must have both."""
        sides: dict[int, dict[int, tuple[str, Fill]]] = {}
        for t in self.traders:
            t.drain()
            assert not t.twice, f"seed {SEED}: {t.twice}"
            for trade_id, f in t.fills.items():
                sides.setdefault(trade_id, {})[f.side] = (t.member, f)
        for trade_id in sorted(sides):
            if trade_id in self.applied_trades:
                continue
            both = sides[trade_id]
            if len(both) < 2:
                assert not complete, f"seed {SEED}: trade {trade_id}: only one side's fill arrived: {both}"
                continue
            (buyer, bf), (seller, sf) = both[Side.BUY], both[Side.SELL]
            assert (bf.price, bf.qty) == (sf.price, sf.qty), f"seed {SEED}: trade {trade_id}: fills disagree: {both}"
            self.model.trade(bf.price, bf.qty, buyer, seller)
            self.applied_trades.add(trade_id)

    async def quiesce(self, label: str) -> dict[Key, Any]:
        """Trading stopped and every fill in: the exchange's balances (a staff query of
        every account), checked against the model; returned for the store's check."""
        await self.market.finish()
        for t in self.traders:
            await t.client.query_instruments(timeout=WAIT_S)
            resting = await t.client.query_orders(timeout=WAIT_S)
            assert not resting, f"seed {SEED}: {label}: {t.member} has resting orders after the rounds: {resting}"
        self.take_trades(complete=True)
        reply = await self.staff["clerk"].query_balances("", timeout=WAIT_S)
        rows = {(b.account, b.asset): b for b in reply.balances}
        held = {k: b.held for k, b in rows.items() if b.held}
        assert not held, f"seed {SEED}: {label}: held with no order open: {held}"
        got = {k: b.balance for k, b in rows.items() if b.balance}
        want = self.model.nonzero()
        assert got == want, (f"seed {SEED}: {label}: the exchange's balances differ from the model\n"
                             f"{differences(got, want, 'exchange', 'model')}")
        return rows

    # --- the checks of a stopped exchange

    def store_balances(self) -> list[tuple[str, str, int, int]]:
        store = open_store(self.store_url)
        try:
            return store.balances()
        finally:
            store.close()

    def journal(self) -> tuple[dict[int, Any], int]:
        """The journaled registry commands by seq, and the journal's last seq."""
        decoder = command_decoder(journal_command_types())
        found: dict[int, Any] = {}
        last = 0
        for batch in read_journal(self.ex.data / JOURNAL_DIR, decoder, 0):
            for cmd in batch:
                assert cmd.seq == last + 1, f"seed {SEED}: the journal has seq {cmd.seq} after {last}"
                last = cmd.seq
                if type(cmd) in REGISTRY_TYPES:
                    found[cmd.seq] = cmd
        return found, last

    def check_stopped(self, label: str, complete: bool, exchange: dict[Key, Any] | None = None) -> None:
        """The store, the journal, the printed balances and the audit of the stopped
        exchange. ``complete``: the model knows every trade (not so after a SIGKILL,
        until the traders have logged on again); ``exchange``: the balances the exchange
        reported just before it stopped."""
        where = f"seed {SEED}: {label}"
        journaled, journal_last = self.journal()
        store = open_store(self.store_url)
        try:
            settled = store.last_seq()
            rows = store.balances()
            accounts = {a.account: a for a in store.accounts()}
            obligations = {(o.account, o.year): o for o in store.obligations()}
            postings = {p.posting_id: p for p in store.postings("commands") if p.posting_id.startswith("C")}
            ledger = store.load_ledger(self.model.fees)
        finally:
            store.close()
        assert settled == journal_last, f"{where}: the store settled through seq {settled}, the journal ends at " \
                                        f"{journal_last}"
        balances = {(a, s): b for a, s, b, _ in rows if b}
        self.compare_quiet({k: v for k, v in balances.items() if k[0] in self.model.quiet}, f"{label}: the store")
        if complete:
            want = self.model.nonzero()
            assert balances == want, (f"{where}: the store's balances differ from the model\n"
                                      f"{differences(balances, want, 'store', 'model')}")
        if exchange is not None:
            reported = {k: b.balance for k, b in exchange.items() if b.balance}
            assert balances == reported, (f"{where}: the store's balances differ from the exchange's last answer\n"
                                          f"{differences(balances, reported, 'store', 'exchange')}")
            # Allowances bought today stay unsellable across the stop (the store keeps them pending).
            free = {k: b.available for k, b in exchange.items() if k[1] != CASH}
            stored = {k: ledger.available(*k) for k in free}
            assert stored == free, (f"{where}: what is free to sell differs\n"
                                    f"{differences(stored, free, 'store', 'exchange')}")
        assert accounts == self.model.accounts, (f"{where}: accounts differ\n"
                                                 f"{differences(accounts, self.model.accounts, 'store', 'model')}")
        assert obligations == self.model.obligations, (
            f"{where}: obligations differ\n{differences(obligations, self.model.obligations, 'store', 'model')}")

        # Every operation that reached the core is journaled once, as sent, by its user;
        # each one done has its posting, and no other command has one.
        got = Counter(command_key(c) for c in journaled.values())
        sent = Counter(command_key(o.cmd) for o in self.ops if o.journaled)
        assert got == sent, (f"{where}: the journal's registry commands differ from those sent\n"
                             f"  journaled, never sent (or more often): {sorted((got - sent).elements())[:10]}\n"
                             f"  sent, not journaled (or less often): {sorted((sent - got).elements())[:10]}")
        for o in self.ops:
            if o.seq:
                cmd = journaled.get(o.seq)
                assert cmd is not None and command_key(cmd) == command_key(o.cmd), (
                    f"{where}: {o} was answered with seq {o.seq}; the journal has {cmd!r} there")
        done = {f"C{o.seq}": o for o in self.ops if not o.want}
        assert set(postings) == set(done), (
            f"{where}: command postings differ: in the store only {sorted(set(postings) - set(done))[:10]}, "
            f"done but not in the store {[str(done[p]) for p in sorted(set(done) - set(postings))][:10]}")
        for pid, o in done.items():
            p = postings[pid]
            assert (p.seq, p.actor) == (o.seq, o.cmd.actor), f"{where}: posting {pid} is {p}, for {o}"

        printed = self.ex.etx("registry", "--data", str(self.ex.data), "balances")
        assert printed.returncode == 0, f"{where}: etx registry balances: {printed.stdout}{printed.stderr}"
        shown = {}
        for line in printed.stdout.splitlines()[1:]:
            account, asset, balance, *_ = line.split()
            value = parse_yuan(balance) if asset == CASH else parse_tonnes(balance)
            if value:
                shown[account, asset] = value
        assert shown == balances, (f"{where}: etx registry balances prints other balances than the store holds\n"
                                   f"{differences(shown, balances, 'printed', 'store')}")
        audit = self.ex.etx("registry", "--data", str(self.ex.data), "audit")
        assert audit.returncode == 0 and audit.stdout.startswith("audit: clean"), (
            f"{where}: the audit: exit {audit.returncode}\n{audit.stdout}{audit.stderr}")

    # --- the phases

    def plan(self) -> list[str]:
        ends = ["kill", "stop"] + [self.rng.choice(("kill", "stop")) for _ in range(2)]
        self.rng.shuffle(ends)
        return ends

    async def main(self) -> None:
        ends = self.plan()
        print(f"seed {SEED} (set ETX_SEED to change): online phases ending in {', '.join(ends)}, then a last one "
              f"ending in a stop; offline operations after each")
        await self.start()
        await self.connect_staff()
        for o in self.work.setup():
            await self.online(o)
        await self.connect_traders()
        for _ in range(WARMUP_ROUNDS):
            await self.market.round()
        self.take_trades(complete=True)
        fees = self.model.fees
        self.work.fee_room = {a: self.model.get(a, CASH) for a in (fees.exchange_account, fees.registry_account)}
        assert all(self.work.fee_room.values()), f"seed {SEED}: the warm-up trades paid no fees: {self.model.balances}"

        for phase, end in enumerate([*ends, "stop"], 1):
            self.market.start()
            for _ in range(self.rng.randint(*ONLINE_OPS)):
                await self.online(self.work.next())
            last = phase == len(ends) + 1
            if end == "stop":
                rows = await self.quiesce(f"phase {phase}, before the stop")
                await self.close_sessions()
                code = self.ex.stop()
                assert code == 0, f"seed {SEED}: etx serve exited with {code}:\n{self.ex.serve.output()[-3000:]}"
                self.stops += 1
                self.check_stopped(f"phase {phase}, after a clean stop", complete=True, exchange=rows)
            else:
                # Kill in the middle of a round: its crossing order just sent, the trade
                # perhaps made and journaled, its fills perhaps not delivered yet.
                self.market.crossing.clear()
                await asyncio.wait_for(self.market.crossing.wait(), WAIT_S)
                await asyncio.sleep(self.rng.uniform(0.0, 0.01))
                self.ex.kill()
                self.kills += 1
                await self.market.abandon()
                # The lock died with the process: an offline operation works at once. Then
                # every operation acknowledged before the kill must be in the journal and
                # the store (check_stopped), the accounts that never trade as the model says.
                await self.offline(self.work.sure())
                self.check_stopped(f"phase {phase}, right after a SIGKILL and an offline operation", complete=False)
            if last:
                break
            for _ in range(self.rng.randint(*OFFLINE_OPS)):
                await self.offline(self.work.next())
            self.check_stopped(f"phase {phase}, after the offline operations", complete=end == "stop")
            await self.start()
            await self.connect_staff()
            await self.connect_traders()
            self.take_trades(complete=True)
            await self.quiesce(f"phase {phase}, after the restart")  # the traders' fills and the model agree again
        refused = sum(1 for o in self.ops if o.want)
        print(f"seed {SEED}: {len(self.ops)} registry operations ({refused} refused) by channel "
              f"{dict(sorted(self.channels.items()))}; {self.market.rounds} trading rounds, "
              f"{len(self.applied_trades)} trades; {self.stops} clean stops, {self.kills} SIGKILLs, after which "
              f"{self.late_fills} fills came at the next logon and {self.left_resting} orders were left resting; "
              f"last seq {self.last_seq}")


def test_registry_operations_online_and_offline_keep_one_history(tmp_path: Path) -> None:
    run = Run(tmp_path)

    async def main() -> None:
        try:
            await asyncio.wait_for(run.main(), TOTAL_S)
        except BaseException:
            print(f"seed {SEED}: failed; the last of etx serve's log:\n{run.ex.serve.output()[-4000:]}")
            raise
        finally:
            proc = run.ex.serve.proc
            if proc is not None and proc.poll() is None:
                run.ex.kill()

    asyncio.run(main())

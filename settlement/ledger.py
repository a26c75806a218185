"""The in-memory ledger: who owns what, what is held, and what is not yet free.

``Ledger`` is the engine's source of truth for pre-trade holds (it implements
``engine.ledger.HoldLedger``) and the registry's balances between two store writes.

Per (account, asset) it keeps one small list ``[balance, held, unsellable,
unwithdrawable]``:
- ``balance``: what the account owns (fen for cash, tonnes for allowances and CCER);
- ``held``: the part that open orders hold;
- ``unsellable``: allowances bought today, sellable from the next trading day (T+1);
- ``unwithdrawable``: cash from today's sales; usable for buying at once (a purchase
  spends it first), withdrawable after the end-of-day settlement.
Available to hold is ``balance - held - unsellable`` (``unsellable`` is always 0 for
cash, so one formula serves both). Withdrawable cash is ``balance - held -
unwithdrawable``. No number ever goes negative, ``held + unsellable <= balance`` and
``unwithdrawable <= balance``; every operation checks before it changes anything, so
it is all or nothing.

Fees (parts per million of the notional, floored per fill): the buyer pays the trading
and the settlement fee on top of the notional, the seller pays them out of the
proceeds. A share of the trading fees goes to the risk reserve. ``cash_required(n) = n +
ceil(n * (trading_ppm + settlement_ppm) / 1e6)``: because the hold rounds up and each
fill's fee rounds down, the hold the engine takes always covers every fill of it.

Every change is a posting appended to the ``postings`` outbox (the settler takes it
from there to the store): a ``TradePosting`` for a trade, a ``Posting`` for the rest.
Posting the same id twice changes nothing; the same id with a different content is an
error (``LedgerError``, and nothing changes). How the ledger knows what it applied:
- registry commands, days, the system accounts, and every posting given to
  ``apply_posting`` (recorded postings, which can come again): their ids and a
  fingerprint of their content are kept in ``applied`` (about 100 bytes each, for the
  life of the process; there are few of them);
- trades from ``settle``: the engine numbers trades in strictly increasing order, so
  the ledger keeps a watermark, the highest trade id settled (``trade_mark``), and the
  last trade itself, instead of an id per trade (which would cost about 100 bytes and
  a formatted id per trade). The last trade again changes nothing; with a different
  content it is an error; a trade at or below the watermark that is not the last one
  is refused (``LedgerError``): its content is not kept, so it cannot be recognised,
  and the engine never sends one (a restarted exchange settles its replayed trades into
  a fresh ledger, and the store recognises those it holds already). Trade postings
  given to ``apply_posting`` raise the watermark too, so no trade settles twice
  whichever way it arrives (a recorded trade in a plain ``Posting``, which keeps no
  trade numbers, raises it without being the last trade: settling that id is refused).

Registry commands (``execute``) answer with ``RegistryDone`` or ``RegistryRejected``;
a rejected command changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from msgspec.structs import astuple
from mypy_extensions import mypyc_attr

from engine.ledger import CASH, HoldLedger
from engine.messages import Side, Trade
from settlement.messages import (
    COMMAND_KINDS,
    FEE_TYPES,
    MEMBER_TYPES,
    AccountState,
    AccountStatus,
    Allocate,
    AnyPosting,
    ApproveVerification,
    CloseCompliance,
    ComplianceState,
    Deposit,
    HolderType,
    Leg,
    ObligationState,
    OpenAccount,
    Posting,
    PreAllocate,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    SettleDay,
    SubmitVerification,
    Surrender,
    SuspendAccount,
    TradePosting,
    Transfer,
    Withdraw,
)
from settlement.structs import _ACCOUNT_ID, PPM, Benchmark, ComplianceRules, Fees, LedgerSnapshot
from settlement.units import format_yuan

BUY: Final = int(Side.BUY)
# Final aliases of names the hot path uses from interpreted modules: C statics when
# compiled (an imported name is a lookup in the module's dict at every use).
_astuple: Final = astuple
_TradePosting: Final = TradePosting
# Ledger.settle unpacks astuple(trade) in this order.
TRADE_FIELDS = ("seq", "ts", "trade_id", "instrument", "price", "qty", "aggressor", "maker_order_id", "maker_member",
                "taker_order_id", "taker_member")
assert Trade.__struct_fields__ == TRADE_FIELDS, Trade.__struct_fields__
ACTIVE, SUSPENDED = int(AccountStatus.ACTIVE), int(AccountStatus.SUSPENDED)
_COVERED: Final = frozenset({HolderType.COMPLIANCE})  # entities with obligations and compliance years
CCER = "CCER"
CCER_SHARE_PERCENT = 5  # CCER may cover at most 5 % of a year's obligation
AMOUNT_MAX = 10**15  # any single amount (fen or tonnes) above this is a typing error
# The most of any asset the registry may hold in all (fen or tonnes): CNY 10^15, or
# 10^17 t. Deposits and allocations that would take an asset's supply past it are
# refused (LIMIT_EXCEEDED); as balances only move that supply around, no balance, held
# or pending amount can pass it either, and every one stays an exact 64-bit integer
# (2^63 is about 9.2 * 10^18) in the store.
BALANCE_MAX = 10**17
ACCOUNT_NAME_MAX = 64
YEAR_MIN, YEAR_MAX = 2000, 2099

_ALLOWANCE = re.compile(r"CEA(\d\d)(?:-(\d\d))?")


class LedgerError(Exception):
    """A programmer error or corrupt input (a settle that the holds do not cover, a
    posting id reused with another content). The ledger is unchanged when raised."""


def vintage(asset: str) -> int:
    """The vintage year of an allowance symbol (CEA24 -> 2024; CEA19-20 -> 2020),
    0 for CCER, -1 for anything that is not an allowance or CCER."""
    if asset == CCER:
        return 0
    match = _ALLOWANCE.fullmatch(asset)
    if match is None:
        return -1
    return 2000 + int(match.group(2) or match.group(1))


@mypyc_attr(acyclic=True)
class Entry:
    """One account's amounts of one asset: ``balance`` (held and not yet free amounts
    included), ``held`` by open orders, ``unsellable`` (allowances bought today, T+1)
    and ``unwithdrawable`` (cash from today's sales, free at the end of the day).

    A plain class, not a list of four integers: compiled by mypyc it is a native
    class whose fields are machine integers, so the hot paths (a hold, a release, the
    dozen updates that settle one fill) change them without allocating; in a list each
    update made a new int object and freed the old one."""

    __slots__ = ("balance", "held", "unsellable", "unwithdrawable")

    def __init__(self, balance: int = 0, held: int = 0, unsellable: int = 0, unwithdrawable: int = 0) -> None:
        self.balance = balance
        self.held = held
        self.unsellable = unsellable
        self.unwithdrawable = unwithdrawable

    def values(self) -> tuple[int, int, int, int]:
        return (self.balance, self.held, self.unsellable, self.unwithdrawable)

    def set(self, other: Entry) -> None:
        self.balance, self.held = other.balance, other.held
        self.unsellable, self.unwithdrawable = other.unsellable, other.unwithdrawable

    def __repr__(self) -> str:
        return f"Entry{self.values()}"


@mypyc_attr(acyclic=True)
class Net:
    """A covered entity's allowances sold less bought since the last close (the banking
    cap's figure): a native cell, updated twice a fill without allocating."""

    __slots__ = ("qty",)

    def __init__(self, qty: int = 0) -> None:
        self.qty = qty


_Handler = Callable[[Any, str], "RegistryDone | RegistryRejected"]


class Ledger(HoldLedger):
    """Balances, holds and T+1 quantities per account and asset; see the module
    docstring for the contract."""

    __slots__ = (
        "fees", "entries", "_by_account", "_live", "accounts", "obligations", "postings", "applied", "day",
        "issued", "surrendered", "retired", "deposited", "withdrawn", "cause_seq", "cause_ts",
        "_trading_ppm", "_settlement_ppm", "_buyer_ppm", "_share_ppm", "_fee_entries", "_handlers",
        "trade_mark", "_last_trade", "_fee_accounts", "rules", "compliance", "cycle_value", "cycle_qty", "_sold",
        "expired",
    )

    def __init__(self, fees: Fees | None = None, rules: ComplianceRules | None = None) -> None:
        fees = fees or Fees()
        fees.check()
        self.fees = fees
        rules = rules or ComplianceRules()
        rules.check()
        self.rules = rules
        # The compliance years: (account, year) -> its record; and, since the last
        # close, the value and tonnes of allowance trades (the penalty's average price)
        # and each covered entity's allowances sold less bought (the banking cap): one
        # cell per compliance account, so that a fill costs two lookups and no insert.
        self.compliance: dict[tuple[str, int], ComplianceState] = {}
        self.cycle_value = 0
        self.cycle_qty = 0
        self._sold: dict[str, Net] = {}
        self.entries: dict[tuple[str, str], Entry] = {}
        # The same entries by account, then asset: the hot paths find an entry with two
        # string keys (hashes cached in the strings, mostly identical objects) instead of
        # building, hashing and comparing a tuple key.
        self._by_account: dict[str, dict[str, Entry]] = {}
        # Active accounts only, each the same dict as in _by_account: holds look here,
        # so a suspended account takes no new hold.
        self._live: dict[str, dict[str, Entry]] = {}
        self.accounts: dict[str, AccountState] = {}
        self.obligations: dict[tuple[str, int], ObligationState] = {}
        self.postings: list[AnyPosting] = []  # the outbox
        self.applied: dict[str, int] = {}  # posting id -> fingerprint of its content (not settle's trades)
        self.trade_mark = 0  # the highest trade id settled (the watermark)
        self._last_trade: TradePosting | None = None  # the trade settled at the watermark
        self.day = 1
        # Conservation counters: what entered and left each asset.
        self.issued: dict[str, int] = {}
        self.surrendered: dict[str, int] = {}
        self.retired: dict[str, int] = {}
        self.expired: dict[str, int] = {}  # cancelled by the banking cap at a close
        self.deposited = 0
        self.withdrawn = 0
        # The command that causes an end of day (set by the exchange before EndOfDay).
        self.cause_seq = 0
        self.cause_ts = 0
        self._trading_ppm = fees.trading_ppm
        self._settlement_ppm = fees.settlement_ppm
        self._buyer_ppm = fees.trading_ppm + fees.settlement_ppm
        self._share_ppm = fees.reserve_share_ppm
        # Read once: compiled, each attribute read of the Fees Struct is a generic getattr.
        self._fee_accounts = (fees.exchange_account, fees.reserve_account, fees.registry_account)
        self._handlers: dict[type, _Handler] = {
            OpenAccount: self._open, SuspendAccount: self._suspend, ReinstateAccount: self._reinstate,
            Deposit: self._deposit, Withdraw: self._withdraw, Allocate: self._allocate,
            Transfer: self._transfer, Surrender: self._surrender, Retire: self._retire,
            SettleDay: self._settle_day, SetObligation: self._set_obligation, PreAllocate: self._pre_allocate,
            SubmitVerification: self._submit, ApproveVerification: self._approve, CloseCompliance: self._close,
        }
        system = (
            (fees.exchange_account, HolderType.EXCHANGE_FEE, "exchange trading fees"),
            (fees.registry_account, HolderType.REGISTRY_FEE, "registry settlement fees"),
            (fees.reserve_account, HolderType.RISK_RESERVE, "risk reserve"),
            (fees.authority_account, HolderType.AUTHORITY, "issuing authority"),
        )
        for account, holder_type, name in system:
            state = AccountState(account, int(holder_type), name, ACTIVE)
            self._post(Posting(f"G-{account}", 0, 0, "open", "genesis", "", (), account, f"open {name}", state))
            self._entry(account, CASH)
        self._fee_entries = (
            self.entries[fees.exchange_account, CASH],
            self.entries[fees.reserve_account, CASH],
            self.entries[fees.registry_account, CASH],
        )

    # --- the engine's hold protocol (hot path) ----------------------------------------

    def cash_required(self, notional: int) -> int:
        return notional - (-notional * self._buyer_ppm // PPM)

    def hold(self, account: str, asset: str, amount: int) -> bool:
        try:
            e = self._live[account][asset]
        except KeyError:  # no entry, or a suspended account: nothing to hold
            return amount == 0 and account in self.accounts and self.accounts[account].status == ACTIVE
        if 0 <= amount <= e.balance - e.held - e.unsellable:
            e.held += amount
            return True
        return False

    def release(self, account: str, asset: str, amount: int) -> None:
        e = self._by_account[account][asset]
        if not 0 <= amount <= e.held:
            raise LedgerError(f"release of {amount} {asset} from {account}: only {e.held} held")
        e.held -= amount

    def settle(self, trade: Trade, buyer_hold: int) -> None:
        # The engine's hot path, once per fill: no text, no container, no fingerprint;
        # the posting is one untracked Struct of numbers and names already held.
        # One C call reads every field (in Trade's field order): compiled by mypyc, each
        # attribute read of a msgspec Struct would be a generic getattr.
        seq: Any
        ts: Any
        trade_id: int
        instrument: str
        price: int
        qty: int
        aggressor: int
        maker: str
        taker: str
        seq, ts, trade_id, instrument, price, qty, aggressor, _, maker, _, taker = _astuple(trade)
        if trade_id <= self.trade_mark:
            self._settle_again(trade)
            return
        if aggressor == BUY:
            buyer, seller = taker, maker
        else:
            buyer, seller = maker, taker
        notional = price * qty
        tf = notional * self._trading_ppm // PPM
        sf = notional * self._settlement_ppm // PPM
        cost = notional + tf + sf
        by_account = self._by_account
        try:
            buyer_entries, seller_entries = by_account[buyer], by_account[seller]
            bc, sa = buyer_entries[CASH], seller_entries[instrument]
        except KeyError:
            raise LedgerError(self._uncovered(trade, buyer_hold, cost)) from None
        buyer_held, seller_held = bc.held, sa.held
        if buyer_hold < cost or buyer_held < buyer_hold or seller_held < qty or qty <= 0 or price <= 0:
            raise LedgerError(self._uncovered(trade, buyer_hold, cost))
        sc = seller_entries.get(CASH) or self._entry(seller, CASH)
        ba = buyer_entries.get(instrument) or self._entry(buyer, instrument)
        net = notional - tf - sf
        bc.held = buyer_held - buyer_hold
        bc.balance -= cost
        # A purchase spends today's sale proceeds first (the market lets proceeds buy at
        # once but not leave before the end-of-day settlement), so as much settled cash
        # as possible stays withdrawable.
        proceeds = bc.unwithdrawable
        dp = -(cost if cost < proceeds else proceeds)
        bc.unwithdrawable = proceeds + dp
        sc.balance += net
        sc.unwithdrawable += net
        sa.held = seller_held - qty
        sa.balance -= qty
        ba.balance += qty
        ba.unsellable += qty
        if instrument != CCER:  # the compliance cycle's figures: average price, net allowances sold
            self.cycle_value += notional
            self.cycle_qty += qty
            cells = self._sold
            cell = cells.get(seller)
            if cell is not None:
                cell.qty += qty
            cell = cells.get(buyer)
            if cell is not None:
                cell.qty -= qty
        reserve = 2 * tf * self._share_ppm // PPM
        ex, rr, rg = self._fee_entries
        ex.balance += 2 * tf - reserve
        rr.balance += reserve
        rg.balance += 2 * sf
        exchange_account, reserve_account, registry_account = self._fee_accounts
        posting = self._last_trade = _TradePosting(
            trade_id, seq, ts, instrument, price, qty, buyer, seller, dp, tf, sf, reserve,
            exchange_account, reserve_account, registry_account)
        self.trade_mark = trade_id
        self.postings.append(posting)

    def _uncovered(self, trade: Trade, buyer_hold: int, cost: int) -> str:
        held, qty = self.entry(trade.buyer, CASH)[1], self.entry(trade.seller, trade.instrument)[1]
        return (f"trade {trade.trade_id}: holds do not cover it (buyer {trade.buyer} frees {buyer_hold} of {held} "
                f"held for cost {cost}; seller {trade.seller} holds {qty} of {trade.qty} t)")

    def _settle_again(self, trade: Trade) -> None:
        """A trade at or below the watermark: the last one again changes nothing."""
        last = self._last_trade
        if last is None or last.trade_id != trade.trade_id:
            raise LedgerError(f"trade {trade.trade_id}: trades settle in increasing id order and trade "
                              f"{self.trade_mark} is settled already")
        if (last.instrument, last.price, last.qty, last.buyer, last.seller) != (
                trade.instrument, trade.price, trade.qty, trade.buyer, trade.seller):
            raise LedgerError(f"posting T{trade.trade_id} was applied with a different content")

    def end_of_day(self) -> None:
        """T+1 quantities become sellable and sale proceeds withdrawable. The cause is
        the command the exchange set in ``cause_seq``/``cause_ts``."""
        self._end_of_day(self.cause_seq, self.cause_ts, "")

    def holding(self, account: str, asset: str) -> int:
        """The account's balance of ``asset`` (held and T+1 quantities included)."""
        by_asset = self._by_account.get(account)
        if by_asset is None:
            return 0
        e = by_asset.get(asset)
        return e.balance if e is not None else 0

    def state(self) -> list[tuple[str, str, int, int]]:
        return [(a, s, e.balance, e.held) for (a, s), e in sorted(self.entries.items()) if e.balance or e.held]

    # --- queries ----------------------------------------------------------------------

    @property
    def held(self) -> dict[tuple[str, str], int]:
        """Held amount per (account, asset), non-zero only (the engine's _check reads it)."""
        return {key: e.held for key, e in self.entries.items() if e.held}

    def entry(self, account: str, asset: str) -> tuple[int, int, int, int]:
        """(balance, held, unsellable, unwithdrawable); zeros when there is none."""
        e = self.entries.get((account, asset))
        return e.values() if e is not None else (0, 0, 0, 0)

    def available(self, account: str, asset: str) -> int:
        """What an order could hold, or a registry operation could move, now."""
        e = self.entries.get((account, asset))
        return e.balance - e.held - e.unsellable if e is not None else 0

    def withdrawable(self, account: str) -> int:
        e = self.entries.get((account, CASH))
        return max(0, e.balance - e.held - e.unwithdrawable) if e is not None else 0

    def take_postings(self) -> list[AnyPosting]:
        """Hand the outbox over (the core's thread only) and start a new one."""
        out = self.postings
        self.postings = []
        return out

    # --- registry commands ------------------------------------------------------------

    def execute(self, cmd: Any) -> RegistryDone | RegistryRejected:
        """Apply one sequenced registry command; the answer says what happened."""
        kind = COMMAND_KINDS.get(type(cmd), "")
        handler = self._handlers.get(type(cmd))
        if handler is None:
            return RegistryRejected(getattr(cmd, "seq", 0), getattr(cmd, "ts", 0), getattr(cmd, "actor", ""), kind,
                                    int(RegistryReason.INVALID_FIELD), f"not a registry command: {type(cmd).__name__}")
        for name in ("account", "source", "target", "asset", "name", "actor", "industry"):
            value = getattr(cmd, name, "")
            if not isinstance(value, str):
                return self._reject(cmd, kind, RegistryReason.INVALID_FIELD, f"{name} must be text")
        for name in ("amount", "qty", "year", "holder_type", "output", "emissions"):
            value = getattr(cmd, name, 0)
            if type(value) is not int:
                return self._reject(cmd, kind, RegistryReason.INVALID_FIELD, f"{name} must be an integer")
        posting_id = f"C{cmd.seq}"
        if posting_id in self.applied:
            if self.applied[posting_id] != hash(msgspec.msgpack.encode(cmd)):
                raise LedgerError(f"posting {posting_id} was applied with a different content")
            return RegistryDone(cmd.seq, cmd.ts, cmd.actor, kind, posting_id, "already applied", cmd.ref)
        return handler(cmd, kind)

    def _reject(self, cmd: Any, kind: str, reason: RegistryReason, text: str) -> RegistryRejected:
        return RegistryRejected(cmd.seq, cmd.ts, cmd.actor, kind, int(reason), text, cmd.ref)

    def _done(self, cmd: Any, kind: str, legs: tuple[Leg, ...], subject: str, text: str,
              account: AccountState | None = None, obligation: ObligationState | None = None,
              compliance: tuple[ComplianceState, ...] = ()) -> RegistryDone:
        posting_id = f"C{cmd.seq}"
        posting = Posting(posting_id, cmd.seq, cmd.ts, kind, str(cmd.seq), cmd.actor, legs, subject, text,
                          account, obligation, compliance)
        self._post(posting, hash(msgspec.msgpack.encode(cmd)))
        return RegistryDone(cmd.seq, cmd.ts, cmd.actor, kind, posting_id, text, cmd.ref)

    def _account(self, cmd: Any, kind: str, account: str,
                 types: frozenset[HolderType] | None = MEMBER_TYPES) -> AccountState | RegistryRejected:
        """The account if it exists, is active and is of one of the types."""
        state = self.accounts.get(account)
        if state is None:
            return self._reject(cmd, kind, RegistryReason.UNKNOWN_ACCOUNT, f"no account {account!r}")
        if state.status != ACTIVE:
            return self._reject(cmd, kind, RegistryReason.ACCOUNT_SUSPENDED, f"account {account} is suspended")
        if types is not None and state.holder_type not in types:
            return self._reject(cmd, kind, RegistryReason.WRONG_ACCOUNT_TYPE,
                                f"account {account} is of type {HolderType(state.holder_type).name}")
        return state

    def _amount(self, cmd: Any, kind: str, amount: int, unit: str) -> RegistryRejected | None:
        if not 0 < amount <= AMOUNT_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_AMOUNT,
                                f"amount must be in [1, {AMOUNT_MAX}] {unit}, got {amount}")
        return None

    def _supply_room(self, cmd: Any, kind: str, asset: str, amount: int) -> RegistryRejected | None:
        """A rejection when ``amount`` more of ``asset`` would take its total in the
        registry past BALANCE_MAX."""
        supply = self.supply().get(asset, 0)
        if supply + amount > BALANCE_MAX:
            if asset == CASH:
                what = f"{format_yuan(supply)} CNY are in the registry; {format_yuan(amount)} more would pass " \
                       f"the maximum of {format_yuan(BALANCE_MAX)}"
            else:
                what = f"{supply} t {asset} are in the registry; {amount} t more would pass the maximum of {BALANCE_MAX} t"
            return self._reject(cmd, kind, RegistryReason.LIMIT_EXCEEDED, what)
        return None

    def _unit(self, cmd: Any, kind: str, asset: str) -> RegistryRejected | None:
        """Allowances and CCER only."""
        if vintage(asset) < 0:
            return self._reject(cmd, kind, RegistryReason.INVALID_ASSET,
                                f"expected an allowance vintage (CEA24, CEA19-20) or CCER, got {asset!r}")
        return None

    def _open(self, cmd: OpenAccount, kind: str) -> RegistryDone | RegistryRejected:
        if not _ACCOUNT_ID.fullmatch(cmd.account):
            return self._reject(cmd, kind, RegistryReason.INVALID_FIELD,
                                f"account id must be 1-64 letters, digits, '_', '.', '-', got {cmd.account!r}")
        if len(cmd.name) > ACCOUNT_NAME_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_FIELD,
                                f"name must be at most {ACCOUNT_NAME_MAX} characters")
        if cmd.account in self.accounts:
            return self._reject(cmd, kind, RegistryReason.ACCOUNT_EXISTS, f"account {cmd.account} exists")
        if cmd.holder_type not in HolderType.__members__.values():
            return self._reject(cmd, kind, RegistryReason.INVALID_FIELD,
                                f"holder type must be 1-7, got {cmd.holder_type}")
        state = AccountState(cmd.account, cmd.holder_type, cmd.name, ACTIVE)
        return self._done(cmd, kind, (), cmd.account,
                          f"open {HolderType(cmd.holder_type).name.lower()} account {cmd.account}", state)

    def _suspend(self, cmd: SuspendAccount, kind: str) -> RegistryDone | RegistryRejected:
        state = self.accounts.get(cmd.account)
        if state is None:
            return self._reject(cmd, kind, RegistryReason.UNKNOWN_ACCOUNT, f"no account {cmd.account!r}")
        if state.holder_type not in MEMBER_TYPES:
            return self._reject(cmd, kind, RegistryReason.WRONG_ACCOUNT_TYPE, "system accounts cannot be suspended")
        if state.status == SUSPENDED:
            return self._reject(cmd, kind, RegistryReason.ACCOUNT_SUSPENDED, f"account {cmd.account} is suspended")
        new = AccountState(state.account, state.holder_type, state.name, SUSPENDED)
        return self._done(cmd, kind, (), cmd.account, f"suspend {cmd.account}", new)

    def _reinstate(self, cmd: ReinstateAccount, kind: str) -> RegistryDone | RegistryRejected:
        state = self.accounts.get(cmd.account)
        if state is None:
            return self._reject(cmd, kind, RegistryReason.UNKNOWN_ACCOUNT, f"no account {cmd.account!r}")
        if state.status != SUSPENDED:
            return self._reject(cmd, kind, RegistryReason.NOT_SUSPENDED, f"account {cmd.account} is not suspended")
        new = AccountState(state.account, state.holder_type, state.name, ACTIVE)
        return self._done(cmd, kind, (), cmd.account, f"reinstate {cmd.account}", new)

    def _deposit(self, cmd: Deposit, kind: str) -> RegistryDone | RegistryRejected:
        state = self._account(cmd, kind, cmd.account)
        if isinstance(state, RegistryRejected):
            return state
        bad = self._amount(cmd, kind, cmd.amount, "fen") or self._supply_room(cmd, kind, CASH, cmd.amount)
        if bad:
            return bad
        return self._done(cmd, kind, ((cmd.account, CASH, cmd.amount, 0),), cmd.account,
                          f"deposit {format_yuan(cmd.amount)} CNY")

    def _withdraw(self, cmd: Withdraw, kind: str) -> RegistryDone | RegistryRejected:
        state = self._account(cmd, kind, cmd.account, MEMBER_TYPES | FEE_TYPES)
        if isinstance(state, RegistryRejected):
            return state
        bad = self._amount(cmd, kind, cmd.amount, "fen")
        if bad:
            return bad
        free = self.withdrawable(cmd.account)
        if cmd.amount > free:
            b, h, _, u = self.entry(cmd.account, CASH)
            return self._reject(cmd, kind, RegistryReason.INSUFFICIENT_CASH,
                                f"withdrawable cash is {format_yuan(free)} CNY (balance {format_yuan(b)}, held "
                                f"{format_yuan(h)}, unsettled sales {format_yuan(u)}), asked {format_yuan(cmd.amount)}")
        return self._done(cmd, kind, ((cmd.account, CASH, -cmd.amount, 0),), cmd.account,
                          f"withdraw {format_yuan(cmd.amount)} CNY")

    def _not_authority(self, cmd: Any, kind: str, what: str) -> RegistryRejected | None:
        """A rejection unless the command's source is the issuing authority's account."""
        source = self.accounts.get(cmd.source)
        if source is None or source.holder_type != HolderType.AUTHORITY:
            return self._reject(cmd, kind, RegistryReason.NOT_AUTHORITY,
                                f"only the issuing authority {what}; {cmd.source!r} is not an authority account")
        return None

    def _allocate(self, cmd: Allocate, kind: str) -> RegistryDone | RegistryRejected:
        not_authority = self._not_authority(cmd, kind, "allocates")
        if not_authority:
            return not_authority
        bad = self._unit(cmd, kind, cmd.asset) or self._amount(cmd, kind, cmd.qty, "t")
        if bad:
            return bad
        # The authority may issue into its own account: the allowances it sells in its auctions.
        state = self._account(cmd, kind, cmd.account, MEMBER_TYPES | {HolderType.AUTHORITY})
        if isinstance(state, RegistryRejected):
            return state
        if state.holder_type == HolderType.AUTHORITY and cmd.account != cmd.source:
            return self._reject(cmd, kind, RegistryReason.WRONG_ACCOUNT_TYPE,
                                f"an authority issues only into its own account, not {cmd.account}")
        bad = self._supply_room(cmd, kind, cmd.asset, cmd.qty)
        if bad:
            return bad
        return self._done(cmd, kind, ((cmd.account, cmd.asset, cmd.qty, 0),), cmd.account,
                          f"allocate {cmd.qty} t {cmd.asset} by {cmd.source}")

    def _moveable(self, cmd: Any, kind: str, account: str, asset: str, qty: int) -> RegistryRejected | None:
        free = self.available(account, asset)
        if qty > free:
            b, h, u, _ = self.entry(account, asset)
            return self._reject(cmd, kind, RegistryReason.INSUFFICIENT_HOLDINGS,
                                f"{account} has {free} t {asset} free (balance {b}, held {h}, bought today {u}), "
                                f"asked {qty}")
        return None

    def _transfer(self, cmd: Transfer, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._unit(cmd, kind, cmd.asset) or self._amount(cmd, kind, cmd.qty, "t")
        if bad:
            return bad
        if cmd.source == cmd.target:
            return self._reject(cmd, kind, RegistryReason.SAME_ACCOUNT, "source and target are the same account")
        for account in (cmd.source, cmd.target):
            state = self._account(cmd, kind, account)
            if isinstance(state, RegistryRejected):
                return state
        bad = self._moveable(cmd, kind, cmd.source, cmd.asset, cmd.qty)
        if bad:
            return bad
        legs = ((cmd.source, cmd.asset, -cmd.qty, 0), (cmd.target, cmd.asset, cmd.qty, 0))
        return self._done(cmd, kind, legs, cmd.source, f"transfer {cmd.qty} t {cmd.asset} to {cmd.target}")

    def _surrender(self, cmd: Surrender, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._unit(cmd, kind, cmd.asset) or self._amount(cmd, kind, cmd.qty, "t")
        if bad:
            return bad
        state = self._account(cmd, kind, cmd.account)
        if isinstance(state, RegistryRejected):
            return state
        ob = self.obligations.get((cmd.account, cmd.year))
        if ob is None:
            return self._reject(cmd, kind, RegistryReason.NO_OBLIGATION,
                                f"{cmd.account} has no obligation for {cmd.year}")
        closed = self._closed(cmd, kind, cmd.year)
        if closed:
            return closed
        year = vintage(cmd.asset)
        if year > cmd.year:
            return self._reject(cmd, kind, RegistryReason.VINTAGE_TOO_LATE,
                                f"vintage {year} of {cmd.asset} is later than the obligation year {cmd.year}")
        if ob.surrendered + cmd.qty > ob.required:
            return self._reject(cmd, kind, RegistryReason.EXCEEDS_OBLIGATION,
                                f"obligation {ob.required} t for {cmd.year}, {ob.surrendered} t surrendered; "
                                f"{cmd.qty} t more exceeds it")
        ccer = ob.ccer
        if cmd.asset == CCER:
            limit = ob.required * CCER_SHARE_PERCENT // 100
            if ccer + cmd.qty > limit:
                return self._reject(cmd, kind, RegistryReason.CCER_LIMIT,
                                    f"CCER may cover at most {limit} t ({CCER_SHARE_PERCENT} %) of the "
                                    f"{cmd.year} obligation; {ccer} t already surrendered")
            ccer += cmd.qty
        bad = self._moveable(cmd, kind, cmd.account, cmd.asset, cmd.qty)
        if bad:
            return bad
        new = ObligationState(cmd.account, cmd.year, ob.required, ob.surrendered + cmd.qty, ccer)
        return self._done(cmd, kind, ((cmd.account, cmd.asset, -cmd.qty, 0),), cmd.account,
                          f"surrender {cmd.qty} t {cmd.asset} for {cmd.year}", obligation=new)

    def _retire(self, cmd: Retire, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._unit(cmd, kind, cmd.asset) or self._amount(cmd, kind, cmd.qty, "t")
        if bad:
            return bad
        state = self._account(cmd, kind, cmd.account)
        if isinstance(state, RegistryRejected):
            return state
        bad = self._moveable(cmd, kind, cmd.account, cmd.asset, cmd.qty)
        if bad:
            return bad
        return self._done(cmd, kind, ((cmd.account, cmd.asset, -cmd.qty, 0),), cmd.account,
                          f"retire {cmd.qty} t {cmd.asset}")

    def _set_obligation(self, cmd: SetObligation, kind: str) -> RegistryDone | RegistryRejected:
        not_authority = self._not_authority(cmd, kind, "sets obligations")
        if not_authority:
            return not_authority
        if not YEAR_MIN <= cmd.year <= YEAR_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_FIELD,
                                f"year must be in [{YEAR_MIN}, {YEAR_MAX}], got {cmd.year}")
        if not 0 <= cmd.qty <= AMOUNT_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_AMOUNT,
                                f"obligation must be in [0, {AMOUNT_MAX}] t, got {cmd.qty}")
        state = self._account(cmd, kind, cmd.account, _COVERED)
        if isinstance(state, RegistryRejected):
            return state
        closed = self._closed(cmd, kind, cmd.year)
        if closed:
            return closed
        ob = self.obligations.get((cmd.account, cmd.year)) or ObligationState(cmd.account, cmd.year, 0, 0, 0)
        if cmd.qty < ob.surrendered or cmd.qty * CCER_SHARE_PERCENT // 100 < ob.ccer:
            return self._reject(cmd, kind, RegistryReason.OBLIGATION_BELOW_SURRENDERED,
                                f"{ob.surrendered} t ({ob.ccer} t CCER) already surrendered for {cmd.year}")
        new = ObligationState(cmd.account, cmd.year, cmd.qty, ob.surrendered, ob.ccer)
        return self._done(cmd, kind, (), cmd.account, f"obligation {cmd.qty} t for {cmd.year}", obligation=new)

    # --- the compliance year ----------------------------------------------------------

    def _closed(self, cmd: Any, kind: str, year: int) -> RegistryRejected | None:
        if year in self.closed_years():
            return self._reject(cmd, kind, RegistryReason.YEAR_CLOSED, f"the compliance year {year} is closed")
        return None

    def closed_years(self) -> set[int]:
        return {year for (_, year), c in self.compliance.items() if c.closed}

    def _year_ok(self, cmd: Any, kind: str) -> RegistryRejected | None:
        if not YEAR_MIN <= cmd.year <= YEAR_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_FIELD,
                                f"year must be in [{YEAR_MIN}, {YEAR_MAX}], got {cmd.year}")
        return None

    def _benchmark(self, cmd: Any, kind: str, industry: str, year: int) -> Benchmark | RegistryRejected:
        rules = self.rules
        if industry not in rules.industries:
            return self._reject(cmd, kind, RegistryReason.UNKNOWN_INDUSTRY,
                                f"industry {industry!r} is not covered (industries: {', '.join(rules.industries)})")
        bench = rules.benchmark(industry, year)
        if bench is None:
            return self._reject(cmd, kind, RegistryReason.UNKNOWN_INDUSTRY,
                                f"no benchmark for {industry} in {year}: configure one under [[compliance.benchmark]]")
        return bench

    def _pre_allocate(self, cmd: PreAllocate, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._not_authority(cmd, kind, "allocates") or self._year_ok(cmd, kind)
        if bad:
            return bad
        if not 0 < cmd.output <= AMOUNT_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_AMOUNT,
                                f"output must be in [1, {AMOUNT_MAX}], got {cmd.output}")
        state = self._account(cmd, kind, cmd.account, _COVERED)
        if isinstance(state, RegistryRejected):
            return state
        bench = self._benchmark(cmd, kind, cmd.industry, cmd.year)
        if isinstance(bench, RegistryRejected):
            return bench
        closed = self._closed(cmd, kind, cmd.year)
        if closed:
            return closed
        c = self.compliance.get((cmd.account, cmd.year)) or ComplianceState(cmd.account, cmd.year)
        if c.industry:
            return self._reject(cmd, kind, RegistryReason.ALREADY_ALLOCATED,
                                f"{cmd.account} was pre-allocated for {cmd.year} already ({c.pre_allocated} t)")
        computed = self.rules.entitlement(bench, cmd.output) * self.rules.pre_allocation_pct // 100
        qty = max(0, computed - c.deducted)
        asset = allowance(cmd.year)
        bad = self._supply_room(cmd, kind, asset, qty)
        if bad:
            return bad
        new = msgspec.structs.replace(c, industry=cmd.industry, base_output=cmd.output, pre_allocated=qty)
        legs: tuple[Leg, ...] = ((cmd.account, asset, qty, 0),) if qty else ()
        less = f" less {c.deducted} t for a shortfall" if c.deducted else ""
        return self._done(cmd, kind, legs, cmd.account,
                          f"pre-allocate {qty} t {asset} ({cmd.industry}, output {cmd.output}, "
                          f"{self.rules.pre_allocation_pct} % of {computed * 100 // max(1, self.rules.pre_allocation_pct)} t"
                          f"{less})", compliance=(new,))

    def _submit(self, cmd: SubmitVerification, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._year_ok(cmd, kind)
        if bad:
            return bad
        for name, value in (("output", cmd.output), ("emissions", cmd.emissions)):
            if not 0 <= value <= AMOUNT_MAX:
                return self._reject(cmd, kind, RegistryReason.INVALID_AMOUNT,
                                    f"{name} must be in [0, {AMOUNT_MAX}], got {value}")
        state = self._account(cmd, kind, cmd.account, _COVERED)
        if isinstance(state, RegistryRejected):
            return state
        c = self.compliance.get((cmd.account, cmd.year))
        if c is None or not c.industry:
            return self._reject(cmd, kind, RegistryReason.NOT_PRE_ALLOCATED,
                                f"{cmd.account} has no allocation for {cmd.year} (pre-allocate it first)")
        closed = self._closed(cmd, kind, cmd.year)
        if closed:
            return closed
        new = msgspec.structs.replace(c, submitted_output=cmd.output, submitted_emissions=cmd.emissions,
                                      submitted_by=cmd.actor)
        return self._done(cmd, kind, (), cmd.account,
                          f"verification submitted for {cmd.year}: output {cmd.output}, emissions {cmd.emissions} t",
                          compliance=(new,))

    def _approve(self, cmd: ApproveVerification, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._not_authority(cmd, kind, "approves verifications") or self._year_ok(cmd, kind)
        if bad:
            return bad
        state = self._account(cmd, kind, cmd.account, _COVERED)
        if isinstance(state, RegistryRejected):
            return state
        c = self.compliance.get((cmd.account, cmd.year))
        if c is None or not c.submitted_by:
            return self._reject(cmd, kind, RegistryReason.NOT_SUBMITTED,
                                f"no verification of {cmd.account} for {cmd.year} waits for approval")
        closed = self._closed(cmd, kind, cmd.year)
        if closed:
            return closed
        earlier = cmd.year - 1
        if earlier not in self.closed_years() and any(y == earlier for _, y in self.obligations):
            # Its shortfalls are deducted from this year's allocation at this true-up.
            return self._reject(cmd, kind, RegistryReason.YEAR_CLOSED,
                                f"the compliance year {earlier} must be closed before {cmd.year} is trued up")
        bench = self._benchmark(cmd, kind, c.industry, cmd.year)
        if isinstance(bench, RegistryRejected):
            return bench
        asset = allowance(cmd.year)
        final = max(0, self.rules.entitlement(bench, c.submitted_output) - c.deducted)
        owed, trued_up = c.owed, c.trued_up
        delta = final - (c.pre_allocated + trued_up - owed)
        legs: tuple[Leg, ...] = ()
        if delta > 0:
            repaid = min(owed, delta)
            owed -= repaid
            give = delta - repaid
            if give:
                bad = self._supply_room(cmd, kind, asset, give)
                if bad:
                    return bad
                trued_up += give
                legs = ((cmd.account, asset, give, 0),)
        elif delta < 0:
            take = min(-delta, self.available(cmd.account, asset))
            trued_up -= take
            owed += -delta - take
            if take:
                legs = ((cmd.account, asset, -take, 0),)
        ob = self.obligations.get((cmd.account, cmd.year)) or ObligationState(cmd.account, cmd.year, 0, 0, 0)
        required = c.submitted_emissions + owed
        if required > AMOUNT_MAX:
            return self._reject(cmd, kind, RegistryReason.INVALID_AMOUNT, f"obligation {required} t is too large")
        if required < ob.surrendered or required * CCER_SHARE_PERCENT // 100 < ob.ccer:
            return self._reject(cmd, kind, RegistryReason.OBLIGATION_BELOW_SURRENDERED,
                                f"{ob.surrendered} t ({ob.ccer} t CCER) already surrendered for {cmd.year}; "
                                f"the verified obligation would be {required} t")
        verified = f"{c.submitted_by}/{cmd.actor}"
        new = msgspec.structs.replace(c, trued_up=trued_up, owed=owed, submitted_output=0, submitted_emissions=0,
                                      submitted_by="", verified_output=c.submitted_output,
                                      verified_emissions=c.submitted_emissions, verified_by=verified)
        obligation = ObligationState(cmd.account, cmd.year, required, ob.surrendered, ob.ccer)
        move = f"true-up {'+' if delta >= 0 else ''}{delta} t {asset}"
        if owed:
            move += f" ({owed} t not returned, added to the obligation)"
        return self._done(cmd, kind, legs, cmd.account,
                          f"verified {cmd.year}: output {c.submitted_output}, emissions {c.submitted_emissions} t; "
                          f"allocation {final} t, {move}; obligation {required} t",
                          obligation=obligation, compliance=(new,))

    def average_price(self) -> int:
        """Fen per tonne of the allowance trades since the last close (0: none)."""
        return self.cycle_value // self.cycle_qty if self.cycle_qty else 0

    def _close(self, cmd: CloseCompliance, kind: str) -> RegistryDone | RegistryRejected:
        bad = self._not_authority(cmd, kind, "closes a compliance year") or self._year_ok(cmd, kind)
        if bad:
            return bad
        closed = self._closed(cmd, kind, cmd.year)
        if closed:
            return closed
        entities = sorted(a for a, y in self.obligations if y == cmd.year)
        if not entities:
            return self._reject(cmd, kind, RegistryReason.NO_OBLIGATION, f"no obligation is set for {cmd.year}")
        after = self.rules.deadline_passed_at(cmd.year)
        if cmd.ts < after:
            return self._reject(cmd, kind, RegistryReason.BEFORE_DEADLINE,
                                f"the {cmd.year} surrender deadline is {cmd.year + self.rules.deadline_years_after}-"
                                f"{self.rules.deadline_month:02d}-{self.rules.deadline_day:02d}: the year closes after it")
        price = self.average_price()
        rules = self.rules
        states: list[ComplianceState] = []
        legs: list[Leg] = []
        short_total = 0
        for account in entities:
            ob = self.obligations[account, cmd.year]
            c = self.compliance.get((account, cmd.year)) or ComplianceState(account, cmd.year)
            shortfall = ob.required - ob.surrendered
            penalty = shortfall * price * rules.penalty_multiple_ppm // PPM
            # The banking cap: older vintages (this year's and before) carried past the
            # close are capped at a base plus a multiple of the net allowances sold.
            cell = self._sold.get(account)
            cap = rules.banking_base + max(0, cell.qty if cell is not None else 0) * rules.banking_sold_ppm // PPM
            old = sorted((vintage(asset), asset) for asset in self._by_account.get(account, {})
                         if 0 < vintage(asset) <= cmd.year)
            excess = sum(self.entries[account, asset].balance for _, asset in old) - cap
            expired = 0
            for _, asset in old:
                if excess <= 0:
                    break
                take = min(excess, self.available(account, asset))
                if take:
                    legs.append((account, asset, -take, 0))
                    excess -= take
                    expired += take
            states.append(msgspec.structs.replace(c, closed=True, shortfall=shortfall, penalty=penalty,
                                                  expired=expired))
            if shortfall:
                short_total += shortfall
                n = self.compliance.get((account, cmd.year + 1)) or ComplianceState(account, cmd.year + 1)
                states.append(msgspec.structs.replace(n, deducted=n.deducted + shortfall))
        return self._done(cmd, kind, tuple(legs), "",
                          f"closed {cmd.year}: {len(entities)} entities, {short_total} t short, average price "
                          f"{format_yuan(price)} CNY/t, {-sum(leg[2] for leg in legs)} t expired by the banking cap",
                          compliance=tuple(states))

    def _settle_day(self, cmd: SettleDay, kind: str) -> RegistryDone | RegistryRejected:
        posting_id = self._end_of_day(cmd.seq, cmd.ts, cmd.actor)
        self.applied[f"C{cmd.seq}"] = hash(msgspec.msgpack.encode(cmd))
        return RegistryDone(cmd.seq, cmd.ts, cmd.actor, kind, posting_id, f"day {self.day - 1} settled", cmd.ref)

    # --- postings ---------------------------------------------------------------------

    def _entry(self, account: str, asset: str) -> Entry:
        key = (account, asset)
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = Entry()
            by_asset = self._by_account.get(account)
            if by_asset is None:
                by_asset = self._by_account[account] = {}
                state = self.accounts.get(account)
                if state is not None and state.status == ACTIVE:
                    self._live[account] = by_asset
            by_asset[asset] = e
        return e

    def _end_of_day(self, seq: int, ts: int, actor: str) -> str:
        legs: list[Leg] = []
        for (account, asset), e in sorted(self.entries.items()):
            if e.unsellable:
                legs.append((account, asset, 0, -e.unsellable))
            if e.unwithdrawable:
                legs.append((account, asset, 0, -e.unwithdrawable))
        posting_id = f"D{self.day}"
        self._post(Posting(posting_id, seq, ts, "eod", str(seq), actor, tuple(legs), "", f"end of day {self.day}"))
        return posting_id

    def _post(self, posting: Posting, fingerprint: int | None = None) -> None:
        """Apply a posting all or nothing and put it in the outbox."""
        self.apply_posting(posting, fingerprint)
        self.postings.append(posting)

    def apply_posting(self, posting: AnyPosting, fingerprint: int | None = None) -> bool:
        """Apply a posting's legs and records, all or nothing; False (and no change)
        when it was applied already. Used for the ledger's own postings and to
        rebuild a ledger from recorded postings (the audit)."""
        pid = posting.posting_id
        if fingerprint is None:
            fingerprint = hash(msgspec.msgpack.encode(posting))
        prior = self.applied.get(pid)
        if prior is not None:
            if prior != fingerprint:
                raise LedgerError(f"posting {pid} was applied with a different content")
            return False
        if posting.kind == "eod" and posting.posting_id != f"D{self.day}":
            raise LedgerError(f"posting {pid}: the ledger is on day {self.day}")
        # Compute every new entry first; change nothing unless all of them are valid.
        new: dict[tuple[str, str], Entry] = {}
        for account, asset, delta, pending in posting.legs:
            key = (account, asset)
            e = new.get(key)
            if e is None:
                e = new[key] = Entry()
                old = self.entries.get(key)
                if old is not None:
                    e.set(old)
            e.balance += delta
            if asset == CASH:
                e.unwithdrawable += pending
            else:
                e.unsellable += pending
        for (account, asset), e in new.items():
            if account not in self.accounts and not (posting.account and posting.account.account == account):
                raise LedgerError(f"posting {pid}: no account {account!r}")
            if not _entry_ok(e, asset == CASH):
                raise LedgerError(f"posting {pid}: {account} {asset} would become {e}")
        if posting.account is not None and posting.kind == "open" and posting.account.account in self.accounts:
            raise LedgerError(f"posting {pid}: account {posting.account.account} exists")
        # Commit.
        for _, asset, delta, _ in posting.legs:
            if delta and asset != CASH:
                kind = posting.kind
                if kind == "allocate":
                    self.issued[asset] = self.issued.get(asset, 0) + delta
                elif kind == "surrender":
                    self.surrendered[asset] = self.surrendered.get(asset, 0) - delta
                elif kind == "retire":
                    self.retired[asset] = self.retired.get(asset, 0) - delta
                elif kind == "preallocate" or kind == "approve":
                    self.issued[asset] = self.issued.get(asset, 0) + delta
                elif kind == "close":
                    self.expired[asset] = self.expired.get(asset, 0) - delta
            elif delta:
                if posting.kind == "deposit":
                    self.deposited += delta
                elif posting.kind == "withdraw":
                    self.withdrawn -= delta
        if posting.account is not None:
            self._set_account(posting.account)
        for (account, asset), values in new.items():
            self._entry(account, asset).set(values)
        if posting.obligation is not None:
            ob = posting.obligation
            self.obligations[ob.account, ob.year] = ob
        for c in posting.compliance:
            self.compliance[c.account, c.year] = c
        if posting.kind == "close":
            self.cycle_value = self.cycle_qty = 0
            for cell in self._sold.values():
                cell.qty = 0
        if posting.kind == "eod":
            self.day += 1
        if posting.kind == "trade":
            number = _trade_number(posting)
            if number > self.trade_mark:
                # A recorded trade raises the watermark: settle never applies it again.
                self.trade_mark = number
                self._last_trade = posting if type(posting) is TradePosting else None
            if type(posting) is TradePosting and posting.instrument != CCER:  # as settle counts it
                self.cycle_value += posting.price * posting.qty
                self.cycle_qty += posting.qty
                cells = self._sold
                if posting.seller in cells:
                    cells[posting.seller].qty += posting.qty
                if posting.buyer in cells:
                    cells[posting.buyer].qty -= posting.qty
        self.applied[pid] = fingerprint
        return True

    @property
    def sold(self) -> dict[str, int]:
        """Each covered entity's allowances sold less bought since the last close (not 0)."""
        return {a: cell.qty for a, cell in self._sold.items() if cell.qty}

    def _set_account(self, state: AccountState) -> None:
        account = state.account
        self.accounts[account] = state
        if state.holder_type == HolderType.COMPLIANCE and account not in self._sold:
            self._sold[account] = Net()
        by_asset = self._by_account.get(account)
        if state.status == ACTIVE and by_asset is not None:
            self._live[account] = by_asset
        else:
            self._live.pop(account, None)

    # --- snapshot, state, invariants --------------------------------------------------

    def snapshot(self) -> LedgerSnapshot:
        """Everything except the outbox and the applied ids (the store has those)."""
        totals = [("issued", a, n) for a, n in sorted(self.issued.items())]
        totals += [("surrendered", a, n) for a, n in sorted(self.surrendered.items())]
        totals += [("retired", a, n) for a, n in sorted(self.retired.items())]
        totals += [("expired", a, n) for a, n in sorted(self.expired.items())]
        totals += [("deposited", CASH, self.deposited), ("withdrawn", CASH, self.withdrawn)]
        return LedgerSnapshot(
            self.day,
            [self.accounts[a] for a in sorted(self.accounts)],
            [(a, s, e.balance, e.held, e.unsellable, e.unwithdrawable) for (a, s), e in sorted(self.entries.items())],
            [self.obligations[k] for k in sorted(self.obligations)],
            totals,
            [self.compliance[k] for k in sorted(self.compliance)],
            (self.cycle_value, self.cycle_qty),
            sorted((a, cell.qty) for a, cell in self._sold.items() if cell.qty),
        )

    def restore(self, snap: LedgerSnapshot, *, keep_holds: bool = True) -> None:
        """Load a snapshot (or the store's picture) into a ledger built with the same
        fees. Without ``keep_holds`` every hold starts at 0 (no order is open)."""
        self.day = snap.day
        self.accounts = {}
        self.entries = {}
        self._by_account = {}
        self._live = {}
        for state in snap.accounts:
            self.accounts[state.account] = state
        for account, asset, balance, held, unsellable, unwithdrawable in snap.entries:
            e = self._entry(account, asset)
            e.balance, e.held = balance, (held if keep_holds else 0)
            e.unsellable, e.unwithdrawable = unsellable, unwithdrawable
        for account in self.fees.system_accounts():
            if account not in self.accounts:
                raise ValueError(f"restore: system account {account} missing")
            self._entry(account, CASH)
        self.obligations = {(ob.account, ob.year): ob for ob in snap.obligations}
        self.compliance = {(c.account, c.year): c for c in snap.compliance}
        self.cycle_value, self.cycle_qty = snap.cycle
        self._sold = {a: Net() for a, s in self.accounts.items() if s.holder_type == HolderType.COMPLIANCE}
        for account, net in snap.sold:
            self._sold[account] = Net(net)
        # The snapshot keeps no applied ids and no trade watermark (the store has the
        # postings): the trades after it start a new watermark.
        self.trade_mark = 0
        self._last_trade = None
        self.issued, self.surrendered, self.retired, self.expired = {}, {}, {}, {}
        self.deposited = self.withdrawn = 0
        for counter, asset, amount in snap.totals:
            if counter == "deposited":
                self.deposited = amount
            elif counter == "withdrawn":
                self.withdrawn = amount
            else:
                getattr(self, counter)[asset] = amount
        fees = self.fees
        self._fee_entries = (
            self.entries[fees.exchange_account, CASH],
            self.entries[fees.reserve_account, CASH],
            self.entries[fees.registry_account, CASH],
        )
        self._check()

    def full_state(self) -> list[Any]:
        """A canonical, encodable picture of everything the ledger owns (for hashes)."""
        return msgspec.to_builtins(self.snapshot())  # type: ignore[no-any-return]

    def supply(self) -> dict[str, int]:
        """What the sum of balances of each asset must be, from the counters."""
        out: dict[str, int] = {CASH: self.deposited - self.withdrawn}
        for asset in set(self.issued) | set(self.surrendered) | set(self.retired) | set(self.expired):
            out[asset] = (self.issued.get(asset, 0) - self.surrendered.get(asset, 0) - self.retired.get(asset, 0)
                          - self.expired.get(asset, 0))
        return out

    def _check(self) -> None:
        """Assert every invariant (O(entries + accounts + obligations))."""
        totals: dict[str, int] = {}
        for (account, asset), e in self.entries.items():
            assert account in self.accounts, (account, asset)
            assert _entry_ok(e, asset == CASH), (account, asset, e)
            assert asset == CASH or e.unwithdrawable == 0, (account, asset, e)
            assert self._by_account[account][asset] is e, (account, asset)
            totals[asset] = totals.get(asset, 0) + e.balance
        assert sum(len(by_asset) for by_asset in self._by_account.values()) == len(self.entries)
        for account, by_asset in self._by_account.items():
            live = self.accounts[account].status == ACTIVE
            assert (self._live.get(account) is by_asset) == live, account
        assert all(account in self._by_account for account in self._live)
        supply = self.supply()
        for asset in set(totals) | set(supply):
            assert totals.get(asset, 0) == supply.get(asset, 0), (asset, totals.get(asset, 0), supply.get(asset, 0))
        for (account, year), ob in self.obligations.items():
            assert ob.account == account and ob.year == year
            assert 0 <= ob.ccer <= ob.surrendered <= ob.required, ob
            assert ob.ccer <= ob.required * CCER_SHARE_PERCENT // 100, ob
            assert self.accounts[account].holder_type == HolderType.COMPLIANCE, ob
        for (account, year), c in self.compliance.items():
            assert c.account == account and c.year == year, c
            assert self.accounts[account].holder_type == HolderType.COMPLIANCE, c
            assert min(c.pre_allocated, c.owed, c.deducted, c.shortfall, c.penalty, c.expired) >= 0, c
            assert c.pre_allocated + c.trued_up >= 0, c
        for account in self.fees.system_accounts():
            assert self.accounts[account].status == ACTIVE, account
        assert self.day >= 1
        last = self._last_trade
        assert self.trade_mark >= 0 and (last is None or last.trade_id == self.trade_mark), (last, self.trade_mark)


def allowance(year: int) -> str:
    """The allowance symbol of a vintage year (2024 -> CEA24)."""
    return f"CEA{year % 100:02d}"


def _entry_ok(e: Entry, cash: bool) -> bool:
    balance, held, unsellable, unwithdrawable = e.values()
    if balance < 0 or held < 0 or unsellable < 0 or unwithdrawable < 0 or balance > BALANCE_MAX:
        return False
    if cash:
        return unsellable == 0 and held <= balance and unwithdrawable <= balance
    return held + unsellable <= balance and unwithdrawable == 0


def _trade_number(posting: AnyPosting) -> int:
    """The trade id of a trade posting; 0 when a plain posting's reference is not a number."""
    if type(posting) is TradePosting:
        return posting.trade_id
    try:
        return int(posting.ref)
    except ValueError:
        return 0


def legs_by_asset(legs: Iterable[Leg]) -> dict[str, int]:
    """The sum of the balance deltas of each asset."""
    out: dict[str, int] = {}
    for _, asset, delta, _ in legs:
        out[asset] = out.get(asset, 0) + delta
    return out

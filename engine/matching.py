"""The exchange core: applies sequenced commands to books, holds and day statistics.

Contract:
- ``Engine.apply(cmd)`` takes commands stamped by the sequencer, in sequence order with
  no gaps and non-decreasing timestamps (a violation is a programmer error: assertion).
- Every effect is reported as an event appended to ``Engine.out``; the caller drains it.
- A rejected command emits one ``Rejected`` event and changes no state.
- The engine is deterministic: no wall clock, no randomness, no I/O. The same commands
  give the same events and the same ``state_hash()``.

Matching is price-time priority; a fill trades at the resting order's price. Holds are
taken from the ledger before an order may rest or trade (when the instrument has holds).
Position limits (``Instrument.position_max``) and member suspensions are checked
before the holds; the open buy quantity the limits need is kept only for the
instruments that have one.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Final, cast

import msgspec
from msgspec.structs import astuple

from engine.book import Book, HalfBook, Level, Order
from engine.instrument import ALWAYS_OPEN, NS_PER_DAY, NS_PER_MINUTE, Instrument, Schedule
from engine.ledger import CASH, HoldLedger
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    AuctionAnnounce,
    AuctionAnnounced,
    AuctionBid,
    AuctionBidAmend,
    AuctionBidWithdraw,
    AuctionFill,
    AuctionResult,
    BidPlaced,
    BlockAccept,
    BlockEnd,
    BlockOffer,
    BlockOffered,
    BlockTraded,
    BlockWithdraw,
    BlockWithdrawn,
    Cancel,
    Cancelled,
    CancelReason,
    Command,
    DayClosed,
    Decremented,
    EndOfDay,
    Event,
    Expired,
    Halt,
    HitOrder,
    MassCancel,
    MemberStatus,
    NewOrder,
    Note,
    Noted,
    OrdType,
    Phase,
    Pricing,
    Reason,
    ReinstateMember,
    Rejected,
    Resume,
    Side,
    StatusChanged,
    Stp,
    SuspendMember,
    Tick,
    TimeInForce,
    Trade,
)
from engine.structs import AuctionRecord as AuctionRecord
from engine.structs import BidRecord as BidRecord
from engine.structs import EngineSnapshot as EngineSnapshot
from engine.structs import MarketSnapshot as MarketSnapshot
from engine.structs import OfferRecord as OfferRecord

# Final: mypyc then keeps these in C statics, not in the module's dict.
BUY: Final = int(Side.BUY)
SELL: Final = int(Side.SELL)
LIMIT: Final = int(OrdType.LIMIT)
MARKET: Final = int(OrdType.MARKET)
DAY: Final = int(TimeInForce.DAY)
IOC: Final = int(TimeInForce.IOC)
FOK: Final = int(TimeInForce.FOK)
CONTINUOUS: Final = int(Phase.CONTINUOUS)
CANCEL_RESTING: Final = int(Stp.CANCEL_RESTING)
CANCEL_INCOMING: Final = int(Stp.CANCEL_INCOMING)
CANCEL_BOTH: Final = int(Stp.CANCEL_BOTH)
DECREMENT: Final = int(Stp.DECREMENT)
USER: Final = int(CancelReason.USER)
IOC_REST: Final = int(CancelReason.IOC_REST)
SUSPENDED: Final = int(CancelReason.SUSPENDED)
HIT_LEVELS: Final = 5  # a hit-this-order target must be among the best five levels
AUTHORITY: Final = "AUTHORITY"  # the issuing authority's registry account: sells in auctions of any size
# Aliases of the interpreted modules' names that the hot paths use: compiled by mypyc,
# Final names are C statics, where an imported name is a lookup in the module's dict
# at every use.
_astuple: Final = astuple
_Accepted: Final = Accepted
_Trade: Final = Trade
_Cancelled: Final = Cancelled
_Decremented: Final = Decremented
_NewOrder: Final = NewOrder
_Cancel: Final = Cancel
SELF_TRADE: Final = int(CancelReason.SELF_TRADE)
# Engine._new_order unpacks astuple(cmd) in this order.
NEW_ORDER_FIELDS: Final = ("member", "coid", "instrument", "side", "qty", "price", "ord_type", "tif", "stp", "seq", "ts")
assert NewOrder.__struct_fields__ == NEW_ORDER_FIELDS, NewOrder.__struct_fields__
# Engine._cancel unpacks astuple(cmd) in this order.
CANCEL_FIELDS: Final = ("member", "order_id", "actor", "text", "seq", "ts")
assert Cancel.__struct_fields__ == CANCEL_FIELDS, Cancel.__struct_fields__


class Offer:
    """An open block agreement offer (``BlockOffer``): what is left of it and its hold.
    Acyclic, like ``Order``."""

    __slots__ = ("offer_id", "member", "coid", "instrument", "side", "qty", "price", "counterparty", "partial", "hold",
                 "ts")

    def __init__(self, offer_id: int, member: str, coid: str, instrument: str, side: int, qty: int, price: int,
                 counterparty: str, partial: bool, hold: int, ts: int) -> None:
        self.offer_id = offer_id
        self.member = member
        self.coid = coid
        self.instrument = instrument
        self.side = side
        self.qty = qty
        self.price = price
        self.counterparty = counterparty
        self.partial = partial
        self.hold = hold
        self.ts = ts

    def record(self) -> OfferRecord:
        return OfferRecord(self.offer_id, self.member, self.coid, self.instrument, self.side, self.qty, self.price,
                           self.counterparty, self.partial, self.hold, self.ts)


class Bid:
    """A sealed bid in an auction. Acyclic."""

    __slots__ = ("bid_id", "member", "coid", "qty", "price", "hold", "ts")

    def __init__(self, bid_id: int, member: str, coid: str, qty: int, price: int, hold: int, ts: int) -> None:
        self.bid_id = bid_id
        self.member = member
        self.coid = coid
        self.qty = qty
        self.price = price
        self.hold = hold
        self.ts = ts

    def record(self) -> BidRecord:
        return BidRecord(self.bid_id, self.member, self.coid, self.qty, self.price, self.hold, self.ts)


class Auction:
    """An announced one-way auction and its bids (bid id -> bid)."""

    __slots__ = ("auction_id", "seller", "instrument", "qty", "floor", "ceiling", "start_ts", "end_ts", "pricing",
                 "bid_min", "bid_max", "cancel_if_short", "hold", "bids")

    def __init__(self, r: AuctionRecord) -> None:
        self.auction_id = r.auction_id
        self.seller = r.seller
        self.instrument = r.instrument
        self.qty = r.qty
        self.floor = r.floor
        self.ceiling = r.ceiling
        self.start_ts = r.start_ts
        self.end_ts = r.end_ts
        self.pricing = r.pricing
        self.bid_min = r.bid_min
        self.bid_max = r.bid_max
        self.cancel_if_short = r.cancel_if_short
        self.hold = r.hold
        self.bids: dict[int, Bid] = {b.bid_id: Bid(b.bid_id, b.member, b.coid, b.qty, b.price, b.hold, b.ts)
                                     for b in r.bids}

    def record(self) -> AuctionRecord:
        return AuctionRecord(self.auction_id, self.seller, self.instrument, self.qty, self.floor, self.ceiling,
                             self.start_ts, self.end_ts, self.pricing, self.bid_min, self.bid_max, self.cancel_if_short,
                             self.hold, [self.bids[i].record() for i in sorted(self.bids)])


class Market:
    """One instrument's rules, book, phase and day statistics."""

    __slots__ = (
        "rules", "symbol", "holds", "book", "sides", "low", "high", "ref_price", "phase", "halted",
        "tick", "lot", "qty_min", "qty_max", "position_max", "open_buys",
        "open_price", "high_price", "low_price", "last_price", "volume", "value", "trades",
        "block_volume", "block_value", "block_trades",
    )

    def __init__(self, rules: Instrument) -> None:
        rules.check()
        self.rules = rules
        self.symbol = rules.symbol
        # Copied out of the rules: read for every order.
        self.tick, self.lot, self.qty_min, self.qty_max = rules.tick, rules.lot, rules.qty_min, rules.qty_max
        self.holds = rules.holds
        self.position_max = rules.position_max
        # Open (resting) buy quantity per member, kept only when position_max is set:
        # without a limit the hot paths pay one test of position_max and nothing more.
        self.open_buys: dict[str, int] = {}
        self.ref_price = rules.ref_price
        self.phase = int(Phase.CLOSED)
        self.halted = False
        self._start_day(rules.ref_price)

    def new_day(self, ref_price: int) -> None:
        """Start a day on a new reference price; the book must be empty."""
        assert not (self.book.bids.keys or self.book.asks.keys or self.open_buys)
        self._start_day(ref_price)

    def _start_day(self, ref_price: int) -> None:
        self.ref_price = ref_price
        self.low, self.high = self.rules.band(ref_price)
        self.book: Book = Book(self.low, self.high)
        self.sides = self.book.sides
        self.open_price = self.high_price = self.low_price = self.last_price = 0
        self.volume = self.value = self.trades = 0
        # Block agreement trades, counted apart: they move none of the figures above.
        self.block_volume = self.block_value = self.block_trades = 0

    def record(self, price: int, qty: int, trades: int) -> None:
        """Add the fills at one price (one or more trades) to the day's statistics."""
        if not self.open_price:
            self.open_price = price
        self.last_price = price
        if price > self.high_price:
            self.high_price = price
        if price < self.low_price or not self.low_price:
            self.low_price = price
        self.volume += qty
        self.value += price * qty
        self.trades += trades

    def close_price(self) -> int:
        """Volume-weighted average of the day's trades, to the nearest tick (half up);
        the reference price when nothing traded."""
        if not self.volume:
            return self.ref_price
        tick = self.rules.tick
        units = (2 * self.value + self.volume * tick) // (2 * self.volume * tick)
        return units * tick

    def stats(self) -> dict[str, int]:
        return {
            "open": self.open_price, "high": self.high_price, "low": self.low_price,
            "last": self.last_price, "volume": self.volume, "value": self.value,
            "trades": self.trades, "ref_price": self.ref_price,
            "band_low": self.low, "band_high": self.high, "phase": self.phase,
            "block_volume": self.block_volume, "block_value": self.block_value, "block_trades": self.block_trades,
        }


class Engine:
    """The single writer of books and holds. See the module docstring for the contract."""

    # What snapshot() returns, for readers of snapshot files (compiled methods carry no
    # annotations to read it from).
    SNAPSHOT_TYPE: ClassVar[type] = EngineSnapshot

    def __init__(
        self,
        instruments: Iterable[Instrument],
        ledger: HoldLedger | None = None,
        *,
        schedule: Schedule = ALWAYS_OPEN,
        stp_default: int = CANCEL_RESTING,
        member_stp: dict[str, int] | None = None,
        acks: bool = True,
        self_trade_prevention: bool = True,
    ) -> None:
        self.markets: dict[str, Market] = {}
        for rules in instruments:
            if rules.symbol in self.markets:
                raise ValueError(f"instrument {rules.symbol} configured twice")
            market = Market(rules)
            if market.holds and ledger is None:
                raise ValueError(f"instrument {rules.symbol} has holds but the engine has no ledger")
            if market.position_max and ledger is None:
                raise ValueError(f"instrument {rules.symbol} has a position limit but the engine has no ledger")
            self.markets[rules.symbol] = market
        modes = (CANCEL_RESTING, CANCEL_INCOMING, CANCEL_BOTH, DECREMENT)
        if stp_default not in modes:
            raise ValueError(f"stp_default must be a self-trade prevention mode (1-4), got {stp_default}")
        for member, mode in (member_stp or {}).items():
            if mode not in modes:
                raise ValueError(f"member {member}: self-trade prevention mode must be 1-4, got {mode}")
        schedule.check()
        if ledger is not None and not isinstance(ledger, HoldLedger):
            raise TypeError(f"the engine's ledger derives from engine.ledger.HoldLedger, got {type(ledger).__name__}")
        self.ledger = ledger
        self.schedule = schedule
        self.stp_default = stp_default
        self.member_stp = dict(member_stp or {})
        # acks=False leaves out the plain acknowledgements (Accepted, and Cancelled for a
        # member's own cancel), for pure-matching replays and benchmarks that need only
        # trades and state changes. The gateway always runs with acks.
        self.acks = acks
        # self_trade_prevention=False lets a member's orders trade with each other: only
        # for replays and benchmarks of foreign flow (where one firm's orders do meet),
        # never for the carbon market, where wash trades are banned. Not in snapshots:
        # it is how the engine is built, like acks.
        self.stp_on = self_trade_prevention
        # Drained by the caller with out.clear(), never replaced. Appended to as
        # ``self.out.append``: compiled, a list's append is one C call, where a bound
        # method kept aside is a generic call.
        self.out: list[Event] = []
        self.orders: dict[int, Order] = {}
        # Client order ids used today, per member: a set of strings per member is
        # cheaper than one set of (member, coid) tuples (no tuple per order).
        self.coids: dict[str, set[str]] = {}
        # Members whose trading the operator suspended (SuspendMember): until reinstated
        # their new orders, hit orders and amends are rejected. Not day-bound.
        self.suspended: set[str] = set()
        # Staff accounts (the registry's holder type STAFF, kept by settlement.Exchange
        # from its ledger): staff of the regulator, the registry, the exchange and
        # verifiers may hold allowances but never trade.
        self.staff: set[str] = set()
        self.last_seq = 0
        self.last_ts = 0
        # The ids the next accepted order and the next trade get. Machine integers:
        # compiled, next() of an itertools.count was a lookup of the builtin and a
        # generic call (about 500 instructions an order, callgrind).
        self.next_order_id = 1
        self.next_trade_id = 1
        self.offers: dict[int, Offer] = {}  # open block agreement offers
        self.next_offer_id = 1
        self.auctions: dict[int, Auction] = {}  # announced one-way auctions, until they clear
        self.next_auction_id = 1
        self.next_bid_id = 1
        self.day = 1
        self._next_change = -1  # ts of the next schedule change; -1: not computed yet
        self._expire_at = 1 << 62  # ts of the current day's close
        # New orders and cancels are dispatched in apply_batch itself.
        self._handlers: dict[type, Callable[[Any], None]] = {
            Amend: self._amend,
            MassCancel: self._mass_cancel,
            HitOrder: self._hit_order,
            Halt: self._halt,
            Resume: self._resume,
            Tick: self._tick,
            EndOfDay: self._end_of_day,
            SuspendMember: self._suspend,
            ReinstateMember: self._reinstate,
            Note: self._note,
            BlockOffer: self._block_offer,
            BlockAccept: self._block_accept,
            BlockWithdraw: self._block_withdraw,
            AuctionAnnounce: self._auction_announce,
            AuctionBid: self._auction_bid,
            AuctionBidAmend: self._auction_bid_amend,
            AuctionBidWithdraw: self._auction_bid_withdraw,
        }

    def _take_order_id(self) -> int:
        n = self.next_order_id
        self.next_order_id = n + 1
        return n

    def _take_trade_id(self) -> int:
        n = self.next_trade_id
        self.next_trade_id = n + 1
        return n

    # --- entry points -----------------------------------------------------------------

    def apply(self, cmd: Command) -> None:
        self._apply(cmd)

    def apply_batch(self, cmds: Sequence[Command]) -> None:
        """Apply stamped commands in order. Each must carry the next sequence number and
        a timestamp no earlier than the one before (a violation is a programmer error)."""
        apply = self._apply  # compiled: a native call per command
        for cmd in cmds:
            apply(cmd)

    def process(self, cmd: Command) -> list[Event]:
        """Apply one stamped command and take its events: the cheap path for a caller
        with one order in hand (an adapter, a replay, a test). Returns what the outbox
        held, the command's events last; the outbox is left empty."""
        self._apply(cmd)
        return self._take_events()

    def new_order(self, member: Any, coid: Any, instrument: Any, side: Any, qty: Any, price: Any = 0,
                  ord_type: Any = LIMIT, tif: Any = DAY, stp: Any = 0, seq: Any = 0, ts: Any = 0) -> list[Event]:
        """``process(NewOrder(member, coid, instrument, side, qty, price, ord_type, tif,
        stp, seq, ts))`` without the command object: NewOrder's fields in its order, the
        same checks, state and events. For a caller with one order's fields in hand (an
        adapter, a replay of foreign flow), which would otherwise build a Struct only for
        the engine to read it back; the command is built only where a rejection needs it.
        (Positional: compiled, keyword arguments cost a parse per call.) Nothing is
        journaled here: a caller that must replay keeps its own record, as the gateway
        keeps the commands."""
        self._sequence(seq, ts)
        self._new_order(None, (member, coid, instrument, side, qty, price, ord_type, tif, stp, seq, ts))
        return self._take_events()

    def cancel(self, member: Any, order_id: Any, seq: Any = 0, ts: Any = 0) -> list[Event]:
        """``process(Cancel(member, order_id, seq=seq, ts=ts))`` without the command
        object (see ``new_order``)."""
        self._sequence(seq, ts)
        self._cancel(None, (member, order_id, "", "", seq, ts))
        return self._take_events()

    def _take_events(self) -> list[Event]:
        """What the outbox holds, handed over; the outbox (never replaced) left empty."""
        out = self.out
        events = out.copy()
        out.clear()
        return events

    def _apply(self, cmd: Command) -> None:
        """One command: the sequence and clock checks, then its handler."""
        fields: tuple[Any, ...]
        kind = type(cmd)
        # New orders and cancels (most of the flow) are read with one astuple call, seq
        # and ts its last two fields (NEW_ORDER_FIELDS, CANCEL_FIELDS), and handed over
        # read: compiled, each attribute read of a Struct is a generic getattr, and a
        # direct call is a native call (the handler table's bound methods are not).
        if kind is _NewOrder or kind is _Cancel:
            fields = _astuple(cmd)
            self._sequence(fields[-2], fields[-1])
            if kind is _NewOrder:
                self._new_order(cast(NewOrder, cmd), fields)
            else:
                self._cancel(cast(Cancel, cmd), fields)
            return
        self._sequence(cmd.seq, cmd.ts)  # type: ignore[attr-defined]
        self._handlers[kind](cmd)

    def _sequence(self, cmd_seq: int, ts: int) -> None:
        """A command's sequence number and time: the next number, time not going back
        (a violation is a programmer error: nothing changes); the clock's changes due."""
        seq = self.last_seq + 1
        if cmd_seq != seq or ts < self.last_ts:
            raise AssertionError(
                f"commands out of order (a sequence gap or time going back): got seq {cmd_seq} ts {ts} "
                f"after seq {seq - 1} ts {self.last_ts}"
            )
        self.last_seq, self.last_ts = seq, ts
        if ts >= self._next_change:
            self._advance_clock(seq, ts)

    # --- orders ------------------------------------------------------------------------

    def _reject(self, cmd: Any, reason: Reason, text: str, coid: str = "", order_id: int = 0) -> None:
        self.out.append(
            Rejected(cmd.seq, cmd.ts, getattr(cmd, "member", ""), coid, order_id, int(reason), text)
        )

    def _check_order(self, cmd: NewOrder | HitOrder, market: Market | None, side: int, qty: int) -> bool:
        """Checks shared by new and hit orders; rejects and returns False on the first
        that fails."""
        coid = cmd.coid
        if self._barred(cmd, cmd.member, coid):
            return False
        if market is None:
            self._reject(cmd, Reason.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.instrument!r}", coid)
            return False
        if market.phase != CONTINUOUS:
            if market.halted:
                self._reject(cmd, Reason.INSTRUMENT_HALTED, f"{market.symbol} is halted", coid)
            else:
                self._reject(cmd, Reason.MARKET_CLOSED, f"{market.symbol} is not in continuous trading", coid)
            return False
        if side != BUY and side != SELL:
            self._reject(cmd, Reason.INVALID_FIELD, f"side must be 1 (buy) or 2 (sell), got {side}", coid)
            return False
        if qty < market.qty_min or qty > market.qty_max:
            self._reject(
                cmd, Reason.QTY_OUT_OF_RANGE, f"quantity {qty} outside [{market.qty_min}, {market.qty_max}]", coid
            )
            return False
        if qty % market.lot:
            self._reject(cmd, Reason.OFF_LOT, f"quantity {qty} is not a multiple of the lot {market.lot}", coid)
            return False
        if coid in self.coids.get(cmd.member, ()):
            self._reject(cmd, Reason.DUPLICATE_CLIENT_ORDER_ID, f"client order id {coid!r} already used today", coid)
            return False
        return True

    def _hold_new(self, cmd: NewOrder | HitOrder | BlockOffer | BlockAccept | None, member: str, market: Market,
                  side: int, price: int, qty: int, fields: tuple[Any, ...] = ()) -> int:
        """Hold what a new order of ``member`` needs; returns the cash held (buys), 0
        (sells), or -1 after rejecting. (``member`` is passed, not read from ``cmd``:
        compiled, a Struct's attribute read is a generic getattr; a new order given by
        its ``fields`` alone has ``cmd`` None.)"""
        ledger = self.ledger
        assert ledger is not None
        if side == BUY:
            need = ledger.cash_required(price * qty)
            if ledger.hold(member, CASH, need):
                return need
            if cmd is None:
                cmd = _NewOrder(*fields)
            self._reject(cmd, Reason.INSUFFICIENT_FUNDS, f"available cash does not cover {need} fen", cmd.coid)
            return -1
        if ledger.hold(member, market.symbol, qty):
            return 0
        if cmd is None:
            cmd = _NewOrder(*fields)
        self._reject(
            cmd, Reason.INSUFFICIENT_HOLDINGS, f"available {market.symbol} does not cover {qty} t", cmd.coid
        )
        return -1

    def _position_ok(
        self, cmd: NewOrder | HitOrder | Amend | BlockOffer | BlockAccept | None, member: str, market: Market,
        more: int, coid: str, order_id: int, fields: tuple[Any, ...] = (),
    ) -> bool:
        """Whether ``more`` tonnes to buy keep the member within the instrument's position
        limit (its holding, from the ledger, plus its open buy quantity plus ``more``);
        rejects and returns False when they do not (a new order given by its ``fields``
        alone, ``cmd`` None, is built for the rejection)."""
        ledger = self.ledger
        assert ledger is not None and market.position_max > 0
        holding = ledger.holding(member, market.symbol)
        open_buys = market.open_buys.get(member, 0)
        total = holding + open_buys + more
        if total <= market.position_max:
            return True
        if cmd is None:
            cmd = _NewOrder(*fields)
        self._reject(
            cmd, Reason.POSITION_LIMIT,
            f"position limit {market.position_max} t in {market.symbol}: holding {holding} t + open buys "
            f"{open_buys} t + {more} t = {total} t",
            coid, order_id,
        )
        return False

    def _open_buy(self, market: Market, member: str, delta: int) -> None:
        """Change the member's open (resting) buy quantity in a market with a position
        limit by ``delta``."""
        open_buys = market.open_buys
        left = open_buys.get(member, 0) + delta
        assert left >= 0, (market.symbol, member, delta)
        if left:
            open_buys[member] = left
        else:
            del open_buys[member]

    def _validate_new(self, cmd: NewOrder, market: Market | None) -> int:
        """The thorough checks of a new order, in the order their reasons are reported.
        Returns the price the order may trade to (the band limit for a market order),
        or -1 after rejecting."""
        side, qty, price, tif = cmd.side, cmd.qty, cmd.price, cmd.tif
        if not self._check_order(cmd, market, side, qty):
            return -1
        assert market is not None
        if not 0 <= cmd.stp <= DECREMENT:
            self._reject(cmd, Reason.INVALID_FIELD, f"stp must be 0-4, got {cmd.stp}", cmd.coid)
            return -1
        if not DAY <= tif <= FOK:
            self._reject(cmd, Reason.INVALID_FIELD, f"tif must be 1 (DAY), 2 (IOC) or 3 (FOK), got {tif}", cmd.coid)
            return -1
        if cmd.ord_type == MARKET:
            return market.high if side == BUY else market.low
        if cmd.ord_type != LIMIT:
            self._reject(cmd, Reason.INVALID_FIELD, f"ord_type must be 1 (limit) or 2 (market), got {cmd.ord_type}", cmd.coid)
            return -1
        if price % market.tick:
            self._reject(cmd, Reason.OFF_TICK, f"price {price} is not a multiple of the tick {market.tick}", cmd.coid)
            return -1
        if price < market.low or price > market.high:
            self._reject(
                cmd, Reason.PRICE_OUTSIDE_BAND, f"price {price} outside the band [{market.low}, {market.high}]", cmd.coid
            )
            return -1
        return price

    def _new_order(self, cmd: NewOrder | None, fields: tuple[Any, ...]) -> None:
        # The hot path of the engine. One guard passes the common valid limit order
        # without a call; anything else (market orders, every reject) takes the
        # thorough path in _validate_new, which alone decides the reason.
        # ``fields`` is astuple(cmd), read by _apply with one C call (in NewOrder's
        # field order): compiled by mypyc, each attribute read of a Struct is a generic
        # getattr. ``cmd`` is None when the caller had only the fields (new_order): it is
        # built where a rejection needs it.
        member: str
        coid: str
        instrument: str
        side: int
        qty: int
        price: int
        ord_type: int
        tif: int
        stp: int
        seq: Any  # passed on into events only: kept boxed (see _match)
        ts: Any
        # The numbers are read twice: as the objects they are, for the Accepted event
        # (boxing a machine integer again allocates), and as machine integers.
        side_o: Any
        qty_o: Any
        price_o: Any
        ord_type_o: Any
        tif_o: Any
        member, coid, instrument, side_o, qty_o, price_o, ord_type_o, tif_o, stp, seq, ts = fields
        side, qty, price, ord_type, tif = side_o, qty_o, price_o, ord_type_o, tif_o
        market = self.markets.get(instrument)
        used = self.coids.get(member)
        if used is None:
            used = self.coids[member] = set()
        if (
            market is None
            or market.phase != CONTINUOUS
            # Range checks, not a set lookup of (side, tif, ord_type, stp): compiled by
            # mypyc they are a few machine compares, where the lookup builds and hashes a tuple.
            or (side != BUY and side != SELL)
            or not DAY <= tif <= FOK
            or ord_type != LIMIT
            or not 0 <= stp <= DECREMENT
            or not market.low <= price <= market.high
            or not market.qty_min <= qty <= market.qty_max
            or qty % market.lot
            or price % market.tick
            or coid in used
            or (self.suspended and member in self.suspended)
            or (self.staff and member in self.staff)
        ):
            if cmd is None:
                cmd = _NewOrder(*fields)
            price = self._validate_new(cmd, market)
            if price < 0:
                return
            price_o = price  # a market order's: the band's limit
            assert market is not None
        if market.position_max and side == BUY and not self._position_ok(cmd, member, market, qty, coid, 0, fields):
            return
        hold = 0
        if market.holds:
            hold = self._hold_new(cmd, member, market, side, price, qty, fields)
            if hold < 0:
                return
        # Accepted: from here on the command changes state.
        # Boxed once (Any): it goes into the event and the order index as is, where an
        # int would be boxed again for each.
        order_id: Any = self._take_order_id()
        used.add(coid)
        order = Order(order_id, member, coid, market.symbol, side, price, qty, 0, tif,
                      stp or (self.member_stp.get(member, self.stp_default) if self.member_stp else self.stp_default),
                      hold, ts)
        if self.acks:
            self.out.append(_Accepted(seq, ts, member, coid, order_id, market.symbol, side_o, price_o, qty_o, ord_type_o,
                                      tif_o))
        if tif != DAY or ord_type != LIMIT:
            # IOC, FOK and market orders: trade what they can now, cancel the rest.
            if tif != FOK or self._fok_fillable(market, order):
                self._match(market, order, seq, ts)
            if order.qty:
                self._drop_incoming(market, order, IOC_REST, seq, ts)
            return
        opp = market.sides[3 - side]
        if opp.best <= opp.key(price):
            self._match(market, order, seq, ts)
            if not order.qty:
                return
        # Rest the order: HalfBook.add inlined, it runs for most commands.
        half = market.sides[side]
        k = half.key(price)
        level = half.level_for(k)
        if not level.qty:
            half.keys.add(k)
            if k < half.best:
                half.best = k
        level.queue.append(order)
        level.qty += order.qty
        self.orders[order_id] = order
        if market.position_max and side == BUY:
            self._open_buy(market, member, order.qty)

    def _fok_fillable(self, market: Market, order: Order) -> bool:
        """Whether the whole order would fill now. Own orders do not count; under
        cancel-incoming, cancel-both or decrement they stop the count, as they stop
        the match."""
        opp = market.sides[3 - order.side]
        limit = opp.key(order.price)
        need, member = order.qty, order.member
        stops = order.stp != CANCEL_RESTING
        if not self.stp_on:
            member = ""  # no order is the incoming order's own
        keys, size = opp.keys, opp.size
        key = opp.best
        while key <= limit and key < size:
            level = opp.level(key)
            assert level is not None
            for o in level.queue:
                if o.qty:
                    if o.member == member:
                        if stops:
                            return False
                        continue
                    need -= o.qty
                    if need <= 0:
                        return True
            key = keys.next(key + 1)
        return False

    def _match(self, market: Market, order: Order, seq: Any, ts: Any) -> None:
        """Trade the incoming order against the opposite side while it crosses."""
        opp = market.sides[3 - order.side]
        limit = opp.key(order.price)
        if opp.best > limit:
            return
        # The hottest loop of the engine. Attributes are bound to locals, and the
        # price, the statistics and the level's total are kept per level, not per fill.
        out = self.out
        member, side = order.member, order.side
        taker_id: Any = order.order_id  # boxed once here, not once per fill
        holds = market.holds
        ledger = self.ledger
        symbol = market.symbol
        qty = order.qty
        orders = self.orders
        limited = side == SELL and market.position_max != 0  # the makers are buys under a position limit
        stp_on = self.stp_on
        while qty and opp.best <= limit:
            key = opp.best
            level = opp.level(key)
            assert level is not None
            price = opp.price(key)
            price_o: Any = price  # boxed once a level, for its trades' events
            lqty = level.qty
            filled = fills = 0  # at this level
            while qty and lqty:
                maker = level.queue[0]
                mqty = maker.qty
                if not mqty:
                    level.queue.popleft()
                    level.dead -= 1
                    continue
                if maker.member == member and stp_on:
                    level.qty = lqty
                    qty = self._self_trade(market, opp, level, key, order, maker, qty, seq, ts)
                    lqty = level.qty
                    if qty < 0:  # the incoming order is gone
                        qty = 0
                        break
                    continue
                maker_id: Any = maker.order_id  # boxed once, for the index and the event
                if qty < mqty:
                    fill = qty
                    maker.qty = mqty = mqty - qty
                    qty = 0
                else:
                    fill = mqty
                    qty -= mqty
                    mqty = maker.qty = 0
                    level.queue.popleft()
                    del orders[maker_id]
                maker.filled += fill
                if limited:
                    self._open_buy(market, maker.member, -fill)
                lqty -= fill
                filled += fill
                fills += 1
                trade_id = self._take_trade_id()
                trade = _Trade(seq, ts, trade_id, symbol, price_o, fill, side, maker_id, maker.member, taker_id, member)
                out.append(trade)
                if holds:
                    assert ledger is not None
                    if side == BUY:
                        new = ledger.cash_required(order.price * qty) if qty else 0
                        freed = order.hold - new
                        order.hold = new
                    else:
                        new = ledger.cash_required(price * mqty) if mqty else 0
                        freed = maker.hold - new
                        maker.hold = new
                    ledger.settle(trade, freed)
            if fills:
                market.record(price, filled, fills)
            if lqty:
                level.qty = lqty
                if 2 * level.dead > len(level.queue) + 16:  # fills took live orders off the front
                    level.compact()
            else:
                opp.emptied(key)
        order.filled += order.qty - qty
        order.qty = qty

    def _self_trade(
        self, market: Market, opp: HalfBook, level: Level, key: int, order: Order, maker: Order,
        qty: int, seq: int, ts: int,
    ) -> int:
        """The incoming order (open quantity ``qty``) meets its own member's resting
        order at the front of a level. Returns the incoming open quantity left, or -1
        when the incoming order is gone."""
        mode = order.stp
        out = self.out
        order.filled += order.qty - qty  # bring the incoming order up to date
        order.qty = qty
        limited = maker.side == BUY and market.position_max != 0
        if mode == CANCEL_RESTING or mode == CANCEL_BOTH:
            level.queue.popleft()
            level.qty -= maker.qty
            if limited:
                self._open_buy(market, maker.member, -maker.qty)
            out.append(_Cancelled(seq, ts, maker.member, maker.order_id, market.symbol, maker.qty, SELF_TRADE, maker.side, maker.price))
            self._release_rest(market, maker)
            maker.qty = 0
            del self.orders[maker.order_id]
            if mode == CANCEL_RESTING:
                return qty
        if mode == CANCEL_INCOMING or mode == CANCEL_BOTH:
            self._drop_incoming(market, order, SELF_TRADE, seq, ts)
            return -1
        assert mode == DECREMENT
        cut = qty if qty < maker.qty else maker.qty
        level.qty -= cut
        if limited:
            self._open_buy(market, maker.member, -cut)
        self._reduce(market, maker, cut)
        out.append(_Decremented(seq, ts, maker.member, maker.order_id, market.symbol, cut, maker.qty))
        if not maker.qty:
            level.queue.popleft()
            del self.orders[maker.order_id]
        self._reduce(market, order, cut)
        out.append(_Decremented(seq, ts, order.member, order.order_id, market.symbol, cut, order.qty))
        return order.qty if order.qty else -1

    def _reduce(self, market: Market, order: Order, cut: int) -> None:
        """Take ``cut`` off the order's open quantity and release what it held for it."""
        left = order.qty - cut
        assert left >= 0
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            if order.side == BUY:
                new = ledger.cash_required(order.price * left) if left else 0
                ledger.release(order.member, CASH, order.hold - new)
                order.hold = new
            else:
                ledger.release(order.member, market.symbol, cut)
        order.qty = left

    def _release_rest(self, market: Market, order: Order) -> None:
        """Release everything the order holds for its open quantity ``order.qty``; the
        caller then sets that quantity to 0."""
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            if order.side == BUY:
                ledger.release(order.member, CASH, order.hold)
                order.hold = 0
            elif order.qty:
                ledger.release(order.member, market.symbol, order.qty)

    def _drop_incoming(self, market: Market, order: Order, reason: int, seq: int, ts: int) -> None:
        """Cancel the open rest of an order that is not (or no longer) in the book."""
        qty = order.qty
        self._release_rest(market, order)
        order.qty = 0
        self.out.append(_Cancelled(seq, ts, order.member, order.order_id, market.symbol, qty, reason, order.side, order.price))

    def _remove_resting(self, market: Market, order: Order) -> int:
        """Take a live order out of the book and release its hold; returns the open
        quantity it had."""
        qty = order.qty
        self._release_rest(market, order)
        if market.position_max and order.side == BUY:
            self._open_buy(market, order.member, -qty)
        half = market.sides[order.side]
        half.kill(order, half.key(order.price))
        del self.orders[order.order_id]
        return qty

    def _own_order(self, cmd: Cancel | Amend) -> Order | None:
        order = self.orders.get(cmd.order_id)
        if order is None:
            self._reject(cmd, Reason.UNKNOWN_ORDER, f"no open order {cmd.order_id}", order_id=cmd.order_id)
            return None
        if order.member != cmd.member:
            self._reject(cmd, Reason.NOT_YOUR_ORDER, f"order {cmd.order_id} is not yours", order_id=cmd.order_id)
            return None
        return order

    def _cancel(self, cmd: Cancel | None, fields: tuple[Any, ...]) -> None:
        member: str
        order_id: Any  # a key and an event's field only: kept as the object it is
        seq: Any  # passed on into the event only: kept boxed
        ts: Any
        # astuple(cmd), read by _apply (cmd None: given by its fields, see cancel);
        # actor and text are for the record only.
        member, order_id, _, _, seq, ts = fields
        order = self.orders.get(order_id)
        if order is None or order.member != member:
            self._own_order(cmd if cmd is not None else _Cancel(*fields))  # rejects with the specific reason
            return
        market = self.markets[order.instrument]
        qty = order.qty
        if market.holds:
            self._release_rest(market, order)
        if market.position_max and order.side == BUY:
            self._open_buy(market, member, -qty)
        # HalfBook.kill inlined for the common case (the level stays non-empty, no
        # compaction due): cancels are a third of the flow.
        half = market.sides[order.side]
        key = half.key(order.price)
        level = half.level(key)
        assert level is not None
        level.qty -= qty
        if level.qty and 2 * level.dead + 2 <= len(level.queue) + 16:
            order.qty = 0
            level.dead += 1
        else:
            level.qty += qty
            half.kill(order, key)
        del self.orders[order_id]
        if self.acks:
            self.out.append(_Cancelled(seq, ts, member, order_id, order.instrument, qty, USER, order.side, order.price))

    def _amend(self, cmd: Amend) -> None:
        if self._barred(cmd, cmd.member, "", cmd.order_id):
            return
        order = self._own_order(cmd)
        if order is None:
            return
        market = self.markets[order.instrument]
        rules = market.rules
        price, qty = cmd.price, cmd.qty
        oid = order.order_id
        if market.phase != CONTINUOUS:
            reason = Reason.INSTRUMENT_HALTED if market.halted else Reason.MARKET_CLOSED
            self._reject(cmd, reason, f"{market.symbol} is not in continuous trading", order_id=oid)
            return
        if qty < rules.qty_min or qty > rules.qty_max:
            self._reject(cmd, Reason.QTY_OUT_OF_RANGE, f"quantity {qty} outside [{rules.qty_min}, {rules.qty_max}]", order_id=oid)
            return
        if qty % rules.lot:
            self._reject(cmd, Reason.OFF_LOT, f"quantity {qty} is not a multiple of the lot {rules.lot}", order_id=oid)
            return
        if price % rules.tick:
            self._reject(cmd, Reason.OFF_TICK, f"price {price} is not a multiple of the tick {rules.tick}", order_id=oid)
            return
        if price < market.low or price > market.high:
            self._reject(cmd, Reason.PRICE_OUTSIDE_BAND, f"price {price} outside the band [{market.low}, {market.high}]", order_id=oid)
            return
        if price == order.price and qty == order.qty:
            self._reject(cmd, Reason.AMEND_NO_CHANGE, "amend changes neither price nor quantity", order_id=oid)
            return
        # A buy's increase counts against the position limit as a new order's quantity does.
        limited = order.side == BUY and market.position_max != 0
        if limited and qty > order.qty and not self._position_ok(cmd, order.member, market, qty - order.qty, "", oid):
            return
        # Adjust the hold first: an increase may be refused, which must change nothing.
        new_hold = 0
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            if order.side == BUY:
                new_hold = ledger.cash_required(price * qty)
                more = new_hold - order.hold
                if more > 0 and not ledger.hold(order.member, CASH, more):
                    self._reject(cmd, Reason.INSUFFICIENT_FUNDS, f"available cash does not cover {more} fen more", order_id=oid)
                    return
                if more < 0:
                    ledger.release(order.member, CASH, -more)
            else:
                more = qty - order.qty
                if more > 0 and not ledger.hold(order.member, market.symbol, more):
                    self._reject(cmd, Reason.INSUFFICIENT_HOLDINGS, f"available {market.symbol} does not cover {more} t more", order_id=oid)
                    return
                if more < 0:
                    ledger.release(order.member, market.symbol, -more)
        seq, ts = cmd.seq, cmd.ts
        half = market.sides[order.side]
        if price == order.price and qty < order.qty:
            level = half.level(half.key(price))
            assert level is not None
            level.qty -= order.qty - qty
            if limited:
                self._open_buy(market, order.member, qty - order.qty)
            order.qty = qty
            order.hold = new_hold
            self.out.append(Amended(seq, ts, order.member, oid, market.symbol, price, qty, True))
            return
        # Loses priority: out of the book (its hold already adjusted), then in again as
        # an incoming order that may trade.
        if limited:
            self._open_buy(market, order.member, -order.qty)
        half.kill(order, half.key(order.price))  # marks the old entry dead
        del self.orders[oid]
        moved = Order(oid, order.member, order.coid, order.instrument, order.side, price, qty,
                      order.filled, order.tif, order.stp, new_hold, ts)
        self.out.append(Amended(seq, ts, order.member, oid, market.symbol, price, qty, False))
        self._match(market, moved, seq, ts)
        if moved.qty:
            half.add(moved, half.key(price))
            self.orders[oid] = moved
            if limited:
                self._open_buy(market, moved.member, moved.qty)

    def _hit_order(self, cmd: HitOrder) -> None:
        market = self.markets.get(cmd.instrument)
        target = self.orders.get(cmd.target_order_id)
        side = 0 if target is None else 3 - target.side
        if not self._check_order(cmd, market, side if target is not None else BUY, cmd.qty):
            return
        assert market is not None
        if target is None or target.instrument != market.symbol:
            self._reject(cmd, Reason.UNKNOWN_ORDER, f"no open order {cmd.target_order_id} in {market.symbol}", cmd.coid)
            return
        if target.member == cmd.member:
            self._reject(cmd, Reason.TARGET_IS_OWN_ORDER, f"order {target.order_id} is your own", cmd.coid)
            return
        half = market.sides[target.side]
        key = half.key(target.price)
        if key > half.nth_key(HIT_LEVELS):
            self._reject(cmd, Reason.TARGET_NOT_IN_BEST_LEVELS, f"order {target.order_id} is not among the best {HIT_LEVELS} levels", cmd.coid)
            return
        price, qty = target.price, cmd.qty
        if side == BUY and market.position_max and not self._position_ok(cmd, cmd.member, market, qty, cmd.coid, 0):
            return
        hold = 0
        if market.holds:
            hold = self._hold_new(cmd, cmd.member, market, side, price, qty)
            if hold < 0:
                return
        member, seq, ts = cmd.member, cmd.seq, cmd.ts
        order_id = self._take_order_id()
        self.coids.setdefault(member, set()).add(cmd.coid)
        order = Order(order_id, member, cmd.coid, market.symbol, side, price, qty, 0, IOC, CANCEL_INCOMING, hold, ts)
        if self.acks:
            self.out.append(_Accepted(seq, ts, member, cmd.coid, order_id, market.symbol, side, price, qty, LIMIT, IOC))
        fill = qty if qty < target.qty else target.qty
        trade = Trade(seq, ts, self._take_trade_id(), market.symbol, price, fill, side, target.order_id, target.member, order_id, member)
        self.out.append(trade)
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            buyer = order if side == BUY else target
            left = buyer.qty - fill
            new = ledger.cash_required(buyer.price * left) if left else 0
            freed = buyer.hold - new
            buyer.hold = new
            ledger.settle(trade, freed)
        order.qty -= fill
        order.filled += fill
        target.filled += fill
        if target.side == BUY and market.position_max:
            self._open_buy(market, target.member, -fill)
        if fill == target.qty:
            half.kill(target, key)
            del self.orders[target.order_id]
        else:
            target.qty -= fill
            level = half.level(key)
            assert level is not None
            level.qty -= fill
        market.record(price, fill, 1)
        if order.qty:
            self._drop_incoming(market, order, IOC_REST, seq, ts)

    def _cancel_where(self, keep: Callable[[Order], bool], reason: int, seq: int, ts: int) -> None:
        """Cancel every live order for which keep(order) is False, in order id order."""
        out = self.out
        doomed = sorted((o for o in self.orders.values() if not keep(o)), key=lambda o: o.order_id)
        for order in doomed:
            market = self.markets[order.instrument]
            qty = self._remove_resting(market, order)
            out.append(_Cancelled(seq, ts, order.member, order.order_id, order.instrument, qty, reason, order.side, order.price))

    def _mass_cancel(self, cmd: MassCancel) -> None:
        if cmd.instrument and cmd.instrument not in self.markets:
            self._reject(cmd, Reason.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.instrument!r}")
            return
        if cmd.reason not in (CancelReason.MASS_CANCEL, CancelReason.DISCONNECT):
            self._reject(cmd, Reason.INVALID_FIELD, f"mass cancel reason must be 5 or 6, got {cmd.reason}")
            return
        member, instrument = cmd.member, cmd.instrument
        self._cancel_where(
            lambda o: bool((member and o.member != member) or (instrument and o.instrument != instrument)),
            cmd.reason, cmd.seq, cmd.ts,
        )

    # --- phases, halts, the day --------------------------------------------------------

    def _markets_named(self, cmd: Halt | Resume) -> list[Market] | None:
        if not cmd.instrument:
            return list(self.markets.values())
        market = self.markets.get(cmd.instrument)
        if market is None:
            self._reject(cmd, Reason.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.instrument!r}")
            return None
        return [market]

    def _set_phase(self, market: Market, open_: bool, seq: int, ts: int) -> None:
        phase = int(Phase.HALTED) if market.halted else (CONTINUOUS if open_ else int(Phase.CLOSED))
        if phase != market.phase:
            market.phase = phase
            self.out.append(StatusChanged(seq, ts, market.symbol, phase))

    def _halt(self, cmd: Halt) -> None:
        markets = self._markets_named(cmd)
        if markets is None:
            return
        if all(m.halted for m in markets):
            self._reject(cmd, Reason.ALREADY_HALTED, "already halted")
            return
        open_ = self.schedule.state_at(cmd.ts)[0]
        for market in markets:
            market.halted = True
            self._set_phase(market, open_, cmd.seq, cmd.ts)
        if cmd.cancel_orders:
            symbols = {m.symbol for m in markets}
            self._cancel_where(lambda o: o.instrument not in symbols, CancelReason.HALT, cmd.seq, cmd.ts)

    def _resume(self, cmd: Resume) -> None:
        markets = self._markets_named(cmd)
        if markets is None:
            return
        if not any(m.halted for m in markets):
            self._reject(cmd, Reason.NOT_HALTED, "not halted")
            return
        open_ = self.schedule.state_at(cmd.ts)[0]
        for market in markets:
            market.halted = False
            self._set_phase(market, open_, cmd.seq, cmd.ts)

    def _tick(self, cmd: Tick) -> None:
        """Nothing beyond the clock check that apply() makes for every command."""

    def _note(self, cmd: Note) -> None:
        """As a Tick, and the record of what the operator did outside the core."""
        self.out.append(Noted(cmd.seq, cmd.ts, cmd.actor, cmd.kind, cmd.text))

    def _advance_clock(self, seq: int, ts: int) -> None:
        """The schedule may have changed phase since the last command."""
        if ts >= self._expire_at:
            self._expire_all(seq, ts)
        if self.auctions:
            self._clear_auctions(seq, ts)
        open_, self._next_change, _ = self.schedule.state_at(ts)
        if self.auctions:
            self._next_change = min(self._next_change, min(a.end_ts for a in self.auctions.values()))
        for market in self.markets.values():
            self._set_phase(market, open_, seq, ts)
        sched = self.schedule
        offset = sched.utc_offset_minutes * NS_PER_MINUTE
        local = ts + offset
        if not sched.windows:  # no trading at all: nothing ever rests, nothing expires
            self._expire_at = 1 << 62
            return
        close = local - local % NS_PER_DAY + sched.windows[-1][1] * NS_PER_MINUTE - offset
        self._expire_at = close if ts < close else close + NS_PER_DAY

    def _expire_all(self, seq: int, ts: int) -> None:
        out = self.out
        for order in sorted(self.orders.values(), key=lambda o: o.order_id):
            market = self.markets[order.instrument]
            qty = self._remove_resting(market, order)
            out.append(Expired(seq, ts, order.member, order.order_id, order.instrument, qty))
        # Block offers end with the block session, the day's last window.
        for offer_id in sorted(self.offers):
            self._end_offer(self.offers[offer_id], int(BlockEnd.EXPIRED), seq, ts)

    def _end_of_day(self, cmd: EndOfDay) -> None:
        self._expire_all(cmd.seq, cmd.ts)
        for market in self.markets.values():
            close = market.close_price()
            low, high = market.rules.band(close)
            # With no trade, both the opening and the closing price carry the previous close.
            self.out.append(DayClosed(cmd.seq, cmd.ts, market.symbol, market.open_price or market.ref_price, close,
                                      market.volume, market.value, close, low, high))
            market.new_day(close)
        self.coids.clear()
        self.day += 1
        if self.ledger is not None:
            self.ledger.end_of_day()

    # --- block agreement trading -------------------------------------------------------

    def _in_block_session(self, ts: int) -> bool:
        """Whether ``ts`` falls in the block session: the schedule's last window (13:00-15:00
        on the national schedule; always, on an always-open one)."""
        sched = self.schedule
        if not sched.windows:
            return False
        minute = (ts + sched.utc_offset_minutes * NS_PER_MINUTE) % NS_PER_DAY // NS_PER_MINUTE
        start, end = sched.windows[-1]
        return start <= minute < end

    def _block_market(self, cmd: BlockOffer | BlockAccept, member: str, instrument: str, coid: str) -> Market | None:
        """Checks shared by block offers and acceptances; rejects and returns None on the
        first that fails."""
        if self._barred(cmd, member, coid):
            return None
        market = self.markets.get(instrument)
        if market is None:
            self._reject(cmd, Reason.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument!r}", coid)
            return None
        if market.halted:
            self._reject(cmd, Reason.INSTRUMENT_HALTED, f"{market.symbol} is halted", coid)
            return None
        if market.phase != CONTINUOUS or not self._in_block_session(cmd.ts):
            start, end = self.schedule.windows[-1] if self.schedule.windows else (0, 0)
            self._reject(cmd, Reason.BLOCK_SESSION_CLOSED,
                         f"block trading is open {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d} only",
                         coid)
            return None
        if coid in self.coids.get(member, ()):
            self._reject(cmd, Reason.DUPLICATE_CLIENT_ORDER_ID, f"client order id {coid!r} already used today", coid)
            return None
        return market

    def _block_offer(self, cmd: BlockOffer) -> None:
        member, coid = cmd.member, cmd.coid
        market = self._block_market(cmd, member, cmd.instrument, coid)
        if market is None:
            return
        side, qty, price = cmd.side, cmd.qty, cmd.price
        rules = market.rules
        if side != BUY and side != SELL:
            self._reject(cmd, Reason.INVALID_FIELD, f"side must be 1 (buy) or 2 (sell), got {side}", coid)
            return
        if qty < rules.block_min:
            self._reject(cmd, Reason.BLOCK_TOO_SMALL, f"a block offer is at least {rules.block_min} t, got {qty}", coid)
            return
        if qty % market.lot:
            self._reject(cmd, Reason.OFF_LOT, f"quantity {qty} is not a multiple of the lot {market.lot}", coid)
            return
        if price % market.tick:
            self._reject(cmd, Reason.OFF_TICK, f"price {price} is not a multiple of the tick {market.tick}", coid)
            return
        low, high = rules.block_band(market.ref_price)
        if not low <= price <= high:
            self._reject(cmd, Reason.BLOCK_PRICE_OUT_OF_RANGE,
                         f"block price {price} outside [{low}, {high}] ({rules.block_band_bps // 100} % around the "
                         f"previous close {market.ref_price})", coid)
            return
        if cmd.counterparty == member:
            self._reject(cmd, Reason.INVALID_FIELD, "the counterparty named is the offering member itself", coid)
            return
        if side == BUY and market.position_max and not self._position_ok(cmd, member, market, qty, coid, 0):
            return
        hold = 0
        if market.holds:
            hold = self._hold_new(cmd, member, market, side, price, qty)
            if hold < 0:
                return
        offer_id = self.next_offer_id
        self.next_offer_id = offer_id + 1
        self.coids.setdefault(member, set()).add(coid)
        self.offers[offer_id] = Offer(offer_id, member, coid, market.symbol, side, qty, price, cmd.counterparty,
                                      cmd.partial, hold, cmd.ts)
        self.out.append(BlockOffered(cmd.seq, cmd.ts, member, coid, offer_id, market.symbol, side, qty, price,
                                     cmd.counterparty, cmd.partial))

    def _block_accept(self, cmd: BlockAccept) -> None:
        member, coid, qty = cmd.member, cmd.coid, cmd.qty
        offer = self.offers.get(cmd.offer_id)
        if offer is None or (offer.counterparty and offer.counterparty != member):
            # An offer named to another member is, to this one, no offer at all.
            self._reject(cmd, Reason.UNKNOWN_OFFER, f"no open block offer {cmd.offer_id} for you", coid)
            return
        market = self._block_market(cmd, member, offer.instrument, coid)
        if market is None:
            return
        if offer.member == member:
            self._reject(cmd, Reason.OFFER_IS_YOURS, f"block offer {offer.offer_id} is your own", coid)
            return
        if qty <= 0 or qty > offer.qty:
            self._reject(cmd, Reason.QTY_OUT_OF_RANGE, f"quantity {qty} outside [1, {offer.qty}] (what is left)", coid)
            return
        if qty != offer.qty and not offer.partial:
            self._reject(cmd, Reason.PARTIAL_NOT_ALLOWED,
                         f"block offer {offer.offer_id} is all or nothing: accept {offer.qty} t", coid)
            return
        if qty % market.lot:
            self._reject(cmd, Reason.OFF_LOT, f"quantity {qty} is not a multiple of the lot {market.lot}", coid)
            return
        side = SELL if offer.side == BUY else BUY  # the acceptor's
        price = offer.price
        if side == BUY and market.position_max and not self._position_ok(cmd, member, market, qty, coid, 0):
            return
        freed = 0
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            hold = self._hold_new(cmd, member, market, side, price, qty)
            if hold < 0:
                return
            if side == BUY:
                freed = hold  # the acceptor's hold covers exactly this trade
            else:
                left = offer.qty - qty
                new = ledger.cash_required(price * left) if left else 0
                freed = offer.hold - new
                offer.hold = new
        self.coids.setdefault(member, set()).add(coid)
        trade_id = self._take_trade_id()
        # Settled as any trade (delivery versus payment), the offerer as maker; not
        # recorded in the listing statistics (open, close, VWAP).
        trade = Trade(cmd.seq, cmd.ts, trade_id, market.symbol, price, qty, side, 0, offer.member, 0, member)
        if market.holds:
            assert self.ledger is not None
            self.ledger.settle(trade, freed)
        offer.qty -= qty
        market.block_volume += qty
        market.block_value += price * qty
        market.block_trades += 1
        buyer, seller = (member, offer.member) if side == BUY else (offer.member, member)
        self.out.append(BlockTraded(cmd.seq, cmd.ts, trade_id, offer.offer_id, market.symbol, price, qty, buyer, seller,
                                    offer.member, member, coid, offer.coid, offer.qty))
        if not offer.qty:
            del self.offers[offer.offer_id]

    def _block_withdraw(self, cmd: BlockWithdraw) -> None:
        offer = self.offers.get(cmd.offer_id)
        if offer is None or offer.member != cmd.member:
            self._reject(cmd, Reason.UNKNOWN_OFFER, f"no open block offer {cmd.offer_id} of yours")
            return
        self._end_offer(offer, int(BlockEnd.WITHDRAWN), cmd.seq, cmd.ts)

    def _end_offer(self, offer: Offer, reason: int, seq: int, ts: int) -> None:
        """Release what is left of an offer's hold and drop it."""
        market = self.markets[offer.instrument]
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            if offer.side == BUY:
                ledger.release(offer.member, CASH, offer.hold)
            else:
                ledger.release(offer.member, offer.instrument, offer.qty)
        del self.offers[offer.offer_id]
        self.out.append(BlockWithdrawn(seq, ts, offer.member, offer.offer_id, offer.instrument, offer.qty, reason))

    # --- one-way bidding (auctions) ----------------------------------------------------

    def _auction_announce(self, cmd: AuctionAnnounce) -> None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            self._reject(cmd, Reason.UNKNOWN_INSTRUMENT, f"unknown instrument {cmd.instrument!r}")
            return
        rules = market.rules
        limit_low, ceiling = rules.band(market.ref_price) if rules.band_bps else (market.low, market.high)
        qty, floor = cmd.qty, cmd.floor
        bid_max = cmd.bid_max or qty
        problem = ""
        if not cmd.seller:
            problem = "name the seller (the authority's account or a member)"
        elif cmd.seller != AUTHORITY and qty < rules.block_min:
            problem = f"a member's auction sells at least {rules.block_min} t, got {qty}"
        elif qty <= 0 or qty % market.lot:
            problem = f"quantity {qty} must be a positive multiple of the lot {market.lot}"
        elif floor % market.tick or not limit_low <= floor <= ceiling:
            problem = f"floor {floor} must be on the tick within [{limit_low}, {ceiling}] (the previous close -10 %, +10 %)"
        elif not cmd.ts <= cmd.end_ts or cmd.start_ts >= cmd.end_ts:
            problem = f"the window [{cmd.start_ts}, {cmd.end_ts}) must end after it starts and after now"
        elif cmd.pricing not in (int(Pricing.UNIFORM), int(Pricing.OWN_BID)):
            problem = f"pricing must be 1 (uniform) or 2 (each at its own bid), got {cmd.pricing}"
        elif not 0 < cmd.bid_min <= bid_max <= qty:
            problem = f"bid sizes [{cmd.bid_min}, {bid_max}] must be within [1, {qty}]"
        if problem:
            self._reject(cmd, Reason.INVALID_FIELD, problem)
            return
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            if not ledger.hold(cmd.seller, market.symbol, qty):
                self._reject(cmd, Reason.INSUFFICIENT_HOLDINGS,
                             f"the seller {cmd.seller} has not {qty} t of {market.symbol} available")
                return
        auction_id = self.next_auction_id
        self.next_auction_id = auction_id + 1
        self.auctions[auction_id] = Auction(AuctionRecord(
            auction_id, cmd.seller, market.symbol, qty, floor, ceiling, cmd.start_ts, cmd.end_ts, cmd.pricing,
            cmd.bid_min, bid_max, cmd.cancel_if_short, qty if market.holds else 0, []))
        self._next_change = min(self._next_change, cmd.end_ts)
        self.out.append(AuctionAnnounced(cmd.seq, cmd.ts, auction_id, cmd.seller, market.symbol, qty, floor, ceiling,
                                         cmd.start_ts, cmd.end_ts, cmd.pricing, cmd.bid_min, bid_max,
                                         cmd.cancel_if_short))

    def _bid_checks(self, cmd: AuctionBid | AuctionBidAmend, auction: Auction | None, coid: str) -> Market | None:
        """Checks shared by bids and amends; rejects and returns None on the first that fails."""
        member = cmd.member
        if self._barred(cmd, member, coid):
            return None
        if auction is None:
            self._reject(cmd, Reason.UNKNOWN_AUCTION, f"no auction {cmd.auction_id} is open", coid)
            return None
        if not auction.start_ts <= cmd.ts < auction.end_ts:
            self._reject(cmd, Reason.AUCTION_NOT_OPEN, f"auction {auction.auction_id} takes bids from "
                         f"{auction.start_ts} to {auction.end_ts} (ns), not at {cmd.ts}", coid)
            return None
        if member == auction.seller:
            self._reject(cmd, Reason.SELLER_CANNOT_BID, f"{member} sells in auction {auction.auction_id}", coid)
            return None
        market = self.markets[auction.instrument]
        if cmd.price % market.tick or not auction.floor <= cmd.price <= auction.ceiling:
            self._reject(cmd, Reason.BID_PRICE_OUT_OF_RANGE,
                         f"bid price {cmd.price} must be on the tick within [{auction.floor}, {auction.ceiling}]", coid)
            return None
        if not auction.bid_min <= cmd.qty <= auction.bid_max or cmd.qty % market.lot:
            self._reject(cmd, Reason.BID_SIZE_OUT_OF_RANGE,
                         f"bid quantity {cmd.qty} must be within [{auction.bid_min}, {auction.bid_max}] in lots of "
                         f"{market.lot}", coid)
            return None
        return market

    def _auction_bid(self, cmd: AuctionBid) -> None:
        member, coid = cmd.member, cmd.coid
        auction = self.auctions.get(cmd.auction_id)
        market = self._bid_checks(cmd, auction, coid)
        if market is None or auction is None:
            return
        if coid in self.coids.get(member, ()):
            self._reject(cmd, Reason.DUPLICATE_CLIENT_ORDER_ID, f"client order id {coid!r} already used today", coid)
            return
        hold = 0
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            hold = ledger.cash_required(cmd.price * cmd.qty)
            if not ledger.hold(member, CASH, hold):
                self._reject(cmd, Reason.INSUFFICIENT_FUNDS, f"available cash does not cover {hold} fen", coid)
                return
        bid_id = self.next_bid_id
        self.next_bid_id = bid_id + 1
        self.coids.setdefault(member, set()).add(coid)
        auction.bids[bid_id] = Bid(bid_id, member, coid, cmd.qty, cmd.price, hold, cmd.ts)
        self.out.append(BidPlaced(cmd.seq, cmd.ts, member, coid, auction.auction_id, bid_id, cmd.qty, cmd.price, False))

    def _own_bid(self, cmd: AuctionBidAmend | AuctionBidWithdraw, auction: Auction | None) -> Bid | None:
        bid = auction.bids.get(cmd.bid_id) if auction is not None else None
        if bid is None or bid.member != cmd.member:
            self._reject(cmd, Reason.UNKNOWN_BID, f"no bid {cmd.bid_id} of yours in auction {cmd.auction_id}")
            return None
        return bid

    def _auction_bid_amend(self, cmd: AuctionBidAmend) -> None:
        auction = self.auctions.get(cmd.auction_id)
        if auction is not None and self._own_bid(cmd, auction) is None:
            return
        market = self._bid_checks(cmd, auction, "")
        if market is None or auction is None:
            return
        bid = auction.bids[cmd.bid_id]
        hold = 0
        if market.holds:
            ledger = self.ledger
            assert ledger is not None
            hold = ledger.cash_required(cmd.price * cmd.qty)
            more = hold - bid.hold
            if more > 0 and not ledger.hold(bid.member, CASH, more):
                self._reject(cmd, Reason.INSUFFICIENT_FUNDS, f"available cash does not cover {more} fen more")
                return
            if more < 0:
                ledger.release(bid.member, CASH, -more)
        bid.qty, bid.price, bid.hold, bid.ts = cmd.qty, cmd.price, hold, cmd.ts
        self.out.append(BidPlaced(cmd.seq, cmd.ts, bid.member, bid.coid, auction.auction_id, bid.bid_id, bid.qty,
                                  bid.price, True))

    def _auction_bid_withdraw(self, cmd: AuctionBidWithdraw) -> None:
        auction = self.auctions.get(cmd.auction_id)
        bid = self._own_bid(cmd, auction)
        if bid is None or auction is None:
            return
        if not auction.start_ts <= cmd.ts < auction.end_ts:
            self._reject(cmd, Reason.AUCTION_NOT_OPEN, f"auction {auction.auction_id} is not taking bids now")
            return
        self._release_bid(auction, bid)
        del auction.bids[bid.bid_id]
        self.out.append(BidPlaced(cmd.seq, cmd.ts, bid.member, bid.coid, auction.auction_id, bid.bid_id, 0, bid.price,
                                  True))

    def _release_bid(self, auction: Auction, bid: Bid) -> None:
        if bid.hold:
            ledger = self.ledger
            assert ledger is not None
            ledger.release(bid.member, CASH, bid.hold)
            bid.hold = 0

    def _clear_auctions(self, seq: int, ts: int) -> None:
        """Clear every auction whose window has closed, in the order of their closes."""
        due = sorted((a for a in self.auctions.values() if a.end_ts <= ts), key=lambda a: (a.end_ts, a.auction_id))
        for auction in due:
            self._clear(auction, seq, ts)
            del self.auctions[auction.auction_id]

    def _clear(self, auction: Auction, seq: int, ts: int) -> None:
        """Rank the bids by price, then time; allocate the quantity, the marginal bid in
        part; settle each fill by delivery versus payment; release what is left."""
        market = self.markets[auction.instrument]
        ledger = self.ledger
        ranked = sorted(auction.bids.values(), key=lambda b: (-b.price, b.ts, b.bid_id))
        asked = sum(b.qty for b in ranked)
        out = self.out
        fills: list[tuple[Bid, int]] = []
        left = auction.qty
        if not (auction.cancel_if_short and asked < auction.qty):
            for bid in ranked:
                if not left:
                    break
                take = min(bid.qty, left)
                fills.append((bid, take))
                left -= take
        clearing = fills[-1][0].price if fills else 0
        for bid, take in fills:
            price = clearing if auction.pricing == int(Pricing.UNIFORM) else bid.price
            trade_id = self._take_trade_id()
            if market.holds:
                assert ledger is not None
                trade = Trade(seq, ts, trade_id, market.symbol, price, take, BUY, 0, auction.seller, 0, bid.member)
                freed = bid.hold  # pays this fill at its price; the rest of the bid's hold returns
                bid.hold = 0
                ledger.settle(trade, freed)
                auction.hold -= take
            out.append(AuctionFill(seq, ts, bid.member, bid.coid, auction.auction_id, bid.bid_id, trade_id,
                                   market.symbol, take, price))
        for bid in ranked:
            self._release_bid(auction, bid)  # the losing bids' holds (the winners' are spent)
        if market.holds and auction.hold:
            assert ledger is not None
            ledger.release(auction.seller, market.symbol, auction.hold)
            auction.hold = 0
        sold = auction.qty - left if fills else 0
        out.append(AuctionResult(seq, ts, auction.auction_id, market.symbol, auction.seller, clearing, sold,
                                 auction.qty, len(ranked), len(fills), asked, not fills and auction.cancel_if_short
                                 and asked < auction.qty))

    # --- members ----------------------------------------------------------------------

    def _barred(self, cmd: Any, member: str, coid: str, order_id: int = 0) -> bool:
        """Reject (and say True) when the member may not trade: suspended, or staff."""
        if member in self.suspended:
            self._reject(cmd, Reason.MEMBER_SUSPENDED, f"member {member} is suspended from trading", coid,
                         order_id=order_id)
            return True
        if member in self.staff:
            self._reject(cmd, Reason.STAFF_MAY_NOT_TRADE, f"account {member} belongs to staff of the regulator, the "
                         "registry, the exchange or a verifier, who may not trade", coid, order_id=order_id)
            return True
        return False

    def _suspend(self, cmd: SuspendMember) -> None:
        member = cmd.member
        if not member:
            self._reject(cmd, Reason.INVALID_FIELD, "member is empty: name the member to suspend")
            return
        if member in self.suspended:
            self._reject(cmd, Reason.ALREADY_SUSPENDED, f"member {member} is suspended already")
            return
        self.suspended.add(member)
        self.out.append(MemberStatus(cmd.seq, cmd.ts, member, True, cmd.text))
        if cmd.cancel_orders:
            self._cancel_where(lambda o: o.member != member, SUSPENDED, cmd.seq, cmd.ts)

    def _reinstate(self, cmd: ReinstateMember) -> None:
        member = cmd.member
        if not member:
            self._reject(cmd, Reason.INVALID_FIELD, "member is empty: name the member to reinstate")
            return
        if member not in self.suspended:
            self._reject(cmd, Reason.NOT_SUSPENDED, f"member {member} is not suspended")
            return
        self.suspended.discard(member)
        self.out.append(MemberStatus(cmd.seq, cmd.ts, member, False, cmd.text))

    # --- queries ----------------------------------------------------------------------

    def bbo(self, instrument: str) -> tuple[int, int, int, int]:
        """(bid price, bid qty, ask price, ask qty); zeros for an empty side, as in the
        market data. ``best_bid``/``best_ask`` say None for an empty side."""
        book = self.markets[instrument].book
        bid = book.bids.depth(1) or [(0, 0, 0)]
        ask = book.asks.depth(1) or [(0, 0, 0)]
        return bid[0][0], bid[0][1], ask[0][0], ask[0][1]

    def best_bid(self, instrument: str) -> int | None:
        """The best bid price, None when no buy rests."""
        return self.markets[instrument].book.best_bid()

    def best_ask(self, instrument: str) -> int | None:
        """The best ask price, None when no sell rests."""
        return self.markets[instrument].book.best_ask()

    def depth_at(self, instrument: str, side: int, price: int) -> tuple[int, int]:
        """(open quantity, live orders) resting on one side at one price; (0, 0) for a
        price with none, outside the band included."""
        return self.markets[instrument].book.sides[side].depth_at(price)

    def depth(self, instrument: str, n: int = 5) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """The best n levels of each side as (price, qty, orders): L2."""
        book = self.markets[instrument].book
        return book.bids.depth(n), book.asks.depth(n)

    def level_orders(self, instrument: str, side: int, price: int) -> list[Order]:
        """The live orders at one price in time priority: L3."""
        return self.markets[instrument].book.sides[side].level_orders(price)

    def order(self, order_id: int) -> Order | None:
        return self.orders.get(order_id)

    # --- state ------------------------------------------------------------------------

    def snapshot(self) -> EngineSnapshot:
        """Everything the core owns except the ledger (the ledger snapshots itself)."""
        markets = [
            MarketSnapshot(
                m.symbol, m.phase, m.halted, m.ref_price,
                [m.open_price, m.high_price, m.low_price, m.last_price, m.volume, m.value, m.trades],
                [o.record() for o in m.book.bids.orders()] + [o.record() for o in m.book.asks.orders()],
            )
            for m in self.markets.values()
        ]
        return EngineSnapshot(
            self.last_seq, self.last_ts, self.next_order_id, self.next_trade_id, self.day,
            self._next_change, self._expire_at, [(m, list(used)) for m, used in self.coids.items() if used], markets,
            sorted(self.suspended), [self.offers[i].record() for i in sorted(self.offers)], self.next_offer_id,
            self._block_stats(), [self.auctions[i].record() for i in sorted(self.auctions)], self.next_auction_id,
            self.next_bid_id,
        )

    def restore(self, snap: EngineSnapshot) -> None:
        """Load a snapshot into an engine freshly built with the same configuration."""
        assert self.last_seq == 0 and not self.orders, "restore needs a fresh engine"
        self.last_seq, self.last_ts = snap.last_seq, snap.last_ts
        self.next_order_id, self.next_trade_id, self.day = snap.next_order_id, snap.next_trade_id, snap.day
        self._next_change, self._expire_at = snap.next_change, snap.expire_at
        self.coids = {m: set(used) for m, used in snap.coids}
        self.suspended = set(snap.suspended)
        self.next_offer_id = snap.next_offer_id
        block_stats = {symbol: figures for symbol, figures in snap.block_stats}
        self.next_auction_id, self.next_bid_id = snap.next_auction_id, snap.next_bid_id
        for ar in snap.auctions:
            self.auctions[ar.auction_id] = Auction(ar)
        for r in snap.offers:
            self.offers[r.offer_id] = Offer(r.offer_id, r.member, r.coid, r.instrument, r.side, r.qty, r.price,
                                            r.counterparty, r.partial, r.hold, r.ts)
        for ms in snap.markets:
            market = self.markets.get(ms.symbol)
            if market is None:
                raise ValueError(f"snapshot has instrument {ms.symbol} that the configuration lacks")
            market.new_day(ms.ref_price)
            market.phase, market.halted = ms.phase, ms.halted
            (market.open_price, market.high_price, market.low_price, market.last_price,
             market.volume, market.value, market.trades) = ms.stats
            market.block_volume, market.block_value, market.block_trades = block_stats.get(ms.symbol, (0, 0, 0))
            for record in ms.orders:
                order = Order.from_record(record)
                half = market.sides[order.side]
                half.add(order, half.key(order.price))
                self.orders[order.order_id] = order
                if market.position_max and order.side == BUY:  # derived from the book, not snapshotted
                    self._open_buy(market, order.member, order.qty)

    def state(self) -> list[Any]:
        """A canonical, encodable picture of everything the core owns."""
        markets = []
        for symbol in sorted(self.markets):
            m = self.markets[symbol]
            markets.append([
                symbol, m.phase, m.halted, m.ref_price, m.low, m.high,
                [m.open_price, m.high_price, m.low_price, m.last_price, m.volume, m.value, m.trades],
                [[o.record() for o in m.book.bids.orders()], [o.record() for o in m.book.asks.orders()]],
            ])
        ledger = self.ledger.state() if self.ledger is not None else []
        state: list[Any] = [self.last_seq, self.last_ts, self.next_order_id, self.next_trade_id, self.day,
                            markets, self._coid_digest(), ledger]
        if self.suspended or self.offers or self.next_offer_id > 1 or self.next_auction_id > 1:
            # Only when there are any: a state without suspensions keeps the hash it had
            # before suspensions existed, so snapshot files written then still verify.
            state.append(sorted(self.suspended))
        if self.offers or self.next_offer_id > 1 or self.next_auction_id > 1:
            # The same for block offers (issue 14).
            state.append([self.next_offer_id, [self.offers[i].record() for i in sorted(self.offers)],
                          self._block_stats()])
        if self.next_auction_id > 1:
            # And for auctions, once one was announced.
            state.append([self.next_auction_id, self.next_bid_id,
                          [self.auctions[i].record() for i in sorted(self.auctions)]])
        return state

    def _block_stats(self) -> list[tuple[str, list[int]]]:
        """The day's block trade figures of the instruments that had any, by symbol."""
        return [(symbol, [m.block_volume, m.block_value, m.block_trades]) for symbol, m in sorted(self.markets.items())
                if m.block_trades]

    def _coid_digest(self) -> list[tuple[str, int, int]]:
        """The day's client order ids, canonically and cheaply: per member, how many and
        the sum of their CRC-32s (an order-independent digest, computed in C). Sorting
        hundreds of thousands of ids instead took most of a snapshot's pause."""
        return sorted(
            (m, len(used), sum(map(zlib.crc32, map(str.encode, used)))) for m, used in self.coids.items() if used
        )

    def state_hash(self) -> str:
        return hashlib.blake2b(msgspec.msgpack.encode(self.state()), digest_size=16).hexdigest()

    def _check(self) -> None:
        """Assert every invariant of the core (O(orders + levels))."""
        live: dict[int, Order] = {}
        held_cash: dict[str, int] = {}
        held_asset: dict[tuple[str, str], int] = {}
        assert all(isinstance(m, str) and m for m in self.suspended), self.suspended
        for market in self.markets.values():
            market.book._check()
            open_buys: dict[str, int] = {}
            for o in market.book.bids.orders():
                open_buys[o.member] = open_buys.get(o.member, 0) + o.qty
            # The open buy quantity is kept exactly for the markets with a position limit.
            assert market.open_buys == (open_buys if market.position_max else {}), (market.symbol, market.open_buys)
            for half in (market.book.bids, market.book.asks):
                for o in half.orders():
                    assert o.order_id not in live, o
                    live[o.order_id] = o
                    assert market.low <= o.price <= market.high, o
                    if market.holds and o.side == BUY:
                        assert self.ledger is not None
                        assert o.hold == self.ledger.cash_required(o.price * o.qty), o
                        held_cash[o.member] = held_cash.get(o.member, 0) + o.hold
                    elif market.holds:
                        key = (o.member, o.instrument)
                        held_asset[key] = held_asset.get(key, 0) + o.qty
        for offer in self.offers.values():
            market = self.markets[offer.instrument]
            assert offer.qty > 0 and offer.offer_id < self.next_offer_id, offer.record()
            if market.holds and offer.side == BUY:
                assert self.ledger is not None
                assert offer.hold == self.ledger.cash_required(offer.price * offer.qty), offer.record()
                held_cash[offer.member] = held_cash.get(offer.member, 0) + offer.hold
            elif market.holds:
                key = (offer.member, offer.instrument)
                held_asset[key] = held_asset.get(key, 0) + offer.qty
        for auction in self.auctions.values():
            market = self.markets[auction.instrument]
            if market.holds:
                key = (auction.seller, auction.instrument)
                held_asset[key] = held_asset.get(key, 0) + auction.hold
                assert self.ledger is not None
                for bid in auction.bids.values():
                    assert bid.hold == self.ledger.cash_required(bid.price * bid.qty), bid.record()
                    held_cash[bid.member] = held_cash.get(bid.member, 0) + bid.hold
        assert live.keys() == self.orders.keys(), "order index differs from the books"
        for oid, o in live.items():
            assert self.orders[oid] is o
        if self.ledger is not None and hasattr(self.ledger, "held"):
            held = self.ledger.held
            for (account, asset), amount in held.items():
                if asset == CASH:
                    assert amount == held_cash.get(account, 0), (account, amount, held_cash.get(account, 0))
                elif asset in self.markets and self.markets[asset].holds:
                    assert amount == held_asset.get((account, asset), 0), (account, asset, amount)

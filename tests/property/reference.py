"""A reference exchange core: the engine's rules written as plainly as possible.

It exists to be compared with ``engine.Engine`` command by command. It shares nothing
with the engine but the message classes and the ``Instrument``/``Schedule`` settings;
every rule is re-derived here from the specification, in the most obvious way:

- a book is one list of resting orders per instrument; the best order is found by a
  linear scan with the key (price, then arrival), arrival being a counter stamped
  whenever an order enters the book;
- holds are never stored: what a member has held is *computed* from the book (price x
  open quantity of its resting buys plus the fee on it, the open quantity of its
  resting sells, in instruments with holds), so "holds equal what open orders require" holds here by
  construction and the engine's ledger is compared against it;
- the price band is computed with exact fractions; the closing price with exact
  rounding of value / volume;
- phases are recomputed from the schedule on every command; resting orders expire
  at the first close (end of the day's last window) after the previous command;
- a position limit counts the member's balance plus the open quantity of its resting
  buys, summed from the book at each check (the engine keeps a running total).

Events are produced in the order the engine documents (see ``apply``). Where the
engine cancels or expires many orders at once, they go in order id order, which is
what ``Engine._cancel_where`` promises.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

from engine.instrument import Instrument, Schedule
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    Cancelled,
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
    ReinstateMember,
    Rejected,
    Resume,
    StatusChanged,
    SuspendMember,
    Tick,
    Trade,
)

CASH = "CNY"
BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
DAY, IOC, FOK = 1, 2, 3
CLOSED, CONTINUOUS, HALTED = 0, 1, 2
DEFAULT, CANCEL_RESTING, CANCEL_INCOMING, CANCEL_BOTH, DECREMENT = 0, 1, 2, 3, 4
# reasons
UNKNOWN_INSTRUMENT, OFF_TICK, OFF_LOT, QTY_OUT_OF_RANGE, PRICE_OUTSIDE_BAND = 1, 2, 3, 4, 5
MARKET_CLOSED, INSTRUMENT_HALTED, INSUFFICIENT_FUNDS, INSUFFICIENT_HOLDINGS = 6, 7, 8, 9
DUPLICATE_CLIENT_ORDER_ID, UNKNOWN_ORDER, NOT_YOUR_ORDER, INVALID_FIELD = 10, 11, 12, 13
TARGET_NOT_IN_BEST_LEVELS, TARGET_IS_OWN_ORDER, AMEND_NO_CHANGE, NOT_HALTED, ALREADY_HALTED = 14, 15, 16, 17, 18
POSITION_LIMIT, MEMBER_SUSPENDED, ALREADY_SUSPENDED, NOT_SUSPENDED = 19, 20, 21, 22
# cancel reasons
USER, IOC_REST, SELF_TRADE, HALT, MASS_CANCEL, DISCONNECT, SUSPENDED = 1, 2, 3, 4, 5, 6, 7
NS_PER_MINUTE = 60_000_000_000
NS_PER_DAY = 1440 * NS_PER_MINUTE
# The order of the events when many orders are cancelled or expired at once: "id" (order
# id order, the engine's documented contract) or "entry" (the order in which they last
# entered the book). ETX_REF_CANCEL_ORDER=entry compares everything else while the
# engine does not keep its contract.
CANCEL_ORDER = os.environ.get("ETX_REF_CANCEL_ORDER", "id")


def band(rules: Instrument, ref: int) -> tuple[int, int]:
    """The widest range of tick prices inside the limit (inside [price_min, price_max]
    without a band), never below one tick."""
    tick = rules.tick
    if rules.band_bps == 0:
        lowest, highest = Fraction(rules.price_min), Fraction(rules.price_max)
    else:
        lowest = Fraction(ref * (10_000 - rules.band_bps), 10_000)
        highest = Fraction(ref * (10_000 + rules.band_bps), 10_000)
    low = math.ceil(lowest / tick) * tick
    high = math.floor(highest / tick) * tick
    if rules.band_bps:
        low = max(low, tick)
    return low, high


class Order:
    def __init__(self, oid: int, member: str, coid: str, symbol: str, side: int, price: int, qty: int,
                 tif: int, stp: int) -> None:
        self.id, self.member, self.coid, self.symbol = oid, member, coid, symbol
        self.side, self.price, self.qty, self.tif, self.stp = side, price, qty, tif, stp
        self.filled = 0
        self.arrival = 0

    def __repr__(self) -> str:
        return f"Order({self.id} {self.member} {self.symbol} {'BS'[self.side - 1]} {self.qty}@{self.price})"


class Market:
    def __init__(self, rules: Instrument) -> None:
        self.rules = rules
        self.symbol = rules.symbol
        self.phase = CLOSED
        self.halted = False
        self.orders: list[Order] = []  # resting orders, any order
        self.start_day(rules.ref_price)

    def start_day(self, ref: int) -> None:
        self.ref = ref
        self.low, self.high = band(self.rules, ref)
        self.open = self.high_price = self.low_price = self.last = 0
        self.volume = self.value = self.trades = 0

    def crosses(self, incoming: Order, resting: Order) -> bool:
        if incoming.side == BUY:
            return resting.side == SELL and resting.price <= incoming.price
        return resting.side == BUY and resting.price >= incoming.price

    def priority(self, order: Order) -> tuple[int, int]:
        return (order.price if order.side == SELL else -order.price, order.arrival)

    def in_priority(self, side: int) -> list[Order]:
        return sorted((o for o in self.orders if o.side == side), key=self.priority)

    def close_price(self) -> int:
        if not self.volume:
            return self.ref
        ticks = Fraction(self.value, self.volume * self.rules.tick)
        return math.floor(ticks + Fraction(1, 2)) * self.rules.tick  # half up

    def stats(self) -> dict[str, int]:
        return {
            "open": self.open, "high": self.high_price, "low": self.low_price, "last": self.last,
            "volume": self.volume, "value": self.value, "trades": self.trades, "ref_price": self.ref,
            "band_low": self.low, "band_high": self.high, "phase": self.phase,
            # The workload has no block agreement trades.
            "block_volume": 0, "block_value": 0, "block_trades": 0,
        }


class Reference:
    def __init__(
        self,
        instruments: list[Instrument],
        balances: dict[tuple[str, str], int],
        *,
        schedule: Schedule,
        stp_default: int = CANCEL_RESTING,
        member_stp: dict[str, int] | None = None,
        fee_divisor: int = 0,
    ) -> None:
        self.markets = {rules.symbol: Market(rules) for rules in instruments}
        self.balance = dict(balances)
        self.schedule = schedule
        self.stp_default = stp_default
        self.member_stp = dict(member_stp or {})
        # Buyers pay notional // fee_divisor on each fill (0: no fee) to FEES; a buy
        # holds its notional plus that fee.
        self.fee_divisor = fee_divisor
        self.coids: set[tuple[str, str]] = set()
        self.suspended: set[str] = set()
        self.next_order_id = 1
        self.next_trade_id = 1
        self.arrivals = 0
        self.day = 1
        self.prev_ts: int | None = None
        self.out: list[Event] = []

    # --- what the book implies --------------------------------------------------------

    def fee(self, notional: int) -> int:
        return notional // self.fee_divisor if self.fee_divisor else 0

    def cash_required(self, order: Order) -> int:
        return order.price * order.qty + self.fee(order.price * order.qty)

    def resting(self) -> list[Order]:
        return [o for m in self.markets.values() for o in m.orders]

    def find(self, order_id: int) -> Order | None:
        for o in self.resting():
            if o.id == order_id:
                return o
        return None

    def held(self, member: str, asset: str) -> int:
        total = 0
        for m in self.markets.values():
            if not m.rules.holds:
                continue
            for o in m.orders:
                if o.member != member:
                    continue
                if asset == CASH and o.side == BUY:
                    total += self.cash_required(o)
                elif asset == m.symbol and o.side == SELL:
                    total += o.qty
        return total

    def available(self, member: str, asset: str) -> int:
        return self.balance.get((member, asset), 0) - self.held(member, asset)

    def past_limit(self, member: str, m: Market, more: int) -> bool:
        """Whether buying ``more`` would take the member past the market's position
        limit: its balance, plus its resting buys, plus ``more``."""
        if not m.rules.position_max:
            return False
        open_buys = sum(o.qty for o in m.orders if o.member == member and o.side == BUY)
        return self.balance.get((member, m.symbol), 0) + open_buys + more > m.rules.position_max

    def held_all(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for o in self.resting():
            if not self.markets[o.symbol].rules.holds:
                continue
            key = (o.member, CASH) if o.side == BUY else (o.member, o.symbol)
            out[key] = out.get(key, 0) + (self.cash_required(o) if o.side == BUY else o.qty)
        return {k: v for k, v in out.items() if v}

    def book(self, symbol: str) -> list[tuple[int, str, int, int, int, int]]:
        """Resting orders as (id, member, side, price, qty, filled): bids best first,
        then asks."""
        m = self.markets[symbol]
        return [(o.id, o.member, o.side, o.price, o.qty, o.filled) for side in (BUY, SELL) for o in m.in_priority(side)]

    # --- applying commands ------------------------------------------------------------

    def apply(self, cmd: Command) -> list[Event]:
        """Apply one stamped command; returns (and appends to ``out``) its events: first
        what the clock caused (expiry at the close, then phase changes), then the
        command's own."""
        start = len(self.out)
        seq, ts = cmd.seq, cmd.ts  # type: ignore[attr-defined]
        self.clock(seq, ts)
        if isinstance(cmd, NewOrder):
            self.new_order(cmd)
        elif isinstance(cmd, Cancel):
            self.cancel(cmd)
        elif isinstance(cmd, Amend):
            self.amend(cmd)
        elif isinstance(cmd, MassCancel):
            self.mass_cancel(cmd)
        elif isinstance(cmd, HitOrder):
            self.hit_order(cmd)
        elif isinstance(cmd, Halt):
            self.halt(cmd)
        elif isinstance(cmd, Resume):
            self.resume(cmd)
        elif isinstance(cmd, EndOfDay):
            self.end_of_day(cmd)
        elif isinstance(cmd, SuspendMember):
            self.suspend(cmd)
        elif isinstance(cmd, ReinstateMember):
            self.reinstate(cmd)
        elif isinstance(cmd, Note):
            self.out.append(Noted(seq, ts, cmd.actor, cmd.kind, cmd.text))
        else:
            assert isinstance(cmd, Tick), cmd
        return self.out[start:]

    def reject(self, cmd: Command, reason: int, coid: str = "", order_id: int = 0) -> None:
        seq, ts = cmd.seq, cmd.ts  # type: ignore[attr-defined]
        self.out.append(Rejected(seq, ts, getattr(cmd, "member", ""), coid, order_id, reason, "reference"))

    # --- time -------------------------------------------------------------------------

    def is_open(self, ts: int) -> bool:
        offset = self.schedule.utc_offset_minutes * NS_PER_MINUTE
        minute_ns = (ts + offset) % NS_PER_DAY
        return any(start * NS_PER_MINUTE <= minute_ns < end * NS_PER_MINUTE for start, end in self.schedule.windows)

    def first_close_after(self, ts: int) -> int:
        """The first end of the day's last window strictly after ts."""
        offset = self.schedule.utc_offset_minutes * NS_PER_MINUTE
        local = ts + offset
        midnight = local - local % NS_PER_DAY
        close = midnight + self.schedule.windows[-1][1] * NS_PER_MINUTE - offset
        while close <= ts:
            close += NS_PER_DAY
        return close

    def clock(self, seq: int, ts: int) -> None:
        if self.prev_ts is not None and self.first_close_after(self.prev_ts) <= ts:
            self.expire_all(seq, ts)
        self.prev_ts = ts
        open_ = self.is_open(ts)
        for m in self.markets.values():
            self.set_phase(m, open_, seq, ts)

    def set_phase(self, m: Market, open_: bool, seq: int, ts: int) -> None:
        phase = HALTED if m.halted else CONTINUOUS if open_ else CLOSED
        if phase != m.phase:
            m.phase = phase
            self.out.append(StatusChanged(seq, ts, m.symbol, phase))

    def in_cancel_order(self, orders: list[Order]) -> list[Order]:
        if CANCEL_ORDER == "entry":
            return sorted(orders, key=lambda o: o.arrival)
        assert CANCEL_ORDER == "id", CANCEL_ORDER
        return sorted(orders, key=lambda o: o.id)

    def expire_all(self, seq: int, ts: int) -> None:
        for o in self.in_cancel_order(self.resting()):
            self.markets[o.symbol].orders.remove(o)
            self.out.append(Expired(seq, ts, o.member, o.id, o.symbol, o.qty))

    # --- orders -----------------------------------------------------------------------

    def check_order(self, cmd: NewOrder | HitOrder, m: Market | None, side: int, qty: int) -> bool:
        if cmd.member in self.suspended:
            self.reject(cmd, MEMBER_SUSPENDED, cmd.coid)
        elif m is None:
            self.reject(cmd, UNKNOWN_INSTRUMENT, cmd.coid)
        elif m.phase != CONTINUOUS:
            self.reject(cmd, INSTRUMENT_HALTED if m.halted else MARKET_CLOSED, cmd.coid)
        elif side not in (BUY, SELL):
            self.reject(cmd, INVALID_FIELD, cmd.coid)
        elif not m.rules.qty_min <= qty <= m.rules.qty_max:
            self.reject(cmd, QTY_OUT_OF_RANGE, cmd.coid)
        elif qty % m.rules.lot:
            self.reject(cmd, OFF_LOT, cmd.coid)
        elif (cmd.member, cmd.coid) in self.coids:
            self.reject(cmd, DUPLICATE_CLIENT_ORDER_ID, cmd.coid)
        else:
            return True
        return False

    def can_hold(self, cmd: NewOrder | HitOrder, m: Market, side: int, price: int, qty: int) -> bool:
        if not m.rules.holds:
            return True
        if side == BUY and self.available(cmd.member, CASH) < price * qty + self.fee(price * qty):
            self.reject(cmd, INSUFFICIENT_FUNDS, cmd.coid)
            return False
        if side == SELL and self.available(cmd.member, m.symbol) < qty:
            self.reject(cmd, INSUFFICIENT_HOLDINGS, cmd.coid)
            return False
        return True

    def new_order(self, cmd: NewOrder) -> None:
        m = self.markets.get(cmd.instrument)
        if not self.check_order(cmd, m, cmd.side, cmd.qty):
            return
        assert m is not None
        if not DEFAULT <= cmd.stp <= DECREMENT or not DAY <= cmd.tif <= FOK:
            self.reject(cmd, INVALID_FIELD, cmd.coid)
            return
        price = cmd.price
        if cmd.ord_type == LIMIT:
            if price % m.rules.tick:
                self.reject(cmd, OFF_TICK, cmd.coid)
                return
            if not m.low <= price <= m.high:
                self.reject(cmd, PRICE_OUTSIDE_BAND, cmd.coid)
                return
        elif cmd.ord_type == MARKET:
            price = m.high if cmd.side == BUY else m.low
        else:
            self.reject(cmd, INVALID_FIELD, cmd.coid)
            return
        if cmd.side == BUY and self.past_limit(cmd.member, m, cmd.qty):
            self.reject(cmd, POSITION_LIMIT, cmd.coid)
            return
        if not self.can_hold(cmd, m, cmd.side, price, cmd.qty):
            return
        seq, ts = cmd.seq, cmd.ts
        stp = cmd.stp or self.member_stp.get(cmd.member, self.stp_default)
        order = Order(self.next_order_id, cmd.member, cmd.coid, m.symbol, cmd.side, price, cmd.qty, cmd.tif, stp)
        self.next_order_id += 1
        self.coids.add((cmd.member, cmd.coid))
        self.out.append(Accepted(seq, ts, cmd.member, cmd.coid, order.id, m.symbol, cmd.side, price, cmd.qty,
                                 cmd.ord_type, cmd.tif))
        if cmd.tif == FOK and not self.fok_fillable(m, order):
            self.out.append(Cancelled(seq, ts, order.member, order.id, m.symbol, order.qty, IOC_REST, order.side, order.price))
            return
        self.match(m, order, seq, ts)
        if order.qty:
            if cmd.tif == DAY and cmd.ord_type == LIMIT:
                self.enter(m, order)
            else:
                self.out.append(Cancelled(seq, ts, order.member, order.id, m.symbol, order.qty, IOC_REST, order.side, order.price))

    def enter(self, m: Market, order: Order) -> None:
        self.arrivals += 1
        order.arrival = self.arrivals
        m.orders.append(order)

    def fok_fillable(self, m: Market, order: Order) -> bool:
        """Walk what the order would meet, in priority: other members' orders fill it,
        an own order stops it unless it would be cancelled (cancel-resting)."""
        need = order.qty
        for o in m.in_priority(3 - order.side):
            if not m.crosses(order, o):
                break
            if o.member == order.member:
                if order.stp == CANCEL_RESTING:
                    continue
                return False
            need -= o.qty
            if need <= 0:
                return True
        return False

    def match(self, m: Market, order: Order, seq: int, ts: int) -> None:
        while order.qty:
            crossing = [o for o in m.orders if m.crosses(order, o)]
            if not crossing:
                return
            maker = min(crossing, key=m.priority)
            if maker.member == order.member:
                mode = order.stp
                if mode in (CANCEL_RESTING, CANCEL_BOTH):
                    m.orders.remove(maker)
                    self.out.append(Cancelled(seq, ts, maker.member, maker.id, m.symbol, maker.qty, SELF_TRADE, maker.side, maker.price))
                if mode in (CANCEL_INCOMING, CANCEL_BOTH):
                    self.out.append(Cancelled(seq, ts, order.member, order.id, m.symbol, order.qty, SELF_TRADE, order.side, order.price))
                    order.qty = 0
                if mode == DECREMENT:
                    cut = min(order.qty, maker.qty)
                    maker.qty -= cut
                    self.out.append(Decremented(seq, ts, maker.member, maker.id, m.symbol, cut, maker.qty))
                    if not maker.qty:
                        m.orders.remove(maker)
                    order.qty -= cut
                    self.out.append(Decremented(seq, ts, order.member, order.id, m.symbol, cut, order.qty))
                continue
            fill = min(order.qty, maker.qty)
            self.trade(m, maker, order, maker.price, fill, seq, ts)
            order.qty -= fill
            maker.qty -= fill
            if not maker.qty:
                m.orders.remove(maker)

    def trade(self, m: Market, maker: Order, taker: Order, price: int, qty: int, seq: int, ts: int) -> None:
        self.out.append(Trade(seq, ts, self.next_trade_id, m.symbol, price, qty, taker.side, maker.id,
                              maker.member, taker.id, taker.member))
        self.next_trade_id += 1
        maker.filled += qty
        taker.filled += qty
        if not m.open:
            m.open = price
        m.last = price
        m.high_price = max(m.high_price, price)
        m.low_price = min(m.low_price, price) if m.low_price else price
        m.volume += qty
        m.value += price * qty
        m.trades += 1
        if m.rules.holds:
            buyer, seller = (taker, maker) if taker.side == BUY else (maker, taker)
            self.move(buyer.member, seller.member, CASH, price * qty)
            self.move(buyer.member, "FEES", CASH, self.fee(price * qty))
            self.move(seller.member, buyer.member, m.symbol, qty)

    def move(self, source: str, target: str, asset: str, amount: int) -> None:
        self.balance[(source, asset)] = self.balance.get((source, asset), 0) - amount
        self.balance[(target, asset)] = self.balance.get((target, asset), 0) + amount
        assert self.balance[(source, asset)] >= 0

    def own_order(self, cmd: Cancel | Amend) -> Order | None:
        order = self.find(cmd.order_id)
        if order is None:
            self.reject(cmd, UNKNOWN_ORDER, order_id=cmd.order_id)
        elif order.member != cmd.member:
            self.reject(cmd, NOT_YOUR_ORDER, order_id=cmd.order_id)
        else:
            return order
        return None

    def cancel(self, cmd: Cancel) -> None:
        order = self.own_order(cmd)
        if order is not None:
            self.markets[order.symbol].orders.remove(order)
            self.out.append(Cancelled(cmd.seq, cmd.ts, order.member, order.id, order.symbol, order.qty, USER, order.side, order.price))

    def amend(self, cmd: Amend) -> None:
        if cmd.member in self.suspended:
            self.reject(cmd, MEMBER_SUSPENDED, order_id=cmd.order_id)
            return
        order = self.own_order(cmd)
        if order is None:
            return
        m = self.markets[order.symbol]
        rules = m.rules
        price, qty = cmd.price, cmd.qty
        reason = 0
        if m.phase != CONTINUOUS:
            reason = INSTRUMENT_HALTED if m.halted else MARKET_CLOSED
        elif not rules.qty_min <= qty <= rules.qty_max:
            reason = QTY_OUT_OF_RANGE
        elif qty % rules.lot:
            reason = OFF_LOT
        elif price % rules.tick:
            reason = OFF_TICK
        elif not m.low <= price <= m.high:
            reason = PRICE_OUTSIDE_BAND
        elif price == order.price and qty == order.qty:
            reason = AMEND_NO_CHANGE
        elif order.side == BUY and qty > order.qty and self.past_limit(order.member, m, qty - order.qty):
            reason = POSITION_LIMIT
        elif (rules.holds and order.side == BUY and price * qty + self.fee(price * qty) - self.cash_required(order)
              > self.available(order.member, CASH)):
            reason = INSUFFICIENT_FUNDS
        elif rules.holds and order.side == SELL and qty - order.qty > self.available(order.member, m.symbol):
            reason = INSUFFICIENT_HOLDINGS
        if reason:
            self.reject(cmd, reason, order_id=order.id)
            return
        keep = price == order.price and qty < order.qty
        self.out.append(Amended(cmd.seq, cmd.ts, order.member, order.id, m.symbol, price, qty, keep))
        if keep:
            order.qty = qty
            return
        m.orders.remove(order)
        order.price, order.qty = price, qty
        self.match(m, order, cmd.seq, cmd.ts)
        if order.qty:
            self.enter(m, order)

    def hit_order(self, cmd: HitOrder) -> None:
        m = self.markets.get(cmd.instrument)
        target = self.find(cmd.target_order_id)
        side = 3 - target.side if target is not None else BUY
        if not self.check_order(cmd, m, side, cmd.qty):
            return
        assert m is not None
        if target is None or target.symbol != m.symbol:
            self.reject(cmd, UNKNOWN_ORDER, cmd.coid)
            return
        if target.member == cmd.member:
            self.reject(cmd, TARGET_IS_OWN_ORDER, cmd.coid)
            return
        prices = sorted({o.price for o in m.orders if o.side == target.side}, reverse=target.side == BUY)
        if prices.index(target.price) >= 5:
            self.reject(cmd, TARGET_NOT_IN_BEST_LEVELS, cmd.coid)
            return
        price = target.price
        if side == BUY and self.past_limit(cmd.member, m, cmd.qty):
            self.reject(cmd, POSITION_LIMIT, cmd.coid)
            return
        if not self.can_hold(cmd, m, side, price, cmd.qty):
            return
        seq, ts = cmd.seq, cmd.ts
        order = Order(self.next_order_id, cmd.member, cmd.coid, m.symbol, side, price, cmd.qty, IOC, CANCEL_INCOMING)
        self.next_order_id += 1
        self.coids.add((cmd.member, cmd.coid))
        self.out.append(Accepted(seq, ts, cmd.member, cmd.coid, order.id, m.symbol, side, price, cmd.qty, LIMIT, IOC))
        fill = min(order.qty, target.qty)
        self.trade(m, target, order, price, fill, seq, ts)
        order.qty -= fill
        target.qty -= fill
        if not target.qty:
            m.orders.remove(target)
        if order.qty:
            self.out.append(Cancelled(seq, ts, order.member, order.id, m.symbol, order.qty, IOC_REST, order.side, order.price))

    def mass_cancel(self, cmd: MassCancel) -> None:
        if cmd.instrument and cmd.instrument not in self.markets:
            self.reject(cmd, UNKNOWN_INSTRUMENT)
            return
        if cmd.reason not in (MASS_CANCEL, DISCONNECT):
            self.reject(cmd, INVALID_FIELD)
            return
        doomed = [o for o in self.resting()
                  if (not cmd.member or o.member == cmd.member) and (not cmd.instrument or o.symbol == cmd.instrument)]
        self.cancel_all(doomed, cmd.reason, cmd.seq, cmd.ts)

    def cancel_all(self, orders: list[Order], reason: int, seq: int, ts: int) -> None:
        for o in self.in_cancel_order(orders):
            self.markets[o.symbol].orders.remove(o)
            self.out.append(Cancelled(seq, ts, o.member, o.id, o.symbol, o.qty, reason, o.side, o.price))

    # --- members -------------------------------------------------------------------------

    def suspend(self, cmd: SuspendMember) -> None:
        if not cmd.member:
            self.reject(cmd, INVALID_FIELD)
        elif cmd.member in self.suspended:
            self.reject(cmd, ALREADY_SUSPENDED)
        else:
            self.suspended.add(cmd.member)
            self.out.append(MemberStatus(cmd.seq, cmd.ts, cmd.member, True, cmd.text))
            if cmd.cancel_orders:
                self.cancel_all([o for o in self.resting() if o.member == cmd.member], SUSPENDED, cmd.seq, cmd.ts)

    def reinstate(self, cmd: ReinstateMember) -> None:
        if not cmd.member:
            self.reject(cmd, INVALID_FIELD)
        elif cmd.member not in self.suspended:
            self.reject(cmd, NOT_SUSPENDED)
        else:
            self.suspended.remove(cmd.member)
            self.out.append(MemberStatus(cmd.seq, cmd.ts, cmd.member, False, cmd.text))

    # --- halts and the day ---------------------------------------------------------------

    def named(self, cmd: Halt | Resume) -> list[Market] | None:
        if not cmd.instrument:
            return list(self.markets.values())
        if cmd.instrument not in self.markets:
            self.reject(cmd, UNKNOWN_INSTRUMENT)
            return None
        return [self.markets[cmd.instrument]]

    def halt(self, cmd: Halt) -> None:
        markets = self.named(cmd)
        if markets is None:
            return
        if all(m.halted for m in markets):
            self.reject(cmd, ALREADY_HALTED)
            return
        open_ = self.is_open(cmd.ts)
        for m in markets:
            m.halted = True
            self.set_phase(m, open_, cmd.seq, cmd.ts)
        if cmd.cancel_orders:
            self.cancel_all([o for m in markets for o in m.orders], HALT, cmd.seq, cmd.ts)

    def resume(self, cmd: Resume) -> None:
        markets = self.named(cmd)
        if markets is None:
            return
        if not any(m.halted for m in markets):
            self.reject(cmd, NOT_HALTED)
            return
        open_ = self.is_open(cmd.ts)
        for m in markets:
            m.halted = False
            self.set_phase(m, open_, cmd.seq, cmd.ts)

    def end_of_day(self, cmd: EndOfDay) -> None:
        self.expire_all(cmd.seq, cmd.ts)
        for m in self.markets.values():
            close = m.close_price()
            low, high = band(m.rules, close)
            self.out.append(DayClosed(cmd.seq, cmd.ts, m.symbol, m.open or m.ref, close, m.volume, m.value, close, low, high))
            m.start_day(close)
        self.coids.clear()
        self.day += 1

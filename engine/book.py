"""The order book of one instrument: two half-books of FIFO price levels.

The price band bounds the prices that can rest, so each side is a plain array of levels
indexed by price, not a sorted map. Each half-book numbers its levels by *key*, the
distance from its best possible price (asks: price - low; bids: high - price), so lower
keys are better on both sides and one piece of code serves both. A Python integer used
as a bitmap marks the non-empty levels; the next best level after one empties is found
with two or three big-integer operations, independent of the gap.

A level is a deque of orders in time priority. Cancelling marks the order dead (open
quantity 0) in O(1); dead orders are dropped when they reach the front or when the
level compacts itself (more dead than live). ``HalfBook.index`` is not kept: the engine
keeps one dict of live orders by id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from mypy_extensions import mypyc_attr

from engine.messages import Side
from engine.structs import OrderRecord


@mypyc_attr(acyclic=True)
class Order:
    """A live order. ``qty`` is the open quantity (0 = dead, awaiting removal).

    A plain class, not a msgspec Struct, so that mypyc compiles it to a native class:
    its fields are then read and written at fixed offsets, integers unboxed. Snapshots
    and the state hash encode it as an ``OrderRecord`` (``record()``).

    Acyclic (it refers to strings and integers only), so the compiled class is not
    tracked by the cycle collector: with a million resting orders, tracking them made
    the collector's passes over them cost as much as the matching (the ``add``
    benchmark ran at half speed)."""

    __slots__ = ("order_id", "member", "coid", "instrument", "side", "price", "qty", "filled", "tif", "stp", "hold", "ts")

    def __init__(
        self, order_id: int, member: str, coid: str, instrument: str, side: int, price: int, qty: int,
        filled: int, tif: int, stp: int, hold: int, ts: int,
    ) -> None:
        self.order_id = order_id
        self.member = member
        self.coid = coid
        self.instrument = instrument
        self.side = side
        self.price = price  # limit (for a market order: the band limit)
        self.qty = qty
        self.filled = filled
        self.tif = tif
        self.stp = stp
        self.hold = hold  # cash held for a buy's open quantity; 0 for sells (they hold qty)
        self.ts = ts  # entry time, the time of its priority

    def record(self) -> OrderRecord:
        return OrderRecord(self.order_id, self.member, self.coid, self.instrument, self.side, self.price, self.qty,
                           self.filled, self.tif, self.stp, self.hold, self.ts)

    @staticmethod
    def from_record(r: OrderRecord) -> Order:
        return Order(r.order_id, r.member, r.coid, r.instrument, r.side, r.price, r.qty, r.filled, r.tif, r.stp,
                     r.hold, r.ts)

    def __repr__(self) -> str:
        return "Order" + repr(self.record())[len("OrderRecord"):]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Order) and self.record() == other.record()

    __hash__ = None  # type: ignore[assignment]  # as a msgspec Struct: mutable, unhashable


class Level:
    """Orders at one price in time priority, in ``queue``. ``qty`` sums the open
    quantity of the live orders (so the level is empty exactly when it is 0); ``dead``
    counts the dead entries still in the queue.

    It holds its deque rather than extending deque: mypyc compiles a class that holds
    one to a native class (``qty`` and ``dead`` at fixed offsets, unboxed) but cannot
    compile a subclass of deque (it builds one that crashes in deque.__init__)."""

    __slots__ = ("queue", "qty", "dead")

    def __init__(self) -> None:
        self.queue: deque[Order] = deque()
        self.qty = 0
        self.dead = 0

    def __len__(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[Order]:
        return iter(self.queue)

    def reset(self) -> None:
        self.queue.clear()
        self.qty = self.dead = 0

    def live(self) -> int:
        return len(self.queue) - self.dead

    def compact(self) -> None:
        """Drop the dead entries; callers do it once more than half the deque
        (plus a little slack) is dead, so the cost is amortised O(1) per cancel."""
        live = [o for o in self.queue if o.qty]
        self.queue.clear()
        self.queue.extend(live)
        self.dead = 0


class HalfBook:
    """One side: levels by key (0 = best possible price), a bitmap of non-empty
    levels, and the best key (``size`` when the side is empty)."""

    __slots__ = ("side", "base", "sign", "size", "levels", "bits", "best")

    def __init__(self, side: int, low: int, high: int) -> None:
        self.side = side
        self.size = high - low + 1
        # price = base + sign * key
        self.base, self.sign = (high, -1) if side == Side.BUY else (low, 1)
        self.levels: list[Level | None] = [None] * self.size
        self.bits = 0
        self.best = self.size

    def key(self, price: int) -> int:
        return (price - self.base) * self.sign

    def price(self, key: int) -> int:
        return self.base + self.sign * key

    def add(self, order: Order, key: int) -> None:
        """Append a live order at the back of its level."""
        level = self.levels[key]
        if level is None:
            level = self.levels[key] = Level()
        if not level.qty:
            self.bits |= 1 << key
            if key < self.best:
                self.best = key
        level.queue.append(order)
        level.qty += order.qty

    def kill(self, order: Order, key: int) -> None:
        """Remove a live order that is not at the front being matched: mark it dead."""
        level = self.levels[key]
        assert level is not None and order.qty > 0
        level.qty -= order.qty
        order.qty = 0
        if not level.qty:
            level.reset()
            self.emptied(key)
            return
        level.dead += 1
        if 2 * level.dead > len(level.queue) + 16:
            level.compact()

    def emptied(self, key: int) -> None:
        """The level at key has no live orders left: unmark it, move best if needed."""
        self.bits ^= 1 << key  # the bit is set: the level was not empty
        if key == self.best:
            bits = self.bits
            self.best = (bits & -bits).bit_length() - 1 if bits else self.size

    def nth_key(self, n: int) -> int:
        """Key of the n-th best non-empty level (n = 1 is the best), size if fewer."""
        bits = self.bits
        key = self.size
        while n and bits:
            low = bits & -bits
            key = low.bit_length() - 1
            bits ^= low
            n -= 1
        return key if n == 0 else self.size

    def depth(self, n: int) -> list[tuple[int, int, int]]:
        """The best n levels as (price, open qty, live order count)."""
        out: list[tuple[int, int, int]] = []
        bits, levels = self.bits, self.levels
        while bits and len(out) < n:
            low = bits & -bits
            key = low.bit_length() - 1
            bits ^= low
            level = levels[key]
            assert level is not None
            out.append((self.price(key), level.qty, level.live()))
        return out

    def orders(self) -> Iterator[Order]:
        """Live orders, best level first, time priority within a level."""
        bits, levels = self.bits, self.levels
        while bits:
            low = bits & -bits
            bits ^= low
            level = levels[low.bit_length() - 1]
            assert level is not None
            for order in level.queue:
                if order.qty:
                    yield order

    def level_orders(self, price: int) -> list[Order]:
        key = self.key(price)
        if not 0 <= key < self.size:
            return []
        level = self.levels[key]
        return [o for o in level.queue if o.qty] if level is not None else []

    def _check(self) -> None:
        """Assert every invariant of this side (O(levels + orders))."""
        best = self.size
        for key, level in enumerate(self.levels):
            marked = bool(self.bits >> key & 1)
            if level is None:
                assert not marked, key
                continue
            live = [o for o in level.queue if o.qty]
            assert level.dead == len(level) - len(live), (key, level.dead, len(level), len(live))
            assert level.qty == sum(o.qty for o in live), key
            assert marked == bool(live), key
            assert 2 * level.dead <= len(level) + 16, key
            for o in live:
                assert o.side == self.side and o.price == self.price(key), o
                assert o.qty > 0
            if live and key < best:
                best = key
        assert self.best == best, (self.best, best)
        assert self.bits >> self.size == 0


class Book:
    """Both sides of one instrument over the price range [low, high]."""

    __slots__ = ("low", "high", "bids", "asks", "sides")

    def __init__(self, low: int, high: int) -> None:
        assert 0 < low <= high
        self.low, self.high = low, high
        self.bids = HalfBook(Side.BUY, low, high)
        self.asks = HalfBook(Side.SELL, low, high)
        # Indexed by side: sides[Side.BUY] is the bid side.
        self.sides = (self.bids, self.bids, self.asks)

    def best_bid(self) -> int:
        """Best bid price, 0 when there is none."""
        b = self.bids
        return b.price(b.best) if b.best < b.size else 0

    def best_ask(self) -> int:
        """Best ask price, 0 when there is none."""
        a = self.asks
        return a.price(a.best) if a.best < a.size else 0

    def _check(self) -> None:
        self.bids._check()
        self.asks._check()
        bid, ask = self.best_bid(), self.best_ask()
        assert not (bid and ask and bid >= ask), f"crossed book: bid {bid} >= ask {ask}"

"""The order book of one instrument: two half-books of FIFO price levels.

The price band bounds the prices that can rest, so each side is a plain array of levels
indexed by price, not a sorted map. Each half-book numbers its levels by *key*, the
distance from its best possible price (asks: price - low; bids: high - price), so lower
keys are better on both sides and one piece of code serves both. The non-empty levels are marked in a ``KeySet``, a tree of 32-bit words: the next best
level after one empties is found in a few word operations, however wide the band.

A level is a deque of orders in time priority. Cancelling marks the order dead (open
quantity 0) in O(1); dead orders are dropped when they reach the front or when the
level compacts itself (more dead than live). ``HalfBook.index`` is not kept: the engine
keeps one dict of live orders by id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final

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


@mypyc_attr(acyclic=True)
class Level:
    """Orders at one price in time priority, in ``queue``. ``qty`` sums the open
    quantity of the live orders (so the level is empty exactly when it is 0); ``dead``
    counts the dead entries still in the queue.

    It holds its deque rather than extending deque: mypyc compiles a class that holds
    one to a native class (``qty`` and ``dead`` at fixed offsets, unboxed) but cannot
    compile a subclass of deque (it builds one that crashes in deque.__init__).
    Acyclic (its deque holds orders, which refer to strings and integers only): the
    compiled class is not tracked by the cycle collector."""

    __slots__ = ("queue", "qty", "dead")

    def __init__(self) -> None:
        self.queue: deque[Order] = deque()
        self.qty = 0
        self.dead = 0

    def __len__(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[Order]:
        return iter(self.queue)

    def live(self) -> int:
        return len(self.queue) - self.dead

    def compact(self) -> None:
        """Drop the dead entries; callers do it once more than half the deque
        (plus a little slack) is dead, so the cost is amortised O(1) per cancel."""
        live = [o for o in self.queue if o.qty]
        self.queue.clear()
        self.queue.extend(live)
        self.dead = 0

CHUNK_SHIFT: Final = 8  # levels are kept in chunks of 256, made when first used
CHUNK: Final = 1 << CHUNK_SHIFT
CHUNK_MASK: Final = CHUNK - 1
WORD: Final = 32  # bits per word: values stay below 2**62, mypyc's unboxed integers
SHIFT: Final = 5
MASK: Final = 31


class KeySet:
    """A set of keys in [0, size): a tree of 32-bit words. ``layers[0]`` has a bit per
    key, each further layer a bit per non-zero word of the layer below, and the last
    layer is one word; ``count`` is the number of keys.

    The work of each operation depends on the distance it looks across, not on
    ``size``: ``add`` and ``remove`` touch one word, and a word of each layer above
    only when the word below turns from or to zero; ``next`` climbs only as many
    layers as the gap to the next key needs and comes down as many. With
    ``counting`` on, ``visits`` counts the words each operation touched (for the test
    that shows it)."""

    __slots__ = ("size", "layers", "top", "count", "counting", "visits")

    def __init__(self, size: int) -> None:
        self.size = size
        layers: list[list[int]] = []
        n = size
        while True:
            words = (n + MASK) >> SHIFT
            layers.append([0] * words)
            if words == 1:
                break
            n = words
        self.layers = layers
        self.top = len(layers) - 1
        self.count = 0
        self.counting = False
        self.visits = 0

    def __bool__(self) -> bool:
        return self.count != 0

    def __len__(self) -> int:
        return self.count

    def add(self, key: int) -> None:
        """Add a key that is not in the set."""
        self.count += 1
        touched = 0
        for words in self.layers:
            i = key >> SHIFT
            w = words[i]
            words[i] = w | 1 << (key & MASK)
            touched += 1
            if w:
                break
            key = i
        if self.counting:
            self.visits += touched

    def remove(self, key: int) -> None:
        """Remove a key that is in the set."""
        self.count -= 1
        touched = 0
        for words in self.layers:
            i = key >> SHIFT
            w = words[i] ^ 1 << (key & MASK)
            words[i] = w
            touched += 1
            if w:
                break
            key = i
        if self.counting:
            self.visits += touched

    def next(self, key: int) -> int:
        """The smallest key >= key in the set, ``size`` if there is none."""
        if not self.count:
            return self.size
        layers = self.layers
        depth = 0
        touched = 0
        found = self.size
        while depth <= self.top:
            words = layers[depth]
            i = key >> SHIFT
            if i >= len(words):
                break
            w = words[i] >> (key & MASK)
            touched += 1
            if w:
                key += (w & -w).bit_length() - 1
                while depth:  # down to the first key under the word found
                    depth -= 1
                    w = layers[depth][key]
                    touched += 1
                    key = (key << SHIFT) + (w & -w).bit_length() - 1
                found = key
                break
            key = i + 1
            depth += 1
        if self.counting:
            self.visits += touched
        return found

    def __contains__(self, key: int) -> bool:
        return bool(self.layers[0][key >> SHIFT] >> (key & MASK) & 1)


class HalfBook:
    """One side: levels by key (0 = best possible price), the set of keys of the
    non-empty levels, and the best key (``size`` when the side is empty).

    The levels are an array in chunks of 256. A level exists while orders rest at its
    price and a chunk while one of its levels exists: a side's memory, and what the
    cycle collector walks on each full pass, follow the book, not the band's width nor
    the prices used earlier in the day (one flat array of 2,000,000 slots a side, and
    every level ever used kept, made each full collection cost milliseconds)."""

    __slots__ = ("side", "base", "sign", "size", "chunks", "used", "keys", "best")

    def __init__(self, side: int, low: int, high: int) -> None:
        self.side = side
        self.size = high - low + 1
        # price = base + sign * key
        self.base, self.sign = (high, -1) if side == Side.BUY else (low, 1)
        self.chunks: list[list[Level | None] | None] = [None] * ((self.size + CHUNK_MASK) >> CHUNK_SHIFT)
        self.used: list[int] = [0] * len(self.chunks)  # levels in each chunk
        self.keys = KeySet(self.size)
        self.best = self.size

    # Not (price - base) * sign: compiled by mypyc, a product with a negative factor
    # (every bid's) fails its conservative overflow check and becomes a generic
    # multiply of boxed integers, some 200 instructions and an allocation (callgrind).
    def key(self, price: int) -> int:
        return price - self.base if self.sign > 0 else self.base - price

    def price(self, key: int) -> int:
        return self.base + key if self.sign > 0 else self.base - key

    def level(self, key: int) -> Level | None:
        """The level at key, None if no order rests there."""
        chunk = self.chunks[key >> CHUNK_SHIFT]
        return None if chunk is None else chunk[key & CHUNK_MASK]

    def level_for(self, key: int) -> Level:
        """The level at key, made (and its chunk) if needed: the caller rests an order
        there."""
        i = key >> CHUNK_SHIFT
        chunk = self.chunks[i]
        if chunk is None:
            chunk = self.chunks[i] = [None] * CHUNK
        level = chunk[key & CHUNK_MASK]
        if level is None:
            level = chunk[key & CHUNK_MASK] = Level()
            self.used[i] += 1
        return level

    def add(self, order: Order, key: int) -> None:
        """Append a live order at the back of its level."""
        level = self.level_for(key)
        if not level.qty:
            self.keys.add(key)
            if key < self.best:
                self.best = key
        level.queue.append(order)
        level.qty += order.qty

    def kill(self, order: Order, key: int) -> None:
        """Remove a live order that is not at the front being matched: mark it dead."""
        level = self.level(key)
        assert level is not None and order.qty > 0
        level.qty -= order.qty
        order.qty = 0
        if not level.qty:
            self.emptied(key)
            return
        level.dead += 1
        if 2 * level.dead > len(level.queue) + 16:
            level.compact()

    def emptied(self, key: int) -> None:
        """The level at key has no live orders left: drop it (and its chunk if it was
        the chunk's last), unmark it, move best if needed."""
        i = key >> CHUNK_SHIFT
        chunk = self.chunks[i]
        assert chunk is not None
        chunk[key & CHUNK_MASK] = None
        self.used[i] -= 1
        if not self.used[i]:
            self.chunks[i] = None
        self.keys.remove(key)
        if key == self.best:
            self.best = self.keys.next(key + 1)

    def nth_key(self, n: int) -> int:
        """Key of the n-th best non-empty level (n = 1 is the best), size if fewer."""
        keys, size = self.keys, self.size
        if n > keys.count:
            return size
        key = self.best
        while n > 1:  # the n-th key exists: no search runs past the last one
            key = keys.next(key + 1)
            n -= 1
        return key

    def depth(self, n: int) -> list[tuple[int, int, int]]:
        """The best n levels as (price, open qty, live order count)."""
        out: list[tuple[int, int, int]] = []
        keys = self.keys
        n = min(n, keys.count)
        key = self.best
        while True:
            if len(out) == n:
                return out
            if out:
                key = keys.next(key + 1)
            level = self.level(key)
            assert level is not None
            out.append((self.price(key), level.qty, level.live()))

    def orders(self) -> Iterator[Order]:
        """Live orders, best level first, time priority within a level."""
        keys = self.keys
        key = self.best
        for i in range(keys.count):
            if i:
                key = keys.next(key + 1)
            level = self.level(key)
            assert level is not None
            for order in level.queue:
                if order.qty:
                    yield order

    def depth_at(self, price: int) -> tuple[int, int]:
        """(open quantity, live orders) at a price; (0, 0) when none rest there."""
        key = self.key(price)
        if not 0 <= key < self.size:
            return 0, 0
        level = self.level(key)
        return (level.qty, level.live()) if level is not None and level.qty else (0, 0)

    def level_orders(self, price: int) -> list[Order]:
        key = self.key(price)
        if not 0 <= key < self.size:
            return []
        level = self.level(key)
        return [o for o in level.queue if o.qty] if level is not None else []

    def _check(self) -> None:
        """Assert every invariant of this side (O(levels + orders))."""
        best = self.size
        for key in range(self.size):
            level = self.level(key)
            marked = key in self.keys
            if level is None:
                assert not marked, key
                continue
            assert level.qty, key  # a level exists only while orders rest there
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
        for i, chunk in enumerate(self.chunks):
            made = 0 if chunk is None else sum(lv is not None for lv in chunk)
            assert self.used[i] == made and (chunk is None) == (made == 0), (i, self.used[i], made)
        assert self.keys.next(0) == best
        for depth, words in enumerate(self.keys.layers[1:]):
            below = self.keys.layers[depth]
            for i, w in enumerate(words):
                for b in range(WORD):
                    j = i * WORD + b
                    assert bool(w >> b & 1) == (j < len(below) and below[j] != 0), (depth, i, b)


class Book:
    """Both sides of one instrument over the price range [low, high]."""

    __slots__ = ("low", "high", "bids", "asks", "sides")

    def __init__(self, low: int, high: int) -> None:
        assert 0 < low <= high
        self.low, self.high = low, high
        self.bids = HalfBook(Side.BUY, low, high)
        self.asks = HalfBook(Side.SELL, low, high)
        # Indexed by side: sides[Side.BUY] is the bid side. A list, not a tuple:
        # compiled, a tuple of fixed length is kept unboxed, and indexing it with a
        # variable built a new tuple object each time (callgrind).
        self.sides: list[HalfBook] = [self.bids, self.bids, self.asks]

    def best_bid(self) -> int | None:
        """Best bid price, None when there is none."""
        b = self.bids
        return b.price(b.best) if b.best < b.size else None

    def best_ask(self) -> int | None:
        """Best ask price, None when there is none."""
        a = self.asks
        return a.price(a.best) if a.best < a.size else None

    def _check(self) -> None:
        self.bids._check()
        self.asks._check()
        bid, ask = self.best_bid(), self.best_ask()
        assert bid is None or ask is None or bid < ask, f"crossed book: bid {bid} >= ask {ask}"

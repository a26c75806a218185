"""The book's levels: FIFO order, dead entries left by cancels, and the bound on them."""

from __future__ import annotations

from engine import Cancel, Side
from engine.book import Book, HalfBook, Order
from tests.engine.harness import Venue, cx

BUY, SELL = Side.BUY, Side.SELL


def order(oid: int, side: int, price: int, qty: int = 1) -> Order:
    return Order(oid, "A", str(oid), "X", side, price, qty, 0, 1, 1, 0, 0)


def test_keys_number_levels_from_the_best_possible_price() -> None:
    book = Book(100, 200)
    assert book.bids.key(200) == 0 and book.bids.price(0) == 200
    assert book.asks.key(100) == 0 and book.asks.price(0) == 100
    assert book.bids.size == book.asks.size == 101


def test_best_moves_as_levels_fill_and_empty() -> None:
    half = HalfBook(SELL, 100, 200)
    a, b, c = order(1, SELL, 150), order(2, SELL, 120), order(3, SELL, 180)
    for o in (a, b, c):
        half.add(o, half.key(o.price))
    assert half.price(half.best) == 120
    assert half.nth_key(2) == half.key(150) and half.nth_key(4) == half.size
    half.kill(b, half.key(120))
    assert half.price(half.best) == 150
    half.kill(a, half.key(150))
    half.kill(c, half.key(180))
    assert half.best == half.size and not half.keys
    half._check()


def test_killing_many_orders_of_a_level_compacts_it() -> None:
    half = HalfBook(BUY, 100, 200)
    orders = [order(i, BUY, 150) for i in range(100)]
    for o in orders:
        half.add(o, half.key(150))
    for o in orders[:90]:
        half.kill(o, half.key(150))
        half._check()
    level = half.level(half.key(150))
    assert level is not None
    dead = len(level) - 10
    assert dead <= 10 + 16  # compacted: at most as many dead entries as live, plus slack
    assert [o.order_id for o in half.level_orders(150)] == list(range(90, 100))


def test_matching_keeps_the_bound_on_dead_entries() -> None:
    # HalfBook._check() bounds a level's dead entries by its live ones (plus slack);
    # kill() compacts to keep that bound. Cancels at the back of a level leave dead
    # entries behind the live ones; fills then pop live orders off the front, so
    # unless the match loop compacts too the bound breaks: 20 live and 20 dead, then
    # 18 filled leaves 2 live and 20 dead.
    v = Venue([cx("X", 1_000)])
    v.fund("A", cash=10**9)
    v.fund("B", X=10**6)
    ids = [v.rest("A", BUY, 1, 1_000) for _ in range(40)]
    for oid in ids[20:]:
        v.send(Cancel("A", oid))
    v.sell("B", 18, 1_000)  # Venue.send runs Engine._check() after it
    assert v.ids(price=1_000) == ids[18:20]

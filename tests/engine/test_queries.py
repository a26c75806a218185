"""Queries: best bid and offer, depth (L2), the orders of one level (L3), one order."""

from __future__ import annotations

from engine import Amend, Cancel, Side
from tests.engine.harness import Venue, cx

BUY, SELL = Side.BUY, Side.SELL


def venue() -> Venue:
    v = Venue([cx("CEA24", 10_000)])
    for m in ("A", "B"):
        v.fund(m, cash=10**9, CEA24=10_000)
    return v


def test_an_empty_book() -> None:
    v = venue()
    assert v.engine.bbo("CEA24") == (0, 0, 0, 0)
    assert v.engine.depth("CEA24") == ([], [])
    assert v.engine.level_orders("CEA24", BUY, 10_000) == []
    assert v.engine.order(1) is None


def test_depth_aggregates_levels_best_first() -> None:
    v = venue()
    for price, qty in [(9_990, 5), (9_980, 1), (9_990, 7), (9_970, 2), (9_960, 3), (9_950, 4), (9_940, 9)]:
        v.rest("A", BUY, qty, price)
    for price, qty in [(10_020, 3), (10_010, 2), (10_010, 1)]:
        v.rest("B", SELL, qty, price)
    bids, asks = v.engine.depth("CEA24")
    assert bids == [(9_990, 12, 2), (9_980, 1, 1), (9_970, 2, 1), (9_960, 3, 1), (9_950, 4, 1)]
    assert asks == [(10_010, 3, 2), (10_020, 3, 1)]
    assert v.engine.depth("CEA24", 2) == (bids[:2], asks)
    assert v.engine.depth("CEA24", 10)[0][-1] == (9_940, 9, 1)
    assert v.engine.bbo("CEA24") == (9_990, 12, 10_010, 3)


def test_level_orders_in_time_priority() -> None:
    v = venue()
    ids = [v.rest(m, SELL, q, 10_010) for m, q in [("A", 1), ("B", 2), ("A", 3)]]
    orders = v.engine.level_orders("CEA24", SELL, 10_010)
    assert [(o.order_id, o.member, o.qty) for o in orders] == [(ids[0], "A", 1), (ids[1], "B", 2), (ids[2], "A", 3)]
    v.send(Cancel("B", ids[1]))
    v.send(Amend("A", ids[0], 10_010, 5))
    assert v.ids(side=SELL, price=10_010) == [ids[2], ids[0]]
    assert v.engine.level_orders("CEA24", BUY, 10_010) == []
    assert v.engine.level_orders("CEA24", SELL, 10_011) == []  # a price nobody is at
    assert v.engine.level_orders("CEA24", SELL, 50_000) == []  # outside the band


def test_order_shows_an_open_order() -> None:
    v = venue()
    oid = v.rest("A", SELL, 10, 10_010, coid="mine")
    v.buy("B", 4, 10_010)
    order = v.engine.order(oid)
    assert order is not None
    assert (order.member, order.coid, order.instrument, order.side, order.price, order.qty, order.filled) == (
        "A", "mine", "CEA24", SELL, 10_010, 6, 4,
    )
    v.buy("B", 6, 10_010)
    assert v.engine.order(oid) is None


def test_best_prices_of_an_empty_side_are_none_and_depth_at_a_price() -> None:
    v = venue()
    assert v.engine.best_bid("CEA24") is None and v.engine.best_ask("CEA24") is None
    a = v.rest("A", BUY, 5, 9_990)
    v.rest("A", BUY, 7, 9_990)
    v.rest("B", SELL, 3, 10_010)
    assert (v.engine.best_bid("CEA24"), v.engine.best_ask("CEA24")) == (9_990, 10_010)
    assert v.engine.depth_at("CEA24", BUY, 9_990) == (12, 2)
    assert v.engine.depth_at("CEA24", SELL, 10_010) == (3, 1)
    assert v.engine.depth_at("CEA24", SELL, 9_990) == (0, 0)  # the other side's price
    assert v.engine.depth_at("CEA24", BUY, 9_000) == (0, 0)  # the band's edge, nothing there
    assert v.engine.depth_at("CEA24", BUY, 1) == (0, 0)  # outside the band
    v.send(Cancel("A", a))
    assert v.engine.depth_at("CEA24", BUY, 9_990) == (7, 1)
    v.sell("B", 7, 9_990)
    assert v.engine.best_bid("CEA24") is None and v.engine.depth_at("CEA24", BUY, 9_990) == (0, 0)

"""New orders: limit and market, DAY, IOC and FOK, price-time priority, fill prices."""

from __future__ import annotations

import pytest

from engine import (
    Accepted,
    Cancelled,
    CancelReason,
    OrdType,
    Side,
    TimeInForce,
    Trade,
)
from tests.engine.harness import Venue, cx, kinds, only

BUY, SELL = Side.BUY, Side.SELL
MARKET = OrdType.MARKET
DAY, IOC, FOK = TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK


@pytest.fixture
def v() -> Venue:
    venue = Venue([cx("CEA24", 10_000)])  # band [9000, 11000]
    for m in ("A", "B", "C", "D"):
        venue.fund(m, cash=100_000_000, CEA24=10_000)
    return venue


def test_a_limit_order_rests_and_is_acknowledged(v: Venue) -> None:
    out = v.buy("A", 10, 9_990, coid="x1")
    assert len(out) == 1
    ack = out[0]
    assert isinstance(ack, Accepted)
    assert (ack.member, ack.coid, ack.instrument, ack.side, ack.price, ack.qty) == ("A", "x1", "CEA24", BUY, 9_990, 10)
    assert (ack.ord_type, ack.tif) == (OrdType.LIMIT, DAY)
    assert ack.order_id == 1
    assert (ack.seq, ack.ts) == (2, 0)  # the venue's opening Tick was seq 1
    assert v.engine.bbo("CEA24") == (9_990, 10, 0, 0)
    order = v.engine.order(ack.order_id)
    assert order is not None and (order.qty, order.price, order.member) == (10, 9_990, "A")


def test_order_ids_and_trade_ids_count_up(v: Venue) -> None:
    ids = [v.rest("A", BUY, 1, 9_990 - i) for i in range(3)]
    assert ids == [1, 2, 3]
    out = v.sell("B", 3, 9_000)
    assert [t.trade_id for t in only(out, Trade)] == [1, 2, 3]
    assert only(out, Accepted)[0].order_id == 4


def test_price_time_priority_and_fill_at_the_resting_price(v: Venue) -> None:
    s1 = v.rest("A", SELL, 5, 10_010)
    s2 = v.rest("B", SELL, 5, 10_000)
    s3 = v.rest("C", SELL, 5, 10_000)
    out = v.buy("D", 12, 10_020)
    trades = only(out, Trade)
    assert [(t.maker_order_id, t.price, t.qty) for t in trades] == [(s2, 10_000, 5), (s3, 10_000, 5), (s1, 10_010, 2)]
    for t in trades:
        assert t.aggressor == BUY and t.taker_member == "D" and t.buyer == "D"
        assert t.seller == t.maker_member
    assert v.engine.bbo("CEA24") == (0, 0, 10_010, 3)
    assert kinds(out) == ["Accepted", "Trade", "Trade", "Trade"]
    assert v.engine.order(s1).qty == 3  # type: ignore[union-attr]
    assert v.engine.order(s2) is None


def test_a_sell_that_crosses_trades_at_the_bid(v: Venue) -> None:
    b1 = v.rest("A", BUY, 4, 10_050)
    out = v.sell("B", 4, 9_900)
    (t,) = only(out, Trade)
    assert (t.price, t.qty, t.maker_order_id, t.aggressor) == (10_050, 4, b1, SELL)
    assert t.buyer == "A" and t.seller == "B"


def test_the_unfilled_rest_of_a_day_order_rests_at_its_limit(v: Venue) -> None:
    v.rest("A", SELL, 3, 10_000)
    out = v.buy("B", 10, 10_005)
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.engine.bbo("CEA24") == (10_005, 7, 0, 0)
    order = v.engine.order(only(out, Accepted)[0].order_id)
    assert order is not None and order.qty == 7 and order.filled == 3


def test_orders_at_the_same_price_that_do_not_cross_both_rest(v: Venue) -> None:
    v.rest("A", BUY, 1, 10_000)
    v.rest("B", SELL, 1, 10_001)
    assert v.engine.bbo("CEA24") == (10_000, 1, 10_001, 1)


def test_ioc_trades_what_it_can_and_cancels_the_rest(v: Venue) -> None:
    v.rest("A", SELL, 3, 10_000)
    v.rest("A", SELL, 3, 10_100)
    out = v.buy("B", 10, 10_050, tif=IOC)
    assert kinds(out) == ["Accepted", "Trade", "Cancelled"]
    cancel = out[-1]
    assert isinstance(cancel, Cancelled) and cancel.qty == 7 and cancel.reason == CancelReason.IOC_REST
    assert v.engine.bbo("CEA24") == (0, 0, 10_100, 3)


def test_ioc_that_does_not_cross_is_cancelled_whole(v: Venue) -> None:
    v.rest("A", SELL, 3, 10_000)
    out = v.buy("B", 10, 9_990, tif=IOC)
    assert kinds(out) == ["Accepted", "Cancelled"]
    assert out[1].qty == 10  # type: ignore[attr-defined]
    assert v.held("B") == 0


def test_fok_fills_across_levels_when_it_can_fill_whole(v: Venue) -> None:
    v.rest("A", SELL, 3, 10_000)
    v.rest("B", SELL, 4, 10_010)
    v.rest("C", SELL, 9, 10_020)
    out = v.buy("D", 10, 10_020, tif=FOK)
    assert kinds(out) == ["Accepted", "Trade", "Trade", "Trade"]
    assert [t.qty for t in only(out, Trade)] == [3, 4, 3]
    assert v.engine.bbo("CEA24") == (0, 0, 10_020, 6)


def test_fok_exactly_the_available_quantity_fills(v: Venue) -> None:
    v.rest("A", SELL, 3, 10_000)
    v.rest("B", SELL, 4, 10_010)
    out = v.buy("D", 7, 10_010, tif=FOK)
    assert sum(t.qty for t in only(out, Trade)) == 7
    assert v.engine.bbo("CEA24") == (0, 0, 0, 0)


def test_fok_that_cannot_fill_whole_is_killed_and_trades_nothing(v: Venue) -> None:
    v.rest("A", SELL, 3, 10_000)
    v.rest("B", SELL, 4, 10_010)
    v.rest("C", SELL, 9, 10_030)  # beyond the limit: does not count
    before = v.engine.depth("CEA24")
    out = v.buy("D", 8, 10_020, tif=FOK)
    assert kinds(out) == ["Accepted", "Cancelled"]
    assert out[1].qty == 8 and out[1].reason == CancelReason.IOC_REST  # type: ignore[attr-defined]
    assert v.engine.depth("CEA24") == before
    assert v.held("D") == 0


def test_fok_sell(v: Venue) -> None:
    v.rest("A", BUY, 5, 10_000)
    out = v.sell("B", 6, 9_000, tif=FOK)
    assert kinds(out) == ["Accepted", "Cancelled"]
    out = v.sell("B", 5, 9_000, tif=FOK)
    assert kinds(out) == ["Accepted", "Trade"]


@pytest.mark.parametrize("tif", [DAY, IOC, FOK])
@pytest.mark.parametrize(("side", "band_price"), [(BUY, 11_000), (SELL, 9_000)])
def test_a_market_order_on_an_empty_book_is_cancelled(v: Venue, tif: int, side: int, band_price: int) -> None:
    out = v.order("A", side, 10, 0, ord_type=MARKET, tif=tif)
    assert kinds(out) == ["Accepted", "Cancelled"]
    ack, cancel = out
    assert isinstance(ack, Accepted) and ack.price == band_price and ack.ord_type == MARKET and ack.tif == tif
    assert isinstance(cancel, Cancelled) and cancel.qty == 10 and cancel.reason == CancelReason.IOC_REST
    assert v.engine.bbo("CEA24") == (0, 0, 0, 0)
    assert v.held("A") == 0 and v.held("A", "CEA24") == 0


@pytest.mark.parametrize("tif", [DAY, IOC])
def test_a_market_order_sweeps_to_the_band_and_never_rests(v: Venue, tif: int) -> None:
    v.rest("A", SELL, 2, 9_000)  # the lowest price of the band
    v.rest("B", SELL, 2, 10_500)
    v.rest("C", SELL, 2, 11_000)  # the highest
    out = v.buy("D", 10, 12_345, ord_type=MARKET, tif=tif)  # the price is ignored
    assert [t.price for t in only(out, Trade)] == [9_000, 10_500, 11_000]
    assert kinds(out)[-1] == "Cancelled" and out[-1].qty == 4  # type: ignore[attr-defined]
    assert v.engine.bbo("CEA24") == (0, 0, 0, 0)


def test_a_market_sell_trades_down_to_the_band(v: Venue) -> None:
    v.rest("A", BUY, 2, 9_000)
    v.rest("B", BUY, 2, 10_000)
    out = v.sell("C", 3, ord_type=MARKET, tif=DAY)
    assert [(t.price, t.qty) for t in only(out, Trade)] == [(10_000, 2), (9_000, 1)]
    assert kinds(out)[-1] == "Trade"  # filled whole, nothing to cancel
    assert v.engine.bbo("CEA24") == (9_000, 1, 0, 0)


def test_market_fok(v: Venue) -> None:
    v.rest("A", SELL, 2, 10_000)
    out = v.buy("B", 3, ord_type=MARKET, tif=FOK)
    assert kinds(out) == ["Accepted", "Cancelled"]
    out = v.buy("B", 2, ord_type=MARKET, tif=FOK)
    assert kinds(out) == ["Accepted", "Trade"]


def test_the_book_is_never_crossed_after_a_partial_fill(v: Venue) -> None:
    v.rest("A", SELL, 5, 10_000)
    v.rest("A", SELL, 5, 10_001)
    v.buy("B", 7, 10_000)
    bid, _, ask, _ = v.engine.bbo("CEA24")
    assert (bid, ask) == (10_000, 10_001)


def test_day_statistics_follow_trades(v: Venue) -> None:
    v.rest("A", SELL, 5, 10_000)
    v.rest("A", SELL, 5, 10_200)
    v.buy("B", 7, 10_200)
    v.rest("C", BUY, 1, 9_500)
    v.sell("D", 1, 9_500)
    stats = v.engine.markets["CEA24"].stats()
    assert stats["open"] == 10_000 and stats["last"] == 9_500
    assert stats["high"] == 10_200 and stats["low"] == 9_500
    assert stats["volume"] == 8 and stats["value"] == 5 * 10_000 + 2 * 10_200 + 9_500
    assert stats["trades"] == 3
    assert (stats["ref_price"], stats["band_low"], stats["band_high"]) == (10_000, 9_000, 11_000)


def test_two_instruments_have_separate_books() -> None:
    v = Venue([cx("CEA23", 8_000), cx("CEA24", 10_000)])
    for m in ("A", "B"):
        v.fund(m, cash=10**9, CEA23=100, CEA24=100)
    v.rest("A", SELL, 5, 8_000, instrument="CEA23")
    out = v.buy("B", 5, 10_000, instrument="CEA24")
    assert kinds(out) == ["Accepted"]  # does not trade with the other vintage
    assert v.engine.bbo("CEA23") == (0, 0, 8_000, 5)
    assert v.engine.bbo("CEA24") == (10_000, 5, 0, 0)
    out = v.buy("B", 5, 8_000, instrument="CEA23")
    assert only(out, Trade)[0].instrument == "CEA23"
    assert v.ledger is not None and v.ledger.balance[("B", "CEA23")] == 105

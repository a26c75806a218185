"""Cancel, amend (time priority kept or lost, holds adjusted, trading on a price change)
and mass cancel by member, instrument, or both."""

from __future__ import annotations

import pytest

from engine import (
    Amend,
    Amended,
    Cancel,
    Cancelled,
    CancelReason,
    Halt,
    MassCancel,
    Reason,
    Side,
    Trade,
)
from tests.engine.harness import Venue, cx, kinds, only

BUY, SELL = Side.BUY, Side.SELL


@pytest.fixture
def v() -> Venue:
    venue = Venue([cx("CEA24", 10_000), cx("CEA23", 8_000)])
    for m in ("A", "B", "C"):
        venue.fund(m, cash=100_000_000, CEA24=10_000, CEA23=10_000)
    return venue


# --- cancel ----------------------------------------------------------------------------


def test_cancel_removes_the_order_and_releases_its_hold(v: Venue) -> None:
    oid = v.rest("A", BUY, 10, 9_990)
    assert v.held("A") == 99_900
    out = v.send(Cancel("A", oid))
    assert kinds(out) == ["Cancelled"]
    c = out[0]
    assert isinstance(c, Cancelled)
    assert (c.member, c.order_id, c.instrument, c.qty, c.reason) == ("A", oid, "CEA24", 10, CancelReason.USER)
    assert (c.side, c.price) == (BUY, 9_990)  # what a consumer keeping the book needs
    assert v.held("A") == 0
    assert v.engine.order(oid) is None
    assert v.engine.bbo("CEA24") == (0, 0, 0, 0)
    v.reject(Cancel("A", oid), Reason.UNKNOWN_ORDER)


def test_cancel_a_sell_releases_allowances(v: Venue) -> None:
    oid = v.rest("A", SELL, 10, 10_010)
    assert v.held("A", "CEA24") == 10
    v.send(Cancel("A", oid))
    assert v.held("A", "CEA24") == 0


def test_cancel_a_partially_filled_order_reports_its_open_quantity(v: Venue) -> None:
    oid = v.rest("A", SELL, 10, 10_000)
    v.buy("B", 4, 10_000)
    out = v.send(Cancel("A", oid))
    assert out[0].qty == 6  # type: ignore[attr-defined]
    assert (out[0].side, out[0].price) == (SELL, 10_000)  # type: ignore[attr-defined]


def test_cancel_in_the_middle_of_a_level_keeps_the_others_in_order(v: Venue) -> None:
    ids = [v.rest(m, BUY, 1, 9_990) for m in "ABCAB"]
    v.send(Cancel("C", ids[2]))
    v.send(Cancel("A", ids[0]))
    assert v.ids(price=9_990) == [ids[1], ids[3], ids[4]]
    assert v.engine.depth("CEA24")[0] == [(9_990, 3, 3)]


def test_cancel_is_allowed_while_halted(v: Venue) -> None:
    oid = v.rest("A", BUY, 10, 9_990)
    v.send(Halt("CEA24"))
    assert kinds(v.send(Cancel("A", oid))) == ["Cancelled"]


# --- amend -----------------------------------------------------------------------------


def test_amend_quantity_down_keeps_time_priority(v: Venue) -> None:
    a, b, c = (v.rest(m, BUY, 10, 9_990) for m in "ABC")
    out = v.send(Amend("A", a, 9_990, 4))
    assert kinds(out) == ["Amended"]
    am = out[0]
    assert isinstance(am, Amended)
    assert (am.order_id, am.price, am.qty, am.priority_kept, am.instrument) == (a, 9_990, 4, True, "CEA24")
    assert v.ids(price=9_990) == [a, b, c]
    assert v.engine.depth("CEA24")[0] == [(9_990, 24, 3)]
    assert v.held("A") == 4 * 9_990
    # and the first to trade is still A
    out = v.sell("C", 5, 9_990)
    assert [(t.maker_order_id, t.qty) for t in only(out, Trade)] == [(a, 4), (b, 1)]


def test_amend_quantity_up_loses_time_priority(v: Venue) -> None:
    a, b, c = (v.rest(m, BUY, 10, 9_990) for m in "ABC")
    out = v.send(Amend("A", a, 9_990, 11))
    assert kinds(out) == ["Amended"] and out[0].priority_kept is False  # type: ignore[attr-defined]
    assert v.ids(price=9_990) == [b, c, a]
    assert v.held("A") == 11 * 9_990
    assert v.engine.order(a).qty == 11  # type: ignore[union-attr]


def test_amend_price_loses_time_priority_even_back_to_the_same_price(v: Venue) -> None:
    a, b = (v.rest(m, SELL, 10, 10_010) for m in "AB")
    v.send(Amend("A", a, 10_020, 10))
    assert v.ids(side=SELL, price=10_010) == [b]
    assert v.ids(side=SELL, price=10_020) == [a]
    v.send(Amend("A", a, 10_010, 10))
    assert v.ids(side=SELL, price=10_010) == [b, a]
    assert v.ids(side=SELL, price=10_020) == []
    assert v.engine.bbo("CEA24") == (0, 0, 10_010, 20)


def test_amend_price_and_quantity_down_loses_priority(v: Venue) -> None:
    a, b = (v.rest(m, BUY, 10, 9_990) for m in "AB")
    v.send(Amend("A", a, 9_995, 5))
    v.send(Amend("A", a, 9_990, 4))
    assert v.ids(price=9_990) == [b, a]


def test_an_amend_that_crosses_trades_as_an_incoming_order(v: Venue) -> None:
    s1 = v.rest("B", SELL, 3, 10_000)
    s2 = v.rest("C", SELL, 3, 10_005)
    buy = v.rest("A", BUY, 10, 9_990)
    out = v.send(Amend("A", buy, 10_005, 8))
    assert kinds(out) == ["Amended", "Trade", "Trade"]
    trades = only(out, Trade)
    assert [(t.maker_order_id, t.price, t.qty, t.taker_order_id, t.aggressor) for t in trades] == [
        (s1, 10_000, 3, buy, BUY), (s2, 10_005, 3, buy, BUY),
    ]
    order = v.engine.order(buy)
    assert order is not None and order.qty == 2 and order.price == 10_005 and order.filled == 6
    assert v.held("A") == 2 * 10_005
    assert v.engine.bbo("CEA24") == (10_005, 2, 0, 0)


def test_an_amend_that_fills_whole_leaves_nothing(v: Venue) -> None:
    v.rest("B", BUY, 5, 10_000)
    sell = v.rest("A", SELL, 5, 10_010)
    out = v.send(Amend("A", sell, 9_990, 5))
    assert kinds(out) == ["Amended", "Trade"]
    assert only(out, Trade)[0].price == 10_000
    assert v.engine.order(sell) is None
    v.reject(Cancel("A", sell), Reason.UNKNOWN_ORDER)


def test_amend_quantity_is_the_new_open_quantity_of_a_partly_filled_order(v: Venue) -> None:
    oid = v.rest("A", SELL, 10, 10_000)
    v.buy("B", 6, 10_000)
    assert v.held("A", "CEA24") == 4
    out = v.send(Amend("A", oid, 10_000, 2))
    assert out[0].qty == 2 and out[0].priority_kept  # type: ignore[attr-defined]
    assert v.held("A", "CEA24") == 2
    out = v.send(Amend("A", oid, 10_000, 8))
    assert v.held("A", "CEA24") == 8
    order = v.engine.order(oid)
    assert order is not None and (order.qty, order.filled) == (8, 6)
    v.reject(Amend("A", oid, 10_000, 8), Reason.AMEND_NO_CHANGE)


def test_amend_adjusts_the_cash_hold(v: Venue) -> None:
    v.fund("P", cash=100_000)
    oid = v.rest("P", BUY, 10, 9_000)
    assert v.held("P") == 90_000
    v.reject(Amend("P", oid, 10_001, 10), Reason.INSUFFICIENT_FUNDS)  # needs 100,010
    v.send(Amend("P", oid, 10_000, 10))
    assert v.held("P") == 100_000 and v.available("P") == 0
    v.send(Amend("P", oid, 9_500, 10))
    assert v.held("P") == 95_000
    v.send(Amend("P", oid, 9_500, 3))
    assert v.held("P") == 28_500


def test_amend_adjusts_the_allowance_hold(v: Venue) -> None:
    v.fund("P", CEA24=10)
    oid = v.rest("P", SELL, 6, 10_500)
    v.reject(Amend("P", oid, 10_500, 11), Reason.INSUFFICIENT_HOLDINGS)
    v.send(Amend("P", oid, 10_400, 10))
    assert v.held("P", "CEA24") == 10
    v.send(Amend("P", oid, 10_400, 1))
    assert v.held("P", "CEA24") == 1


def test_amend_of_an_order_in_the_other_instrument_uses_its_rules(v: Venue) -> None:
    oid = v.rest("A", BUY, 10, 8_000, instrument="CEA23")  # band [7200, 8800]
    v.reject(Amend("A", oid, 9_000, 10), Reason.PRICE_OUTSIDE_BAND)
    assert kinds(v.send(Amend("A", oid, 8_800, 10))) == ["Amended"]


# --- mass cancel -------------------------------------------------------------------------


def book(v: Venue) -> dict[str, int]:
    """One order of each member in each instrument; {member+symbol: order id}."""
    ids = {}
    for m in "ABC":
        ids[m + "24"] = v.rest(m, BUY, 1, 9_990, instrument="CEA24")
        ids[m + "23"] = v.rest(m, SELL, 1, 8_010, instrument="CEA23")
    return ids


@pytest.mark.parametrize(
    ("member", "instrument", "gone"),
    [
        ("A", "", {"A24", "A23"}),
        ("", "CEA23", {"A23", "B23", "C23"}),
        ("B", "CEA24", {"B24"}),
        ("", "", {"A24", "A23", "B24", "B23", "C24", "C23"}),
        ("Z", "", set()),
    ],
)
def test_mass_cancel_scopes(v: Venue, member: str, instrument: str, gone: set[str]) -> None:
    ids = book(v)
    out = v.send(MassCancel(member, instrument))
    cancelled = {c.order_id for c in only(out, Cancelled)}
    assert cancelled == {ids[k] for k in gone}
    assert len(out) == len(gone)  # nothing else; a mass cancel of nothing emits nothing
    assert all(c.reason == CancelReason.MASS_CANCEL for c in only(out, Cancelled))
    for key, oid in ids.items():
        assert (v.engine.order(oid) is None) == (key in gone)
    assert v.held("A") == (0 if "A24" in gone else 9_990)


def test_mass_cancel_for_a_disconnect_says_so(v: Venue) -> None:
    book(v)
    out = v.send(MassCancel("A", "", CancelReason.DISCONNECT))
    assert {c.reason for c in only(out, Cancelled)} == {CancelReason.DISCONNECT}


def test_mass_cancel_reports_open_quantities(v: Venue) -> None:
    oid = v.rest("A", SELL, 10, 10_000)
    v.buy("B", 3, 10_000)
    out = v.send(MassCancel("A"))
    assert [(c.order_id, c.qty) for c in only(out, Cancelled)] == [(oid, 7)]


def test_mass_cancel_goes_in_order_id_order(v: Venue) -> None:
    # Mass cancels go in order id order, whatever the orders' places in the book: an
    # amend that loses priority must not move order 1 behind order 2.
    first = v.rest("A", BUY, 5, 9_990)
    second = v.rest("A", BUY, 5, 9_990)
    v.send(Amend("A", first, 9_980, 5))
    out = v.send(MassCancel("A"))
    assert [c.order_id for c in only(out, Cancelled)] == [first, second]

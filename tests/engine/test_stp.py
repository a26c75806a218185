"""Self-trade prevention: the four modes, the default, per-member modes, FOK and amend."""

from __future__ import annotations

import pytest

from engine import (
    Accepted,
    Amend,
    Cancelled,
    CancelReason,
    Decremented,
    OrdType,
    Side,
    Stp,
    TimeInForce,
    Trade,
)
from tests.engine.harness import Venue, cx, kinds, only

BUY, SELL = Side.BUY, Side.SELL
SELF = CancelReason.SELF_TRADE


def venue(**kw: object) -> Venue:
    v = Venue([cx("CEA24", 10_000)], **kw)  # type: ignore[arg-type]
    for m in ("A", "B", "C"):
        v.fund(m, cash=100_000_000, CEA24=10_000)
    return v


def test_cancel_resting_cancels_own_orders_and_trades_on() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    other = v.rest("B", SELL, 10, 10_000)
    out = v.buy("A", 15, 10_000, stp=Stp.CANCEL_RESTING)
    assert kinds(out) == ["Accepted", "Cancelled", "Trade"]
    cancel = out[1]
    assert isinstance(cancel, Cancelled) and (cancel.order_id, cancel.qty, cancel.reason) == (own, 10, SELF)
    trade = out[2]
    assert isinstance(trade, Trade) and (trade.maker_order_id, trade.qty) == (other, 10)
    assert v.engine.bbo("CEA24") == (10_000, 5, 0, 0)  # the rest of the incoming buy rests
    assert v.held("A", "CEA24") == 0


def test_cancel_incoming_cancels_the_new_order_and_keeps_the_resting_one() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    out = v.buy("A", 15, 10_000, stp=Stp.CANCEL_INCOMING)
    assert kinds(out) == ["Accepted", "Cancelled"]
    ack, cancel = out
    assert isinstance(cancel, Cancelled)
    assert (cancel.order_id, cancel.qty, cancel.reason) == (ack.order_id, 15, SELF)  # type: ignore[attr-defined]
    assert v.ids(side=SELL, price=10_000) == [own]
    assert v.held("A") == 0


def test_cancel_both() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    v.rest("A", SELL, 10, 10_000)  # behind it: untouched
    out = v.buy("A", 15, 10_000, stp=Stp.CANCEL_BOTH)
    assert kinds(out) == ["Accepted", "Cancelled", "Cancelled"]
    assert [(c.order_id, c.qty, c.reason) for c in only(out, Cancelled)] == [
        (own, 10, SELF), (out[0].order_id, 15, SELF),  # type: ignore[attr-defined]
    ]
    assert v.engine.bbo("CEA24") == (0, 0, 10_000, 10)


def test_decrement_takes_the_smaller_quantity_off_both() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    other = v.rest("B", SELL, 10, 10_000)
    out = v.buy("A", 15, 10_000, stp=Stp.DECREMENT)
    assert kinds(out) == ["Accepted", "Decremented", "Decremented", "Trade"]
    incoming = out[0].order_id  # type: ignore[attr-defined]
    d1, d2 = only(out, Decremented)
    assert (d1.order_id, d1.qty, d1.qty_left) == (own, 10, 0)
    assert (d2.order_id, d2.qty, d2.qty_left) == (incoming, 10, 5)
    trade = only(out, Trade)[0]
    assert (trade.maker_order_id, trade.qty) == (other, 5)
    assert v.engine.bbo("CEA24") == (0, 0, 10_000, 5)
    assert v.held("A", "CEA24") == 0 and v.held("A") == 0
    assert v.ledger is not None and v.ledger.balance[("A", "CEA24")] == 10_005


def test_decrement_leaves_the_resting_order_with_its_priority() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    other = v.rest("B", SELL, 10, 10_000)
    out = v.buy("A", 4, 10_000, stp=Stp.DECREMENT)
    assert kinds(out) == ["Accepted", "Decremented", "Decremented"]  # the incoming order is used up
    assert only(out, Decremented)[1].qty_left == 0
    assert v.ids(side=SELL, price=10_000) == [own, other]
    assert v.engine.order(own).qty == 6  # type: ignore[union-attr]
    assert v.held("A", "CEA24") == 6 and v.held("A") == 0


def test_decrement_releases_a_resting_buys_cash() -> None:
    v = venue()
    own = v.rest("A", BUY, 10, 10_000)
    assert v.held("A") == 100_000
    v.sell("A", 4, 9_000, stp=Stp.DECREMENT)
    assert v.engine.order(own).qty == 6  # type: ignore[union-attr]
    assert v.held("A") == 60_000 and v.held("A", "CEA24") == 0


def test_own_orders_behind_another_members_are_reached_in_priority_order() -> None:
    v = venue()
    other = v.rest("B", SELL, 5, 10_000)
    own = v.rest("A", SELL, 5, 10_000)
    out = v.buy("A", 10, 10_000, stp=Stp.CANCEL_INCOMING)
    assert kinds(out) == ["Accepted", "Trade", "Cancelled"]
    assert only(out, Trade)[0].maker_order_id == other
    assert only(out, Cancelled)[0].qty == 5  # the open rest after the trade
    assert v.ids(side=SELL, price=10_000) == [own]


def test_stp_only_for_orders_of_the_same_member() -> None:
    v = venue()
    v.rest("B", SELL, 5, 10_000)
    out = v.buy("A", 5, 10_000, stp=Stp.CANCEL_BOTH)
    assert kinds(out) == ["Accepted", "Trade"]


def test_own_orders_that_do_not_cross_are_not_touched() -> None:
    v = venue()
    own = v.rest("A", SELL, 5, 10_010)
    v.rest("B", SELL, 5, 10_000)
    out = v.buy("A", 10, 10_000, stp=Stp.CANCEL_BOTH)
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.engine.order(own) is not None


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        (Stp.CANCEL_RESTING, ["Accepted", "Cancelled"]),  # the buy then rests
        (Stp.CANCEL_INCOMING, ["Accepted", "Cancelled"]),
        (Stp.CANCEL_BOTH, ["Accepted", "Cancelled", "Cancelled"]),
        (Stp.DECREMENT, ["Accepted", "Decremented", "Decremented"]),
    ],
)
def test_the_engine_default_applies_to_stp_default_orders(default: int, expected: list[str]) -> None:
    v = venue(stp_default=default)
    own = v.rest("A", SELL, 10, 10_000)
    out = v.buy("A", 10, 10_000)  # Stp.DEFAULT
    assert kinds(out) == expected
    if default == Stp.CANCEL_RESTING:
        assert out[1].order_id == own  # type: ignore[attr-defined]
        assert v.engine.bbo("CEA24") == (10_000, 10, 0, 0)
    if default == Stp.CANCEL_INCOMING:
        assert out[1].order_id == out[0].order_id  # type: ignore[attr-defined]


def test_the_default_default_is_cancel_resting() -> None:
    v = venue()
    assert v.engine.stp_default == Stp.CANCEL_RESTING
    own = v.rest("A", SELL, 10, 10_000)
    out = v.buy("A", 10, 10_000)
    assert only(out, Cancelled)[0].order_id == own


def test_a_members_configured_mode_beats_the_engine_default() -> None:
    v = venue(stp_default=Stp.CANCEL_RESTING, member_stp={"A": Stp.CANCEL_INCOMING})
    own = v.rest("A", SELL, 10, 10_000)
    out = v.buy("A", 10, 10_000)
    assert only(out, Cancelled)[0].order_id != own
    assert v.engine.order(own) is not None
    # B has no configured mode: the engine default.
    own_b = v.rest("B", BUY, 10, 9_990)
    out = v.sell("B", 10, 9_990, tif=TimeInForce.IOC)
    assert only(out, Cancelled)[0].order_id == own_b
    # An order's own mode beats both.
    out = v.buy("A", 10, 10_000, stp=Stp.CANCEL_RESTING)
    assert only(out, Cancelled)[0].order_id == own


def test_the_incoming_orders_mode_wins_over_the_resting_orders() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000, stp=Stp.CANCEL_INCOMING)
    out = v.buy("A", 10, 10_000, stp=Stp.CANCEL_RESTING)
    assert only(out, Cancelled)[0].order_id == own


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.DAY])
def test_a_market_order_meeting_its_own_order(tif: int) -> None:
    v = venue()
    v.rest("A", SELL, 10, 10_000)
    v.rest("B", SELL, 10, 10_100)
    out = v.buy("A", 15, ord_type=OrdType.MARKET, tif=tif, stp=Stp.CANCEL_RESTING)
    assert kinds(out) == ["Accepted", "Cancelled", "Trade", "Cancelled"]
    assert [c.reason for c in only(out, Cancelled)] == [SELF, CancelReason.IOC_REST]
    out = v.buy("A", 15, ord_type=OrdType.MARKET, tif=tif, stp=Stp.DECREMENT)
    assert kinds(out) == ["Accepted", "Cancelled"]  # B's rest was taken: nothing left


def test_decrement_then_ioc_rest() -> None:
    v = venue()
    v.rest("A", SELL, 4, 10_000)
    out = v.buy("A", 10, 10_000, tif=TimeInForce.IOC, stp=Stp.DECREMENT)
    assert kinds(out) == ["Accepted", "Decremented", "Decremented", "Cancelled"]
    assert out[-1].qty == 6 and out[-1].reason == CancelReason.IOC_REST  # type: ignore[attr-defined]


# --- FOK and self-trade prevention ------------------------------------------------------


def test_fok_cancel_resting_skips_own_orders_in_the_count_and_cancels_them() -> None:
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    v.rest("B", SELL, 6, 10_000)
    v.rest("C", SELL, 4, 10_010)
    out = v.buy("A", 10, 10_010, tif=TimeInForce.FOK, stp=Stp.CANCEL_RESTING)
    assert kinds(out) == ["Accepted", "Cancelled", "Trade", "Trade"]
    assert only(out, Cancelled)[0].order_id == own
    assert sum(t.qty for t in only(out, Trade)) == 10


def test_fok_cancel_resting_killed_when_others_cannot_fill_it() -> None:
    # Own orders do not count towards the fill and, as the FOK is killed before any
    # match, they are not cancelled either.
    v = venue()
    own = v.rest("A", SELL, 10, 10_000)
    v.rest("B", SELL, 6, 10_000)
    out = v.buy("A", 10, 10_000, tif=TimeInForce.FOK, stp=Stp.CANCEL_RESTING)
    assert kinds(out) == ["Accepted", "Cancelled"]
    assert out[1].reason == CancelReason.IOC_REST  # type: ignore[attr-defined]
    assert v.engine.order(own) is not None


@pytest.mark.parametrize("mode", [Stp.CANCEL_INCOMING, Stp.CANCEL_BOTH, Stp.DECREMENT])
def test_fok_is_killed_when_an_own_order_stands_before_the_fill(mode: int) -> None:
    v = venue()
    v.rest("B", SELL, 4, 10_000)
    own = v.rest("A", SELL, 10, 10_000)
    v.rest("C", SELL, 20, 10_010)
    before = v.engine.depth("CEA24")
    out = v.buy("A", 10, 10_010, tif=TimeInForce.FOK, stp=mode)
    assert kinds(out) == ["Accepted", "Cancelled"]
    assert out[1].reason == CancelReason.IOC_REST and out[1].qty == 10  # type: ignore[attr-defined]
    assert v.engine.depth("CEA24") == before
    assert v.engine.order(own) is not None


@pytest.mark.parametrize("mode", [Stp.CANCEL_INCOMING, Stp.CANCEL_BOTH, Stp.DECREMENT])
def test_fok_fills_when_the_own_order_is_beyond_the_fill(mode: int) -> None:
    v = venue()
    v.rest("B", SELL, 10, 10_000)
    own = v.rest("A", SELL, 10, 10_000)
    out = v.buy("A", 10, 10_000, tif=TimeInForce.FOK, stp=mode)
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.engine.order(own) is not None


def test_an_amend_that_crosses_its_own_member_uses_the_amended_orders_mode() -> None:
    v = venue()
    own_sell = v.rest("A", SELL, 10, 10_010)
    buy = v.rest("A", BUY, 10, 10_000, stp=Stp.CANCEL_INCOMING)
    out = v.send(Amend("A", buy, 10_010, 10))
    assert kinds(out) == ["Amended", "Cancelled"]
    assert only(out, Cancelled)[0].order_id == buy and only(out, Cancelled)[0].reason == SELF
    assert v.engine.order(own_sell) is not None and v.engine.order(buy) is None
    assert v.held("A") == 0


def test_accepted_reports_the_order_not_its_stp() -> None:
    v = venue()
    ack = v.buy("A", 1, 10_000, stp=Stp.DECREMENT)[0]
    assert isinstance(ack, Accepted)
    assert v.engine.order(ack.order_id).stp == Stp.DECREMENT  # type: ignore[union-attr]
    ack = v.buy("A", 1, 10_000)[0]
    assert isinstance(ack, Accepted)
    assert v.engine.order(ack.order_id).stp == Stp.CANCEL_RESTING  # type: ignore[union-attr]


@pytest.mark.parametrize("tif", [TimeInForce.DAY, TimeInForce.FOK])
def test_without_self_trade_prevention_a_member_trades_with_itself(tif: int) -> None:
    """Only for replays and benchmarks of foreign flow: an engine built with
    self_trade_prevention=False matches a member's orders with each other, whatever
    mode the order asks for, and a fill-or-kill counts the member's own orders."""
    v = venue(self_trade_prevention=False)
    own = v.rest("A", SELL, 10, 10_000)
    out = v.buy("A", 10, 10_000, stp=Stp.CANCEL_BOTH, tif=tif)
    assert kinds(out) == ["Accepted", "Trade"]
    trade = out[1]
    assert isinstance(trade, Trade) and (trade.maker_order_id, trade.maker_member, trade.taker_member) == (own, "A", "A")
    assert v.engine.bbo("CEA24") == (0, 0, 0, 0)
    # Built with it (the default), the same order is stopped by the member's own.
    v = venue()
    v.rest("A", SELL, 10, 10_000)
    assert "Trade" not in kinds(v.buy("A", 10, 10_000, stp=Stp.CANCEL_BOTH, tif=tif))

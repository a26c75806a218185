"""Hit order: trade against a chosen resting order among the best five levels, at its
price, whatever does not fill is cancelled."""

from __future__ import annotations

from engine import (
    Accepted,
    Cancelled,
    CancelReason,
    HitOrder,
    OrdType,
    Reason,
    Side,
    TimeInForce,
    Trade,
)
from tests.engine.harness import Venue, cx, kinds, only

BUY, SELL = Side.BUY, Side.SELL


def venue() -> Venue:
    v = Venue([cx("CEA24", 10_000), cx("CEA23", 8_000)])
    for m in ("A", "B", "C"):
        v.fund(m, cash=100_000_000, CEA24=10_000, CEA23=10_000)
    return v


def asks(v: Venue, n: int, member: str = "A") -> list[int]:
    """n ask levels at 10,000, 10,010, ... one order each."""
    return [v.rest(member, SELL, 10, 10_000 + 10 * i) for i in range(n)]


def test_hit_a_chosen_order_at_its_price() -> None:
    v = venue()
    ids = asks(v, 5)
    out = v.send(HitOrder("B", "h1", "CEA24", ids[2], 10))
    assert kinds(out) == ["Accepted", "Trade"]
    ack, t = out
    assert isinstance(ack, Accepted) and isinstance(t, Trade)
    assert (ack.side, ack.price, ack.qty, ack.ord_type, ack.tif, ack.coid) == (BUY, 10_020, 10, OrdType.LIMIT, TimeInForce.IOC, "h1")
    assert (t.price, t.qty, t.maker_order_id, t.taker_order_id, t.aggressor) == (10_020, 10, ids[2], ack.order_id, BUY)
    assert v.engine.order(ids[2]) is None
    assert [p for p, _, _ in v.engine.depth("CEA24")[1]] == [10_000, 10_010, 10_030, 10_040]
    assert v.held("B") == 0 and v.available("B") == 100_000_000 - 100_200


def test_hit_more_than_the_target_has_cancels_the_rest() -> None:
    v = venue()
    ids = asks(v, 3)
    out = v.send(HitOrder("B", "h", "CEA24", ids[1], 25))
    assert kinds(out) == ["Accepted", "Trade", "Cancelled"]
    c = only(out, Cancelled)[0]
    assert (c.qty, c.reason) == (15, CancelReason.IOC_REST)
    assert only(out, Trade)[0].qty == 10
    assert v.held("B") == 0  # the rest's hold (at the target's price) is released


def test_hit_part_of_the_target_leaves_it_with_its_priority() -> None:
    v = venue()
    first = v.rest("A", SELL, 10, 10_010)
    second = v.rest("C", SELL, 10, 10_010)
    out = v.send(HitOrder("B", "h", "CEA24", second, 4))
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.ids(side=SELL, price=10_010) == [first, second]
    assert v.engine.order(second).qty == 6  # type: ignore[union-attr]
    assert v.engine.depth("CEA24")[1] == [(10_010, 16, 2)]
    assert v.held("C", "CEA24") == 6


def test_hit_a_bid_sells() -> None:
    v = venue()
    top = v.rest("A", BUY, 10, 9_990)
    target = v.rest("A", BUY, 10, 9_950)
    out = v.send(HitOrder("B", "h", "CEA24", target, 10))
    ack, t = out
    assert ack.side == SELL and ack.price == 9_950  # type: ignore[attr-defined]
    assert isinstance(t, Trade) and t.aggressor == SELL and t.buyer == "A" and t.seller == "B"
    assert v.engine.order(top) is not None
    assert v.held("A") == 99_900  # the target's cash hold is used, the other kept


def test_the_fifth_level_can_be_hit_the_sixth_cannot() -> None:
    v = venue()
    ids = asks(v, 6)
    v.reject(HitOrder("B", "h6", "CEA24", ids[5], 10), Reason.TARGET_NOT_IN_BEST_LEVELS)
    assert kinds(v.send(HitOrder("B", "h5", "CEA24", ids[4], 10))) == ["Accepted", "Trade"]
    # Now the sixth is the fifth.
    assert kinds(v.send(HitOrder("B", "h6", "CEA24", ids[5], 10))) == ["Accepted", "Trade"]


def test_levels_are_counted_not_orders() -> None:
    v = venue()
    for _ in range(4):
        v.rest("A", SELL, 1, 10_000)
    ids = asks(v, 5)  # 10,000 again, then four more levels: five levels in all
    assert kinds(v.send(HitOrder("B", "h", "CEA24", ids[4], 10))) == ["Accepted", "Trade"]


def test_hit_own_order_is_refused() -> None:
    v = venue()
    ids = asks(v, 1, member="B")
    v.reject(HitOrder("B", "h", "CEA24", ids[0], 10), Reason.TARGET_IS_OWN_ORDER)


def test_hit_needs_the_target_in_the_named_instrument() -> None:
    v = venue()
    ids = asks(v, 1)
    v.reject(HitOrder("B", "h", "CEA23", ids[0], 10), Reason.UNKNOWN_ORDER)
    v.reject(HitOrder("B", "h", "CEA24", ids[0] + 100, 10), Reason.UNKNOWN_ORDER)


def test_hit_order_holds_at_the_target_price() -> None:
    v = venue()
    v.fund("P", cash=100_199)
    ids = asks(v, 3)
    v.reject(HitOrder("P", "h", "CEA24", ids[2], 10), Reason.INSUFFICIENT_FUNDS)  # needs 10 x 10,020
    assert kinds(v.send(HitOrder("P", "h", "CEA24", ids[1], 10))) == ["Accepted", "Trade"]
    assert v.available("P") == 99


def test_hit_order_uses_its_coid() -> None:
    v = venue()
    ids = asks(v, 2)
    v.send(HitOrder("B", "dup", "CEA24", ids[0], 10))
    v.reject(HitOrder("B", "dup", "CEA24", ids[1], 10), Reason.DUPLICATE_CLIENT_ORDER_ID)

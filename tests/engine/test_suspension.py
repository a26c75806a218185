"""Member trading suspension (issue 10, rule 2).

``SuspendMember(member, cancel_orders)`` answers ``MemberStatus(member, suspended=True,
text)``; until ``ReinstateMember`` the member's new orders, hit orders and amends are
rejected with MEMBER_SUSPENDED while its cancels (and mass cancels) still work. With
``cancel_orders`` its resting orders are cancelled, reason SUSPENDED, in order id order.
Suspending a suspended member (ALREADY_SUSPENDED), reinstating one that is not
(NOT_SUSPENDED) or naming nobody (INVALID_FIELD) is rejected and changes nothing
(``Venue.reject``). The suspended set is state: snapshots, restore and the state hash
carry it, and a suspension outlasts the trading day.
"""

from __future__ import annotations

import msgspec

from engine import (
    Amend,
    Cancel,
    Cancelled,
    CancelReason,
    EndOfDay,
    Engine,
    HitOrder,
    MassCancel,
    MemberStatus,
    NewOrder,
    Reason,
    ReinstateMember,
    Schedule,
    Side,
    SuspendMember,
)
from engine.matching import EngineSnapshot
from tests.engine.harness import Venue, cx, kinds, local_ns, only

BUY, SELL = Side.BUY, Side.SELL


def venue(**kw: object) -> Venue:
    v = Venue([cx("CEA24"), cx("CEA23", 8_000)], **kw)  # type: ignore[arg-type]
    for member in ("A", "B"):
        v.fund(member, cash=10**9, CEA24=1_000, CEA23=1_000)
    return v


def test_suspend_answers_with_the_members_status_and_the_reason() -> None:
    v = venue()
    out = v.send(SuspendMember("A", actor="EXCH/op1", text="margin call unanswered"))
    assert out == [MemberStatus(v.sequencer.seq, v.clock.now, "A", True, "margin call unanswered")]
    assert v.engine.suspended == {"A"}
    out = v.send(ReinstateMember("A", actor="EXCH/op1", text="paid"))
    assert out == [MemberStatus(v.sequencer.seq, v.clock.now, "A", False, "paid")]
    assert v.engine.suspended == set()


def test_a_suspended_member_cannot_trade_but_can_cancel() -> None:
    v = venue()
    bid = v.rest("A", BUY, 10, 9_900)
    ask = v.rest("A", SELL, 10, 10_100, coid="a-ask")
    other = v.rest("B", SELL, 10, 10_200)
    v.send(SuspendMember("A"))
    rej = v.reject(NewOrder("A", "n1", "CEA24", BUY, 10, 9_900), Reason.MEMBER_SUSPENDED)
    assert rej.coid == "n1" and rej.text == "member A is suspended from trading"
    v.reject(NewOrder("A", "n2", "CEA23", SELL, 10, 8_000), Reason.MEMBER_SUSPENDED)
    v.reject(HitOrder("A", "h1", "CEA24", other, 10), Reason.MEMBER_SUSPENDED)
    assert v.reject(Amend("A", bid, 9_800, 10), Reason.MEMBER_SUSPENDED).order_id == bid
    # Its resting orders stay (no cancel_orders) and others may still trade with them.
    assert v.engine.order(bid) is not None
    assert kinds(v.sell("B", 10, 9_900)) == ["Accepted", "Trade"]
    # Cancels still work, its own and mass cancels.
    assert kinds(v.send(Cancel("A", ask))) == ["Cancelled"]
    v.rest("B", BUY, 10, 9_800)  # other members trade on
    v.send(ReinstateMember("A"))
    assert kinds(v.send(NewOrder("A", "n1", "CEA24", BUY, 10, 9_900))) == ["Accepted"]  # the coid was never used
    v.send(SuspendMember("A"))
    assert kinds(v.send(MassCancel("A"))) == ["Cancelled"]


def test_suspension_with_cancel_orders_cancels_every_resting_order_of_the_member() -> None:
    v = venue()
    ids = [v.rest("A", BUY, 10, 9_900), v.rest("B", BUY, 10, 9_900),
           v.rest("A", SELL, 20, 8_100, instrument="CEA23"), v.rest("A", SELL, 30, 10_100)]
    out = v.send(SuspendMember("A", cancel_orders=True, text="fraud"))
    assert kinds(out) == ["MemberStatus", "Cancelled", "Cancelled", "Cancelled"]
    cancelled = only(out, Cancelled)
    assert [(c.order_id, c.qty, c.reason) for c in cancelled] == [
        (ids[0], 10, CancelReason.SUSPENDED), (ids[2], 20, CancelReason.SUSPENDED), (ids[3], 30, CancelReason.SUSPENDED)]
    assert v.held("A") == 0 and v.held("A", "CEA24") == 0 and v.held("A", "CEA23") == 0  # holds released
    assert v.engine.order(ids[1]) is not None  # B's order stays


def test_suspension_outlasts_the_day() -> None:
    v = venue(schedule=Schedule(), start_ns=local_ns(10, 0))
    v.send(SuspendMember("A"))
    v.send(EndOfDay())
    v.at(local_ns(10, 0, day=1))
    v.reject(NewOrder("A", "n1", "CEA24", BUY, 10, 9_900), Reason.MEMBER_SUSPENDED)


def test_rejected_suspensions_name_the_member() -> None:
    v = venue()
    v.send(SuspendMember("A"))
    rej = v.reject(SuspendMember("A", cancel_orders=True), Reason.ALREADY_SUSPENDED)
    assert rej.member == "A" and rej.text == "member A is suspended already"
    rej = v.reject(ReinstateMember("B"), Reason.NOT_SUSPENDED)
    assert rej.member == "B" and rej.text == "member B is not suspended"
    v.reject(SuspendMember(""), Reason.INVALID_FIELD)
    v.reject(ReinstateMember(""), Reason.INVALID_FIELD)


def test_the_suspended_set_is_in_the_snapshot_and_the_state_hash() -> None:
    v = venue()
    v.rest("A", BUY, 10, 9_900)
    plain = v.engine.state_hash()
    assert len(v.engine.state()) == 8  # no suspension: the state (and its hash) as before the rule existed
    v.send(SuspendMember("B"))
    v.send(SuspendMember("A"))
    assert v.engine.state()[-1] == ["A", "B"]
    snap = v.engine.snapshot()
    assert snap.suspended == ["A", "B"]
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=EngineSnapshot)
    fresh = Engine([m.rules for m in v.engine.markets.values()], v.ledger)
    fresh.restore(decoded)
    fresh._check()
    assert fresh.suspended == {"A", "B"} and fresh.state_hash() == v.engine.state_hash()
    assert v.engine.state_hash() != plain
    v.send(ReinstateMember("A"))
    v.send(ReinstateMember("B"))
    assert len(v.engine.state()) == 8


def test_a_snapshot_written_before_suspensions_existed_still_decodes() -> None:
    v = venue()
    v.rest("A", BUY, 10, 9_900)
    fields = msgspec.to_builtins(v.engine.snapshot())
    old = msgspec.msgpack.encode(fields[:-1])  # the array without its last field
    decoded = msgspec.msgpack.decode(old, type=EngineSnapshot)
    assert decoded.suspended == []
    fresh = Engine([m.rules for m in v.engine.markets.values()], v.ledger)
    fresh.restore(decoded)
    assert fresh.state_hash() == v.engine.state_hash()

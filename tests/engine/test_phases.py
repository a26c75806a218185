"""Trading phases from the schedule on an injected clock, operator halts and resumes."""

from __future__ import annotations

from collections.abc import Sequence

from engine import (
    Amend,
    Cancel,
    Cancelled,
    CancelReason,
    Expired,
    Halt,
    NewOrder,
    Phase,
    Reason,
    Resume,
    Schedule,
    Side,
    StatusChanged,
    Tick,
    Trade,
)
from tests.engine.harness import NS_PER_MINUTE, Venue, cx, kinds, local_ns, only

BUY, SELL = Side.BUY, Side.SELL
CLOSED, CONTINUOUS, HALTED = Phase.CLOSED, Phase.CONTINUOUS, Phase.HALTED


def national(start: int) -> Venue:
    v = Venue([cx("CEA24", 10_000), cx("CEA23", 8_000)], schedule=Schedule(), start_ns=start)
    for m in ("A", "B"):
        v.fund(m, cash=100_000_000, CEA24=1_000, CEA23=1_000)
    return v


def phases(v: Venue) -> dict[str, int]:
    return {s: m.phase for s, m in v.engine.markets.items()}


def statuses(events: Sequence[object]) -> list[tuple[str, int]]:
    return [(e.instrument, e.phase) for e in events if isinstance(e, StatusChanged)]


def test_a_national_trading_day() -> None:
    v = national(local_ns(9, 0))
    assert v.opening == []  # closed at 09:00, as every instrument starts
    assert phases(v) == {"CEA24": CLOSED, "CEA23": CLOSED}
    v.reject(NewOrder("A", "early", "CEA24", BUY, 1, 10_000), Reason.MARKET_CLOSED)

    v.at(local_ns(9, 30))
    out = v.send(Tick())
    assert statuses(out) == [("CEA24", CONTINUOUS), ("CEA23", CONTINUOUS)]
    assert all((e.seq, e.ts) == (v.sequencer.seq, local_ns(9, 30)) for e in out)  # type: ignore[attr-defined]

    v.at(local_ns(10, 0))
    assert v.send(Tick()) == []  # nothing changes inside a window
    buy = v.rest("A", BUY, 10, 9_990)
    sell = v.rest("B", SELL, 10, 10_010, instrument="CEA24")
    other = v.rest("A", BUY, 5, 8_000, instrument="CEA23")

    v.at(local_ns(11, 30))
    out = v.send(Tick())
    assert statuses(out) == [("CEA24", CLOSED), ("CEA23", CLOSED)]
    assert only(out, Expired) == []  # the lunch break keeps orders
    v.at(local_ns(12, 0))
    assert v.send(Tick()) == []
    assert {o.order_id for o in v.engine.orders.values()} == {buy, sell, other}
    v.reject(NewOrder("A", "lunch", "CEA24", BUY, 1, 10_000), Reason.MARKET_CLOSED)
    v.reject(Amend("A", buy, 9_995, 10), Reason.MARKET_CLOSED)
    assert kinds(v.send(Cancel("A", other))) == ["Cancelled"]  # a cancel is always allowed

    # The first command after 13:00 opens the market before it is applied.
    v.at(local_ns(13, 5))
    out = v.send(NewOrder("B", "pm", "CEA24", SELL, 4, 9_990))
    assert kinds(out) == ["StatusChanged", "StatusChanged", "Accepted", "Trade"]
    assert only(out, Trade)[0].maker_order_id == buy

    v.at(local_ns(15, 0))
    out = v.send(Tick())
    assert kinds(out) == ["Expired", "Expired", "StatusChanged", "StatusChanged"]
    expired = only(out, Expired)
    assert [(e.order_id, e.qty, e.member) for e in expired] == [(buy, 6, "A"), (sell, 10, "B")]
    assert v.engine.orders == {}
    assert v.held("A") == 0 and v.held("B", "CEA24") == 0

    v.at(local_ns(9, 30, day=1))
    out = v.send(Tick())
    assert statuses(out) == [("CEA24", CONTINUOUS), ("CEA23", CONTINUOUS)]


def test_a_gap_over_several_phase_changes_lands_in_the_right_phase() -> None:
    v = national(local_ns(9, 0))
    v.at(local_ns(10, 0))
    v.send(Tick())
    v.rest("A", BUY, 1, 9_990)
    v.at(local_ns(16, 0))  # straight past 11:30, 13:00 and 15:00
    out = v.send(Tick())
    assert kinds(out) == ["Expired", "StatusChanged", "StatusChanged"]
    assert phases(v) == {"CEA24": CLOSED, "CEA23": CLOSED}


def test_the_close_expires_orders_entered_at_its_last_moment() -> None:
    v = national(local_ns(14, 59))
    oid = v.rest("A", BUY, 1, 9_990)
    v.at(local_ns(15, 0) - 1)
    assert v.send(Tick()) == []
    v.at(local_ns(15, 0))
    out = v.send(Cancel("A", oid))
    assert kinds(out) == ["Expired", "StatusChanged", "StatusChanged", "Rejected"]
    assert out[-1].reason == Reason.UNKNOWN_ORDER  # type: ignore[attr-defined]


def test_always_open_expires_at_midnight_utc() -> None:
    """With ALWAYS_OPEN the day's only window ends at midnight UTC: resting orders
    expire there and trading goes on without a phase change."""
    v = Venue([cx()])
    v.fund("A", cash=10**8)
    v.rest("A", BUY, 1, 9_990)
    v.at(1440 * NS_PER_MINUTE - 1)
    assert v.send(Tick()) == []
    v.at(1440 * NS_PER_MINUTE)
    assert kinds(v.send(Tick())) == ["Expired"]


# --- halts ------------------------------------------------------------------------------


def test_halt_and_resume_one_instrument() -> None:
    v = national(local_ns(10, 0))
    oid = v.rest("A", BUY, 10, 9_990)
    out = v.send(Halt("CEA24"))
    assert out == [StatusChanged(v.sequencer.seq, v.clock.now, "CEA24", HALTED)]
    assert phases(v) == {"CEA24": HALTED, "CEA23": CONTINUOUS}
    assert v.engine.order(oid) is not None  # orders stay unless told
    v.reject(NewOrder("B", "h", "CEA24", SELL, 1, 9_990), Reason.INSTRUMENT_HALTED)
    assert kinds(v.send(NewOrder("B", "ok", "CEA23", SELL, 1, 8_000))) == ["Accepted"]
    out = v.send(Resume("CEA24"))
    assert statuses(out) == [("CEA24", CONTINUOUS)]
    assert kinds(v.send(NewOrder("B", "h", "CEA24", SELL, 1, 9_990))) == ["Accepted", "Trade"]


def test_halt_with_cancel_orders_cancels_only_that_instrument() -> None:
    v = national(local_ns(10, 0))
    a = v.rest("A", BUY, 10, 9_990)
    b = v.rest("B", SELL, 10, 10_010)
    c = v.rest("A", BUY, 10, 8_000, instrument="CEA23")
    out = v.send(Halt("CEA24", cancel_orders=True))
    assert kinds(out) == ["StatusChanged", "Cancelled", "Cancelled"]
    assert [(x.order_id, x.qty, x.reason) for x in only(out, Cancelled)] == [
        (a, 10, CancelReason.HALT), (b, 10, CancelReason.HALT),
    ]
    assert v.engine.order(c) is not None
    assert v.held("A") == 80_000 and v.held("B", "CEA24") == 0


def test_halt_all_and_resume_all() -> None:
    v = national(local_ns(10, 0))
    v.rest("A", BUY, 10, 9_990)
    v.rest("A", BUY, 10, 8_000, instrument="CEA23")
    out = v.send(Halt("", cancel_orders=True))
    assert kinds(out) == ["StatusChanged", "StatusChanged", "Cancelled", "Cancelled"]
    assert v.engine.orders == {}
    out = v.send(Resume(""))
    assert statuses(out) == [("CEA24", CONTINUOUS), ("CEA23", CONTINUOUS)]


def test_halt_all_when_one_is_halted_halts_the_rest() -> None:
    v = national(local_ns(10, 0))
    v.send(Halt("CEA24"))
    out = v.send(Halt(""))
    assert statuses(out) == [("CEA23", HALTED)]
    out = v.send(Resume("CEA23"))
    assert statuses(out) == [("CEA23", CONTINUOUS)]
    out = v.send(Resume(""))  # one is still halted: accepted
    assert statuses(out) == [("CEA24", CONTINUOUS)]


def test_a_halt_outlasts_the_schedule() -> None:
    v = national(local_ns(11, 0))
    v.send(Halt("CEA24"))
    v.at(local_ns(11, 30))
    assert statuses(v.send(Tick())) == [("CEA23", CLOSED)]  # the halted one stays halted
    v.at(local_ns(13, 0))
    assert statuses(v.send(Tick())) == [("CEA23", CONTINUOUS)]
    assert phases(v)["CEA24"] == HALTED
    out = v.send(Resume("CEA24"))
    assert statuses(out) == [("CEA24", CONTINUOUS)]


def test_halt_and_resume_while_closed() -> None:
    v = national(local_ns(12, 0))
    out = v.send(Halt("CEA24"))
    assert statuses(out) == [("CEA24", HALTED)]
    out = v.send(Resume("CEA24"))
    assert statuses(out) == [("CEA24", CLOSED)]  # back to what the schedule says


def test_orders_of_a_halted_instrument_still_expire_at_the_close() -> None:
    v = national(local_ns(14, 0))
    v.rest("A", BUY, 10, 9_990)
    v.send(Halt("CEA24"))
    v.at(local_ns(15, 0))
    out = v.send(Tick())
    assert kinds(out) == ["Expired", "StatusChanged"]  # CEA24 stays halted
    assert v.held("A") == 0

"""The order state table and the tracker that checks event streams against it."""

from __future__ import annotations

import pytest

from engine import (
    Accepted,
    Amended,
    Cancelled,
    Decremented,
    Expired,
    OrderTracker,
    Rejected,
    State,
    Trade,
)
from engine.states import TRANSITIONS, Ev, IllegalTransition, next_state


def acc(oid: int, qty: int) -> Accepted:
    return Accepted(1, 0, "A", str(oid), oid, "X", 1, 100, qty, 1, 1)


def trade(maker: int, taker: int, qty: int) -> Trade:
    return Trade(1, 0, 1, "X", 100, qty, 1, maker, "B", taker, "A")


def test_a_life_with_fills() -> None:
    t = OrderTracker()
    t.feed(acc(1, 10))
    t.feed(acc(2, 4))
    t.feed(trade(1, 2, 4))
    assert t.state[1] == State.PARTIALLY_FILLED and t.state[2] == State.FILLED
    assert t.live() == {1: 6}
    t.feed(Amended(1, 0, "A", 1, "X", 100, 3, True))
    assert t.state[1] == State.PARTIALLY_FILLED and t.live() == {1: 3}
    t.feed(Decremented(1, 0, "A", 1, "X", 1, 2))
    t.feed(Expired(1, 0, "A", 1, "X", 2))
    assert t.state[1] is State.EXPIRED  # type: ignore[comparison-overlap]
    assert t.live() == {}


def test_decrement_to_nothing_cancels() -> None:
    t = OrderTracker()
    t.feed(acc(1, 5))
    t.feed(Decremented(1, 0, "A", 1, "X", 5, 0))
    assert t.state[1] == State.CANCELLED


@pytest.mark.parametrize(
    "events",
    [
        [trade(1, 2, 1)],  # fill of an order never accepted
        [acc(1, 5), acc(1, 5)],  # accepted twice
        [acc(1, 5), Cancelled(1, 0, "A", 1, "X", 5, 1), Cancelled(1, 0, "A", 1, "X", 0, 1)],
        [acc(1, 5), acc(2, 5), trade(1, 2, 5), trade(1, 2, 1)],  # fill after filled
        [acc(1, 5), acc(2, 9), trade(1, 2, 6)],  # more than open
        [acc(1, 5), Cancelled(1, 0, "A", 1, "X", 4, 1)],  # wrong open quantity
        [acc(1, 5), Expired(1, 0, "A", 1, "X", 5), Amended(1, 0, "A", 1, "X", 1, 1, False)],
        [acc(1, 5), Decremented(1, 0, "A", 1, "X", 2, 2)],  # qty_left disagrees
    ],
)
def test_illegal_streams_are_caught(events: list[object]) -> None:
    t = OrderTracker()
    with pytest.raises((IllegalTransition, AssertionError, KeyError)):
        for ev in events:
            t.feed(ev)  # type: ignore[arg-type]


def test_rejects_change_nothing() -> None:
    t = OrderTracker()
    t.feed(Rejected(1, 0, "A", "c", 0, 1, "no"))
    assert t.state == {}


def test_terminal_states_take_no_event() -> None:
    for state in (State.FILLED, State.CANCELLED, State.EXPIRED, State.REJECTED):
        for ev in Ev:
            assert (state, ev) not in TRANSITIONS
            with pytest.raises(IllegalTransition):
                next_state(state, ev)

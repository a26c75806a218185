"""The order state machine: one explicit table of (state, event) -> state.

The engine reports an order's life as events; this table says which sequences are
legal. Anything not in the table is an error. Tests replay every event stream through
``OrderTracker`` and the gateway uses the same table to answer order status queries.
"""

from __future__ import annotations

from enum import IntEnum

from engine.messages import Accepted, Amended, Cancelled, Decremented, Event, Expired, Rejected, Trade


class State(IntEnum):
    PENDING = 0
    OPEN = 1
    PARTIALLY_FILLED = 2
    FILLED = 3
    CANCELLED = 4
    EXPIRED = 5
    REJECTED = 6


class Ev(IntEnum):
    ACCEPT = 1
    REJECT = 2
    FILL_PART = 3
    FILL_ALL = 4
    CANCEL = 5
    EXPIRE = 6
    AMEND = 7
    DECREMENT_PART = 8
    DECREMENT_ALL = 9


S, E = State, Ev
TRANSITIONS: dict[tuple[State, Ev], State] = {
    (S.PENDING, E.ACCEPT): S.OPEN,
    (S.PENDING, E.REJECT): S.REJECTED,
    **{
        (live, ev): to
        for live in (S.OPEN, S.PARTIALLY_FILLED)
        for ev, to in (
            (E.FILL_PART, S.PARTIALLY_FILLED),
            (E.FILL_ALL, S.FILLED),
            (E.CANCEL, S.CANCELLED),
            (E.EXPIRE, S.EXPIRED),
            (E.AMEND, live),
            (E.DECREMENT_PART, live),
            (E.DECREMENT_ALL, S.CANCELLED),
        )
    },
}
TERMINAL = frozenset({S.FILLED, S.CANCELLED, S.EXPIRED, S.REJECTED})


class IllegalTransition(Exception):
    pass


def next_state(state: State, event: Ev) -> State:
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(f"order in state {state.name} cannot take event {event.name}") from None


class OrderTracker:
    """Follows every order through the event stream and checks each step against the
    table and the quantities: open quantity never negative, fills plus cancels plus
    decrements account for every tonne accepted."""

    def __init__(self) -> None:
        self.state: dict[int, State] = {}
        self.open: dict[int, int] = {}

    def _step(self, order_id: int, event: Ev) -> None:
        self.state[order_id] = next_state(self.state.get(order_id, S.PENDING), event)

    def _take(self, order_id: int, qty: int, all_: Ev, part: Ev) -> None:
        left = self.open[order_id] - qty
        assert left >= 0, (order_id, self.open[order_id], qty)
        self.open[order_id] = left
        self._step(order_id, all_ if left == 0 else part)

    def feed(self, ev: Event) -> None:
        if isinstance(ev, Accepted):
            assert ev.order_id not in self.state, ev
            self._step(ev.order_id, E.ACCEPT)
            self.open[ev.order_id] = ev.qty
        elif isinstance(ev, Trade):
            self._take(ev.maker_order_id, ev.qty, E.FILL_ALL, E.FILL_PART)
            self._take(ev.taker_order_id, ev.qty, E.FILL_ALL, E.FILL_PART)
        elif isinstance(ev, Decremented):
            self._take(ev.order_id, ev.qty, E.DECREMENT_ALL, E.DECREMENT_PART)
            assert self.open[ev.order_id] == ev.qty_left, ev
        elif isinstance(ev, Cancelled):
            assert self.open[ev.order_id] == ev.qty, (ev, self.open[ev.order_id])
            self.open[ev.order_id] = 0
            self._step(ev.order_id, E.CANCEL)
        elif isinstance(ev, Expired):
            assert self.open[ev.order_id] == ev.qty, ev
            self.open[ev.order_id] = 0
            self._step(ev.order_id, E.EXPIRE)
        elif isinstance(ev, Amended):
            self.open[ev.order_id] = ev.qty
            self._step(ev.order_id, E.AMEND)
        elif isinstance(ev, Rejected):
            pass  # a rejected order never had an id; a rejected cancel changes nothing

    def live(self) -> dict[int, int]:
        """Open quantity of every order not in a terminal state."""
        return {oid: q for oid, q in self.open.items() if self.state[oid] not in TERMINAL}

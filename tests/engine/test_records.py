"""What the operator puts on the record (issue 10, rules 3 and 4).

- ``Note(actor, kind, text)`` changes no state: like a ``Tick`` it lets the clock move
  the phases, and it answers ``Noted(actor, kind, text)``, so an action taken outside
  the core (unlocking a user, disconnecting a session) is in the journal.
- ``Cancel`` carries ``actor`` and ``text`` for the record (an operator cancelling for
  a member): the rules do not change, the cancel must still name the order's member.
"""

from __future__ import annotations

import msgspec

from engine import (
    AnyCommand,
    Cancel,
    Cancelled,
    CancelReason,
    Note,
    Noted,
    Reason,
    Schedule,
    Side,
    StatusChanged,
    Tick,
)
from engine.matching import CANCEL_FIELDS
from engine.messages import ENGINE_COMMANDS, ENGINE_EVENTS
from tests.engine.harness import Venue, core_state, cx, kinds, local_ns

BUY = Side.BUY


def venue(**kw: object) -> Venue:
    v = Venue([cx("CEA24")], **kw)  # type: ignore[arg-type]
    v.fund("A", cash=10**9, CEA24=1_000)
    return v


def test_a_note_is_answered_and_changes_nothing() -> None:
    v = venue()
    v.rest("A", BUY, 10, 9_900)
    before, ledger = core_state(v.engine), v.ledger.state() if v.ledger else None
    out = v.send(Note("EXCH/op1", "unlock", "unlocked A/trader1 from 10.0.0.7"))
    assert out == [Noted(v.sequencer.seq, v.clock.now, "EXCH/op1", "unlock", "unlocked A/trader1 from 10.0.0.7")]
    assert core_state(v.engine) == before
    assert v.ledger is not None and v.ledger.state() == ledger


def test_a_note_moves_the_clock_as_a_tick_does() -> None:
    v = venue(schedule=Schedule(), start_ns=local_ns(9, 0))
    v.at(local_ns(9, 30))
    out = v.send(Note("EXCH/op1", "disconnect", "session 7 of B"))
    assert kinds(out) == ["StatusChanged", "Noted"]
    assert isinstance(out[0], StatusChanged) and out[0].phase == 1
    v.at(local_ns(11, 30))
    assert kinds(v.send(Tick())) == ["StatusChanged"]


def test_a_cancel_carries_its_actor_and_text_for_the_record_only() -> None:
    v = venue()
    v.fund("B", cash=10**9)
    oid = v.rest("A", BUY, 10, 9_900)
    rej = v.reject(Cancel("B", oid, actor="EXCH/op1", text="asked by phone"), Reason.NOT_YOUR_ORDER)
    assert rej.order_id == oid
    out = v.send(Cancel("A", oid, actor="EXCH/op1", text="asked by phone"))
    assert out == [Cancelled(v.sequencer.seq, v.clock.now, "A", oid, "CEA24", 10, CancelReason.USER, BUY, 9_900)]


def test_the_messages_encode_as_documented() -> None:
    assert CANCEL_FIELDS == ("member", "order_id", "actor", "text", "seq", "ts")
    # A cancel sent without the new fields (trailing defaults omitted) decodes as before.
    cmd = msgspec.msgpack.decode(msgspec.msgpack.encode([2, "A", 5]), type=AnyCommand)
    assert cmd == Cancel("A", 5)
    for cmd in (Note("EXCH/op1", "unlock", "A/trader1"), Cancel("A", 5, "EXCH/op1", "why", 3, 4)):
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(cmd), type=AnyCommand) == cmd
    tags = [t.__struct_config__.tag for t in ENGINE_COMMANDS]
    assert tags == list(range(1, 20))  # 13-15: block agreement trading, 16-19: auctions
    assert [t.__struct_config__.tag for t in ENGINE_EVENTS] == list(range(101, 119))

"""The sequencer and the engine's input contract: no gaps, time never back. Replay,
snapshots and determinism over long random streams are in tests/property/test_replay.py."""

from __future__ import annotations

import pytest

from engine import (
    Cancel,
    Engine,
    Instrument,
    ManualClock,
    NewOrder,
    Reason,
    Sequencer,
    Tick,
)


def test_the_sequencer_stamps_sequence_and_time() -> None:
    clock = ManualClock(1_000)
    seq = Sequencer(clock)
    a = seq.stamp(Tick())
    clock.advance(5)
    b = seq.stamp(NewOrder("A", "1", "X", 1, 1, 1))
    assert (a.seq, a.ts, b.seq, b.ts) == (1, 1_000, 2, 1_005)  # type: ignore[attr-defined]
    assert (seq.seq, seq.ts) == (2, 1_005)


def test_the_sequencer_holds_a_clock_that_steps_back() -> None:
    clock = ManualClock(1_000)
    seq = Sequencer(clock)
    seq.stamp(Tick())
    clock.now = 900
    assert seq.stamp(Tick()).ts == 1_000  # type: ignore[attr-defined]
    clock.now = 1_100
    assert seq.stamp(Tick()).ts == 1_100  # type: ignore[attr-defined]


def test_stamp_batch_numbers_consecutively_with_one_time() -> None:
    clock = ManualClock(1_000)
    seq = Sequencer(clock)
    seq.stamp(Tick())
    clock.now = 2_000
    cmds = seq.stamp_batch([Tick(), Tick(), Tick()])
    assert [(c.seq, c.ts) for c in cmds] == [(2, 2_000), (3, 2_000), (4, 2_000)]  # type: ignore[attr-defined]
    clock.now = 1_500  # back: held
    (cmd,) = seq.stamp_batch([Tick()])
    assert (cmd.seq, cmd.ts) == (5, 2_000)  # type: ignore[attr-defined]
    assert seq.stamp_batch([]) == [] and seq.seq == 5
    assert seq.stamp(Tick()).seq == 6  # type: ignore[attr-defined]


def test_a_stamped_batch_is_what_apply_batch_takes() -> None:
    eng = engine()
    seq = Sequencer(ManualClock(0))
    eng.apply_batch(seq.stamp_batch([Tick(), NewOrder("A", "1", "X", 1, 1, 1_000), Tick()]))
    eng.apply_batch(seq.stamp_batch([NewOrder("B", "1", "X", 2, 1, 1_000)]))
    assert [type(e).__name__ for e in eng.out] == ["StatusChanged", "Accepted", "Accepted", "Trade"]
    assert eng.last_seq == 4


def test_the_sequencer_can_resume_from_a_journal_position() -> None:
    seq = Sequencer(ManualClock(50), seq=41, ts=70)
    cmd = seq.stamp(Tick())
    assert (cmd.seq, cmd.ts) == (42, 70)  # type: ignore[attr-defined]


def test_manual_clock_never_goes_back() -> None:
    clock = ManualClock()
    clock.advance(3)
    assert clock() == 3
    with pytest.raises(AssertionError):
        clock.advance(-1)


def engine() -> Engine:
    return Engine([Instrument(symbol="X", ref_price=1_000, holds=False)])


def test_a_sequence_gap_is_a_programmer_error() -> None:
    eng = engine()
    eng.apply(Tick(seq=1, ts=0))
    with pytest.raises(AssertionError, match="gap|order"):
        eng.apply(Tick(seq=3, ts=0))
    with pytest.raises(AssertionError):
        eng.apply(Tick(seq=1, ts=0))  # a repeat is a gap too


def test_time_going_back_is_a_programmer_error() -> None:
    eng = engine()
    eng.apply(Tick(seq=1, ts=100))
    with pytest.raises(AssertionError, match="back|order"):
        eng.apply(Tick(seq=2, ts=99))


def test_apply_batch_checks_the_same_contract() -> None:
    eng = engine()
    with pytest.raises(AssertionError):
        eng.apply_batch([Tick(seq=1, ts=0), Tick(seq=3, ts=0)])


def test_apply_batch_checks_every_command_not_only_the_ends() -> None:
    # A batch whose first and last commands look right but whose middle repeats a
    # sequence number or goes back in time is refused, and the engine keeps the last
    # good position.
    eng = engine()
    with pytest.raises(AssertionError, match="order"):
        eng.apply_batch([Tick(seq=1, ts=5), Tick(seq=1, ts=5), Tick(seq=3, ts=5)])
    assert (eng.last_seq, eng.last_ts) == (1, 5)
    with pytest.raises(AssertionError, match="order"):
        eng.apply_batch([Tick(seq=2, ts=6), Tick(seq=3, ts=0)])
    assert (eng.last_seq, eng.last_ts) == (2, 6)



def test_the_hash_covers_the_days_client_order_ids_in_any_order() -> None:
    # The state hash digests the day's client order ids without sorting them: the same
    # set gives the same hash whatever the order they were used in, and a different
    # set a different hash.
    a, b, c = engine(), engine(), engine()
    a.coids = {"M1": {"x", "y"}, "M2": {"z"}}
    b.coids = {"M2": {"z"}, "M1": {"y", "x"}}
    c.coids = {"M1": {"x", "w"}, "M2": {"z"}}
    assert a.state_hash() == b.state_hash()
    assert a.state_hash() != c.state_hash()


def test_process_applies_one_command_and_hands_over_its_events() -> None:
    """The cheap path for a caller with one order in hand: the same events as apply
    followed by taking the outbox, and the outbox left empty."""
    by_process, by_apply = engine(), engine()
    cmds = [NewOrder("A", "1", "X", 1, 10, 1_000, seq=1, ts=5), NewOrder("B", "1", "X", 2, 4, 990, seq=2, ts=6),
            Cancel("A", 1, seq=3, ts=7), Tick(seq=4, ts=8)]
    for cmd in cmds:
        got = by_process.process(cmd)
        by_apply.apply(cmd)
        assert got == by_apply.out and not by_process.out
        by_apply.out.clear()
    assert by_process.state_hash() == by_apply.state_hash()
    kinds = [type(e).__name__ for e in by_process.process(NewOrder("B", "2", "X", 2, 1, 1_000, seq=5, ts=9))]
    assert kinds == ["Accepted"]


def test_process_keeps_the_contract_and_changes_nothing_on_a_gap() -> None:
    eng = engine()
    eng.process(NewOrder("A", "1", "X", 1, 10, 1_000, seq=1, ts=5))
    before = eng.state_hash()
    with pytest.raises(AssertionError, match="gap|order"):
        eng.process(NewOrder("A", "2", "X", 1, 10, 1_000, seq=3, ts=5))
    with pytest.raises(AssertionError, match="back|order"):
        eng.process(Tick(seq=2, ts=4))
    assert (eng.last_seq, eng.last_ts, eng.state_hash()) == (1, 5, before)
    assert [type(e).__name__ for e in eng.process(Cancel("A", 1, seq=2, ts=5))] == ["Cancelled"]


def test_an_order_given_by_its_fields_is_the_same_as_its_command() -> None:
    """``Engine.new_order`` and ``Engine.cancel`` take one order's fields instead of a
    command (the cheapest path for a caller with one order in hand): over a random
    stream with every kind of rejection (bad fields, unknown instrument, duplicate id,
    cash or allowances short, position limit, someone else's or an unknown order), each
    call gives the events ``process`` gives for the command, and the engines and their
    ledgers end the same."""
    import random

    from tests.engine.harness import Venue, cx

    def venue() -> Venue:
        v = Venue([cx("CEA24", 10_000, position_max=400), cx("FREE", 500, holds=False, tick=5, lot=10)])
        for member in ("A", "B"):
            v.fund(member, cash=40_000_000, CEA24=300)
        v.fund("C", cash=150_000, CEA24=300)  # short of cash for most buys
        return v

    by_command, by_fields = venue(), venue()
    a, b = by_command.engine, by_fields.engine
    rng = random.Random(7)
    live: list[tuple[str, int]] = []
    seq, kinds = a.last_seq, set()
    for i in range(3_000):
        seq += 1
        ts = 1_000 + i
        if live and rng.random() < 0.3:
            member, order_id = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.1:
                member = rng.choice("ABC")  # perhaps someone else's
            if rng.random() < 0.05:
                order_id += 10_000  # unknown
            want = a.process(Cancel(member, order_id, seq=seq, ts=ts))
            got = b.cancel(member, order_id, seq, ts)
        else:
            member = rng.choice("ABC")
            instrument = rng.choices(["CEA24", "FREE", "NOPE"], [80, 18, 2])[0]
            ref = 10_000 if instrument != "FREE" else 500
            fields = [member, f"c{i}" if rng.random() > 0.02 else "c1", instrument, rng.choice([1, 1, 2, 2, 3]),
                      rng.choice([10, 20, 50, 100, 7, 1_000_000]), ref + rng.randrange(-30, 31) * rng.choice([1, 1, 1, 7]),
                      rng.choice([1] * 9 + [2]), rng.choice([1] * 8 + [2, 3]), 0, seq, ts]
            want = a.process(NewOrder(*fields))
            got = b.new_order(*fields)
            live += [(member, e.order_id) for e in got if type(e).__name__ == "Accepted"]
        assert got == want, (i, got, want)
        assert not a.out and not b.out
        kinds |= {type(e).__name__ + (f":{e.reason}" if hasattr(e, "reason") else "") for e in got}
    assert a.state_hash() == b.state_hash()
    assert by_command.ledger is not None and by_fields.ledger is not None
    assert by_command.ledger.balance == by_fields.ledger.balance and by_command.ledger.held == by_fields.ledger.held
    # The stream reached what it was meant to: fills, and each kind of refusal.
    assert {"Trade", "Cancelled:1", "Accepted"} <= kinds, kinds
    reasons = {k for k in kinds if k.startswith("Rejected:")}
    assert {f"Rejected:{int(r)}" for r in (Reason.UNKNOWN_INSTRUMENT, Reason.OFF_TICK, Reason.OFF_LOT,
                                           Reason.QTY_OUT_OF_RANGE, Reason.PRICE_OUTSIDE_BAND,
                                           Reason.INSUFFICIENT_FUNDS, Reason.INSUFFICIENT_HOLDINGS,
                                           Reason.DUPLICATE_CLIENT_ORDER_ID, Reason.UNKNOWN_ORDER,
                                           Reason.NOT_YOUR_ORDER, Reason.INVALID_FIELD, Reason.POSITION_LIMIT)} <= reasons


def test_an_order_given_by_its_fields_keeps_the_contract() -> None:
    eng = engine()
    eng.new_order("A", "1", "X", 1, 10, 1_000, 1, 1, 0, 1, 5)
    before = eng.state_hash()
    with pytest.raises(AssertionError, match="gap|order"):
        eng.new_order("A", "2", "X", 1, 10, 1_000, 1, 1, 0, 3, 5)
    with pytest.raises(AssertionError, match="back|order"):
        eng.cancel("A", 1, 2, 4)
    assert (eng.last_seq, eng.last_ts, eng.state_hash()) == (1, 5, before)
    assert [type(e).__name__ for e in eng.cancel("A", 1, 2, 5)] == ["Cancelled"]

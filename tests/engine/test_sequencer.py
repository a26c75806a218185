"""The sequencer, the engine's input contract (no gaps, time never back) and determinism:
the same commands give the same events and the same state hash."""

from __future__ import annotations

import random

import msgspec
import pytest

from engine import (
    Amend,
    AnyCommand,
    Cancel,
    Command,
    EndOfDay,
    Engine,
    Halt,
    HitOrder,
    Instrument,
    ManualClock,
    MassCancel,
    NewOrder,
    Resume,
    Schedule,
    Sequencer,
    SimpleLedger,
    Tick,
)
from engine.messages import ENGINE_COMMANDS
from tests.engine.harness import NS_PER_MINUTE, local_ns


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


# --- determinism ---------------------------------------------------------------------------


def random_commands(seed: int, n: int) -> list[Command]:
    """A mixed stream over the national schedule, one command a minute or so."""
    rng = random.Random(seed)
    clock = ManualClock(local_ns(9, 20))
    seq = Sequencer(clock)
    members = ["A", "B", "C"]
    out: list[Command] = []
    for i in range(n):
        clock.advance(rng.choice([0, 0, 1, NS_PER_MINUTE, 7 * NS_PER_MINUTE]))
        r = rng.random()
        m = rng.choice(members)
        sym = rng.choice(["X", "Y"])
        ref = 1_000 if sym == "X" else 500
        if r < 0.55:
            cmd: Command = NewOrder(
                m, f"{i}", sym, rng.choice([1, 2]), rng.randint(1, 20), ref + rng.randint(-8, 8),
                rng.choice([1, 1, 1, 2]), rng.choice([1, 1, 2, 3]), rng.randint(0, 4),
            )
        elif r < 0.7:
            cmd = Cancel(m, rng.randint(1, i + 1))
        elif r < 0.8:
            cmd = Amend(m, rng.randint(1, i + 1), ref + rng.randint(-8, 8), rng.randint(1, 20))
        elif r < 0.87:
            cmd = HitOrder(m, f"h{i}", sym, rng.randint(1, i + 1), rng.randint(1, 20))
        elif r < 0.9:
            cmd = MassCancel(m if rng.random() < 0.5 else "", rng.choice(["", sym]))
        elif r < 0.93:
            cmd = Halt(rng.choice(["", sym]), rng.random() < 0.5)
        elif r < 0.96:
            cmd = Resume(rng.choice(["", sym]))
        elif r < 0.98:
            cmd = EndOfDay()
        else:
            cmd = Tick()
        out.append(seq.stamp(cmd))
    return out


def new_engine() -> tuple[Engine, SimpleLedger]:
    ledger = SimpleLedger()
    for m in ("A", "B", "C"):
        ledger.deposit(m, "CNY", 300_000)
        ledger.deposit(m, "X", 200)
        ledger.deposit(m, "Y", 200)
    eng = Engine(
        [Instrument(symbol="X", ref_price=1_000), Instrument(symbol="Y", ref_price=500, lot=2)],
        ledger, schedule=Schedule(), member_stp={"C": 4},
    )
    return eng, ledger


def run(cmds: list[Command], batch: bool = False) -> tuple[list[bytes], str]:
    eng, _ = new_engine()
    if batch:
        eng.apply_batch(cmds)
    else:
        for cmd in cmds:
            eng.apply(cmd)
    eng._check()
    return [msgspec.msgpack.encode(e) for e in eng.out], eng.state_hash()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_gives_the_same_events_and_state_hash(seed: int) -> None:
    print("seed", seed)
    cmds = random_commands(seed, 3_000)
    # Replay from the journal's bytes, as recovery would.
    journal = msgspec.msgpack.encode(cmds)
    decoded: list[Command] = msgspec.msgpack.decode(journal, type=list[AnyCommand])  # type: ignore[arg-type]
    events, digest = run(cmds)
    assert run(decoded) == (events, digest)
    assert run(cmds, batch=True) == (events, digest)
    assert len(events) > len(cmds)  # the stream did trade, cancel and reject


def test_the_hash_covers_the_state() -> None:
    cmds = random_commands(7, 500)
    _, digest = run(cmds)
    _, shorter = run(cmds[:-1])
    assert digest != shorter  # at least the last sequence number differs
    eng, ledger = new_engine()
    for cmd in cmds:
        eng.apply(cmd)
    before = eng.state_hash()
    ledger.deposit("A", "CNY", 1)
    assert eng.state_hash() != before  # the ledger's balances are part of it


def test_every_command_type_is_applied() -> None:
    eng, _ = new_engine()
    seq = Sequencer(ManualClock(local_ns(10)))
    for cls in ENGINE_COMMANDS:
        args = {
            NewOrder: ("A", "1", "X", 1, 1, 1_000), Cancel: ("A", 1), Amend: ("A", 1, 1_000, 2),
            HitOrder: ("B", "h", "X", 1, 1),
        }.get(cls, ())
        eng.apply(seq.stamp(cls(*args)))
        eng._check()
    assert eng.last_seq == len(ENGINE_COMMANDS)

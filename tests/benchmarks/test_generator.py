"""The order-flow generator: deterministic per seed, stamped, and every command it
makes is one the engine accepts (cancels name live orders of their owner)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from benchmarks.generator import REGIMES, Workload, generate
from engine import Accepted, Cancel, Event, NewOrder, OrderTracker, Rejected, Trade
from engine.stream import build_engine

SEED = 7


def replay(work: Workload) -> Iterator[Event]:
    """Apply a workload, checking the engine and the order state table as it goes."""
    engine = build_engine(work.header)
    tracker = OrderTracker()
    for part in (work.warmup, work.commands):
        for i in range(0, len(part), 500):
            engine.apply_batch(part[i:i + 500])
            for ev in engine.out:
                tracker.feed(ev)
            engine._check()
            yield from engine.out
            engine.out.clear()


def test_deterministic_per_seed() -> None:
    print(f"seed {SEED}")
    a = generate("mixed", 3_000, SEED)
    b = generate("mixed", 3_000, SEED)
    c = generate("mixed", 3_000, SEED + 1)
    assert a.header == b.header
    assert a.warmup == b.warmup and a.commands == b.commands
    assert a.commands != c.commands


@pytest.mark.parametrize("holds", [False, True], ids=["plain", "holds"])
@pytest.mark.parametrize("regime", REGIMES)
def test_regimes_replay_cleanly(regime: str, holds: bool) -> None:
    print(f"seed {SEED}")
    work = generate(regime, 2_000, SEED, holds=holds)
    cmds = work.all()
    assert len(work.commands) == 2_000
    assert [c.seq for c in cmds] == list(range(1, len(cmds) + 1))
    assert all(a.ts < b.ts for a, b in zip(cmds, cmds[1:], strict=False))
    events = list(replay(work))
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert rejected == []
    if regime in ("mixed", "sweep", "volatile", "crash"):
        assert any(isinstance(e, Trade) for e in events)
    if holds:
        assert all(i.holds for i in work.header.instruments) and work.header.holds


def test_mixed_proportions() -> None:
    work = generate("mixed", 20_000, SEED)
    engine = build_engine(work.header)
    engine.apply_batch(work.warmup)
    engine.out.clear()
    kinds: Counter[str] = Counter()
    for cmd in work.commands:
        engine.apply_batch([cmd])
        traded = any(isinstance(e, Trade) for e in engine.out)
        engine.out.clear()
        kinds["cancel" if isinstance(cmd, Cancel) else "cross" if traded else "add"] += 1
    share = {k: n / len(work.commands) for k, n in kinds.items()}
    # Adds near the touch may trade now and then (own-order STP, a moved touch), so
    # the shares are approximate.
    assert 0.55 <= share["add"] <= 0.65, share
    assert 0.27 <= share["cancel"] <= 0.33, share
    assert 0.07 <= share["cross"] <= 0.13, share


def test_cancel_regime_cancels_every_warmup_order() -> None:
    work = generate("cancel", 1_000, SEED)
    assert all(isinstance(c, NewOrder) for c in work.warmup)
    assert all(isinstance(c, Cancel) for c in work.commands)
    events = list(replay(work))
    assert sum(isinstance(e, Accepted) for e in events) == 1_000


def test_crash_falls_toward_the_floor() -> None:
    work = generate("crash", 10_000, SEED)
    low = work.header.instruments[0].band()[0]
    prices = [e.price for e in replay(work) if isinstance(e, Trade)]
    assert min(prices) <= low + 100


@pytest.mark.parametrize("args", [("nope", 10), ("mixed", 0), ("mixed", -5)])
def test_bad_arguments(args: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        generate(*args)

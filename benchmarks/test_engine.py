"""pytest-benchmark suites for the matching engine: commands per second on generated
flow (``benchmarks.generator``), each regime with and without pre-trade holds.

Run: ``.venv/bin/pytest benchmarks/test_engine.py --benchmark-only -p no:cacheprovider``
(``ETX_BENCH_N`` sets the measured commands per round, default 50,000).

Each round builds a fresh engine from the workload's header, applies the warm-up that
builds its starting book, clears ``engine.out``, and then measures one call of
``engine.apply_batch(commands)``. The commands are generated once per regime (the
engine never changes a command, so rounds can share them). ``extra_info`` carries
the commands per second of the median round. Events are appended to ``engine.out``
as always; encoding them is measured by ``benchmarks/engine_bench.py``.

The ledger behind holds comes from the ``ledger_factory`` fixture (``SimpleLedger``
here); override it to measure another ledger with the same protocol, e.g.
settlement's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.generator import Workload, generate
from engine.ledger import SimpleLedger
from engine.matching import Engine
from engine.stream import FundableLedger, build_engine

N = int(os.environ.get("ETX_BENCH_N", "50000"))
SEED = 1
ROUNDS = 5

_workloads: dict[tuple[str, bool], Workload] = {}


def workload(regime: str, holds: bool) -> Workload:
    key = (regime, holds)
    if key not in _workloads:
        _workloads[key] = generate(regime, N, SEED, holds=holds)
    return _workloads[key]


@pytest.fixture
def ledger_factory() -> Callable[[], FundableLedger]:
    """Makes the empty ledger each round's engine holds against; the stream header's
    deposits are made into it."""
    return SimpleLedger


def run_regime(benchmark: Any, regime: str, holds: bool, ledger_factory: Callable[[], FundableLedger]) -> None:
    work = workload(regime, holds)
    engines: list[Engine] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        engine = build_engine(work.header, ledger_factory())
        engine.apply_batch(work.warmup)
        engine.out.clear()
        engines.append(engine)
        return (work.commands,), {}

    def measured(commands: list[Any]) -> None:
        engines[-1].apply_batch(commands)

    benchmark.pedantic(measured, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["commands"] = len(work.commands)
    benchmark.extra_info["commands_per_second"] = round(len(work.commands) / median)
    benchmark.extra_info["events"] = len(engines[-1].out)
    engines[-1]._check()


@pytest.mark.parametrize("holds", [False, True], ids=["matching", "holds"])
@pytest.mark.parametrize("regime", ["add", "cancel", "sweep", "mixed"])
def test_engine(benchmark: Any, regime: str, holds: bool, ledger_factory: Callable[[], FundableLedger]) -> None:
    benchmark.group = regime
    run_regime(benchmark, regime, holds, ledger_factory)


@pytest.mark.parametrize("holds", [False, True], ids=["matching", "holds"])
@pytest.mark.parametrize("regime", ["deep", "volatile", "crash"])
def test_engine_hard(benchmark: Any, regime: str, holds: bool, ledger_factory: Callable[[], FundableLedger]) -> None:
    benchmark.group = regime
    run_regime(benchmark, regime, holds, ledger_factory)

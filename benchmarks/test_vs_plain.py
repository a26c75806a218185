"""pytest-benchmark suite: etx beside the plain book (``benchmarks.vs_plain``), each
regime at each band width, the plain book and etx fed one order per call with
acknowledgements on, as the gateway runs the engine: ``etx`` builds a command per order
(``Engine.process``), ``etx-direct`` hands over the order's fields (``Engine.new_order``,
``Engine.cancel``).

Run: ``.venv/bin/pytest benchmarks/test_vs_plain.py --benchmark-only -p no:cacheprovider``
(``ETX_BENCH_N`` sets the orders per flow, default 50,000). Each group holds the plain
book and etx on one flow; ``extra_info`` carries orders per second, and etx's entry its
ratio to the plain book measured in the same session. Fills are checked equal before
anything is timed. ``python -m benchmarks.vs_plain`` prints the same as a table, with
the other ways of feeding the engine.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from benchmarks.vs_plain import REGIMES, WIDTHS, Flow, generate, run_etx, run_plain, same_fills

N = int(os.environ.get("ETX_BENCH_N", "50000"))
ROUNDS = 5

_flows: dict[tuple[str, int], Flow] = {}
_plain: dict[tuple[str, int], float] = {}


def flow(regime: str, width: int) -> Flow:
    key = (regime, width)
    if key not in _flows:
        _flows[key] = generate(regime, N, width)
        same_fills(_flows[key])
    return _flows[key]


@pytest.mark.parametrize("who", ["plain", "etx", "etx-direct"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("regime", REGIMES)
def test_vs_plain(benchmark: Any, regime: str, width: int, who: str) -> None:
    f = flow(regime, width)
    benchmark.group = f"{regime} at {width:,} ticks"
    seconds: list[float] = []

    def measured() -> None:
        seconds.append(run_plain(f) if who == "plain" else run_etx(f, "call" if who == "etx" else "direct"))

    benchmark.pedantic(measured, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    seconds.sort()
    rate = len(f.ops) / seconds[len(seconds) // 2]
    benchmark.extra_info["orders_per_second"] = round(rate)
    if who == "plain":
        _plain[(regime, width)] = rate
    elif (regime, width) in _plain:
        benchmark.extra_info["ratio_to_plain"] = round(rate / _plain[(regime, width)], 3)

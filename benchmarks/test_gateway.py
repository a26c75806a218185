"""End-to-end gateway benchmark: one load process against ``etx serve`` (journal,
settlement to SQLite, gateway) over loopback, as ``etx load --spawn`` runs it.

Throughput: orders entered and acknowledged per second, as fast as the exchange
acknowledges them (two member sessions, a tenth of the orders trade, every fill
settled). Latency: median and 99th percentile from write to acknowledgement at half
the throughput reached. Each runs as ``etx serve`` runs by default, and once more
without periodic snapshots, which shows what the snapshot pauses cost. Run with
``.venv/bin/pytest benchmarks/test_gateway.py --benchmark-only -p no:cacheprovider -s``
(``ETX_LOAD_SECONDS`` sets the length of each run, 5 s by default).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from benchmarks.blast import drive
from benchmarks.spawn import Spawned

SECONDS = float(os.environ.get("ETX_LOAD_SECONDS", "5"))


@pytest.mark.parametrize("snapshots", [True, False], ids=["snapshots", "no-snapshots"])
def test_gateway_throughput_and_latency(benchmark: Any, snapshots: bool) -> None:
    results: dict[str, Any] = {}
    serve_args = [] if snapshots else ["--no-snapshots"]

    async def once() -> None:
        for name in ("top", "half"):  # a fresh exchange for each run
            spawned = Spawned(1, serve_args=serve_args)
            port = await spawned.start()
            try:
                rate = 0 if name == "top" else int(results["top"].rate / 2)
                results[name] = await drive("127.0.0.1", port, spawned.creds(), seconds=SECONDS, rate=rate)
            finally:
                spawned.stop()

    benchmark.pedantic(lambda: asyncio.run(once()), rounds=1, iterations=1)
    top, half = results["top"], results["half"]
    benchmark.extra_info.update({
        "orders_per_s": round(top.rate), "fills": top.fills, "half_rate": half.target_rate,
        "latency_p50_us": round(half.latency_p50_us), "latency_p99_us": round(half.latency_p99_us),
    })
    print(f"\nthroughput {top.rate:,.0f} orders/s ({top.acked:,} acknowledged, {top.fills:,} fills); "
          f"at {half.target_rate:,}/s latency median {half.latency_p50_us:,.0f} us, p99 {half.latency_p99_us:,.0f} us")
    assert top.acked == top.orders and half.acked == half.orders

"""What watching costs and how fresh it is: the market data and the operator's console
under load.

Run: ``.venv/bin/python -m benchmarks.console_bench [--rate 10000] [--seconds 20]
[--mqtt 127.0.0.1:1883] [--runs 2]`` (an MQTT broker must answer there; Debian's
``mosquitto``).

1. **Lag** at ``--rate`` orders a second (``etx load``'s paced flow: a tenth of the orders
   trade): an ``etx serve`` spawned with market data to the broker and an ``etx console``
   in front of it with a headless Chromium logged on. The lag of a trade is the time from
   its stamp by the exchange's sequencer (the trade's ``ts``) to its arrival at an MQTT
   subscriber of the trades topic, and at the console's page (measured in the page with
   ``performance.timeOrigin + performance.now()``); same machine, same clock. Medians
   and 99th percentiles over every trade received.
2. **Throughput with the console open**: ``etx load``'s throughput run (as fast as
   acknowledged) against a spawned exchange with no browser, then with ``etx console``
   and three headless Chromiums logged on as operators (each its own console session,
   so three operator feeds), alternated ``--runs`` times; the ratio of the medians.

Caveats: one shared machine runs the exchange, the load, the broker, the console and
the browsers; the figures say what watching costs here, not on an exchange's own
hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

from benchmarks.browser import browser, log_on, text_of, wait_until
from benchmarks.load import Spawned, drive

ROOT = Path(__file__).resolve().parent.parent

# Wrap the page's message handler to time each trade's arrival (the page's clock).
COLLECT = """
window.__lags = [];
const original = take;
take = function (msg) {
  if (msg.type === "trades") {
    const now = (performance.timeOrigin + performance.now()) * 1e6;
    for (const t of msg.trades) window.__lags.push(now - t.ts);
  }
  return original(msg);
};
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def start_console(port: int) -> tuple[subprocess.Popen[bytes], int]:
    from benchmarks.crash_soak import free_port

    web = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "console", "--exchange", f"127.0.0.1:{port}",
                             "--listen", f"127.0.0.1:{web}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    if b"etx console on" not in line:
        raise RuntimeError(f"etx console did not start: {line!r}")
    return proc, web


def open_browsers(n: int, web: int, secret: str) -> list[Any]:
    drivers = []
    for _ in range(n):
        d = browser()
        log_on(d, f"http://127.0.0.1:{web}", "EXCH", "ops", secret)
        wait_until(d, lambda d: "live" in text_of(d, "link"), 30)
        drivers.append(d)
    return drivers


async def lag(rate: int, seconds: float, mqtt: str) -> dict[str, Any]:
    spawned = Spawned(1, serve_args=["--mqtt", mqtt], market_data=True)
    port = await spawned.start()
    console, web = await start_console(port)
    host, _, mport = mqtt.rpartition(":")
    mqtt_lags: list[float] = []
    drivers: list[Any] = []
    try:
        drivers = await asyncio.get_running_loop().run_in_executor(None, open_browsers, 1, web, spawned.secret)
        drivers[0].execute_script(COLLECT)
        async with aiomqtt.Client(host, int(mport)) as client:
            await client.subscribe("etx/v1/#", qos=1)

            async def listen() -> None:
                async for message in client.messages:
                    if str(message.topic).endswith("/trades"):
                        now = time.time_ns()
                        for trade in json.loads(bytes(message.payload)):  # type: ignore[arg-type]
                            mqtt_lags.append(now - trade["ts"])

            listener = asyncio.create_task(listen())
            result = await drive("127.0.0.1", port, spawned.creds(), seconds=seconds, rate=rate, seed=7)
            await asyncio.sleep(2)  # the last conflation intervals
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        page = [float(x) for x in drivers[0].execute_script("return window.__lags;")]
    finally:
        for d in drivers:
            d.quit()
        console.terminate()
        console.wait(30)
        spawned.stop()
    ms = 1e6
    return {
        "rate": rate, "orders_per_s": round(result.rate), "fills": result.fills,
        "mqtt_trades": len(mqtt_lags), "mqtt_p50_ms": percentile(mqtt_lags, 0.5) / ms,
        "mqtt_p99_ms": percentile(mqtt_lags, 0.99) / ms,
        "page_trades": len(page), "page_p50_ms": percentile(page, 0.5) / ms, "page_p99_ms": percentile(page, 0.99) / ms,
    }


async def throughput(seconds: float, browsers: int) -> float:
    spawned = Spawned(1)
    port = await spawned.start()
    console = None
    drivers: list[Any] = []
    try:
        if browsers:
            console, web = await start_console(port)
            drivers = await asyncio.get_running_loop().run_in_executor(None, open_browsers, browsers, web,
                                                                       spawned.secret)
        result = await drive("127.0.0.1", port, spawned.creds(), seconds=seconds, rate=0, seed=3)
        if drivers:  # the pages were alive to the end
            assert all("live" in text_of(d, "link") for d in drivers)
        return result.rate
    finally:
        for d in drivers:
            d.quit()
        if console is not None:
            console.terminate()
            console.wait(30)
        spawned.stop()


async def main(args: argparse.Namespace) -> None:
    print(f"lag at {args.rate:,} orders/s for {args.seconds:g} s, market data to {args.mqtt}:")
    figures = await lag(args.rate, args.seconds, args.mqtt)
    print(f"  {figures['orders_per_s']:,} orders/s, {figures['fills']:,} fills")
    print(f"  trade -> MQTT subscriber: median {figures['mqtt_p50_ms']:.1f} ms, p99 {figures['mqtt_p99_ms']:.1f} ms "
          f"({figures['mqtt_trades']:,} trades)")
    print(f"  trade -> console page:    median {figures['page_p50_ms']:.1f} ms, p99 {figures['page_p99_ms']:.1f} ms "
          f"({figures['page_trades']:,} trades)")
    bare: list[float] = []
    watched: list[float] = []
    for run in range(args.runs):
        bare.append(await throughput(args.seconds, 0))
        watched.append(await throughput(args.seconds, 3))
        print(f"  run {run + 1}: without the console {bare[-1]:,.0f} orders/s, with it and 3 browsers "
              f"{watched[-1]:,.0f} orders/s")
    b, w = statistics.median(bare), statistics.median(watched)
    print(f"throughput: median {b:,.0f} orders/s without, {w:,.0f} with the console open in 3 browsers: "
          f"ratio {w / b:.3f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mqtt", default="127.0.0.1:1883")
    parser.add_argument("--runs", type=int, default=2)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()

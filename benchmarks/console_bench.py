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
   acknowledged) against a spawned exchange in three arms, alternated ``--runs`` times:
   without the console; with ``etx console`` and three console sessions read by plain
   WebSocket clients that fetch the order list as the page does (the console's own
   cost); with ``etx console`` open in three headless Chromiums logged on as operators
   (the pages drawn on the exchange's machine too). For each: the median throughput,
   its ratio to the first arm's and the median of the runs' paired ratios, and the
   exchange's own CPU time per order (from /proc).

Caveats: one shared machine runs the exchange, the load, the broker, the console and
the browsers; the figures say what watching costs here, not on an exchange's own
hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from benchmarks.blast import drive
from benchmarks.browser import browser, log_on, text_of, wait_until
from benchmarks.spawn import Spawned

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


def open_browsers(n: int, web: int, secret: str, nice: int = 0) -> list[Any]:
    """``n`` headless Chromiums logged on to the console at ``web`` (``web`` 0: left on a
    blank page, the browsers' own cost on this machine)."""
    drivers = []
    for _ in range(n):
        d = browser(nice=nice)
        drivers.append(d)
        if web:
            log_on(d, f"http://127.0.0.1:{web}", "EXCH", "ops", secret)
            wait_until(d, lambda d: "live" in text_of(d, "link"), 30)
        else:
            d.get("about:blank")
    return drivers


class Readers:
    """What a browser asks of the console, without a browser: ``n`` console sessions
    logged on over HTTP, each reading its WebSocket and fetching the order list every
    2 s as the page does. With them the console's cost is measured apart from the
    cost of drawing pages on the same machine."""

    def __init__(self, n: int, web: int, secret: str) -> None:
        self.n, self.url, self.secret = n, f"http://127.0.0.1:{web}", secret
        self.http: list[aiohttp.ClientSession] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.messages = 0

    async def start(self) -> None:
        for _ in range(self.n):
            http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            self.http.append(http)
            async with http.get(self.url + "/login") as page:
                token = page.cookies["etx_login"].value
            async with http.post(self.url + "/api/login", headers={"X-CSRF-Token": token},
                                 json={"member": "EXCH", "user": "ops", "secret": self.secret}) as answer:
                assert answer.status == 200, await answer.text()
            ws = await http.ws_connect(self.url + "/ws")
            self.sockets.append(ws)
            self.tasks += [asyncio.create_task(self._read(ws)), asyncio.create_task(self._poll(http))]

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            self.messages += 1

    async def _poll(self, http: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(2)
            async with http.get(self.url + "/api/orders?instrument=CEA24") as answer:
                await answer.read()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ws in self.sockets:
            await ws.close()
        for http in self.http:
            await http.close()


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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time so far of the processes under ``roots`` (them included): a browser's
    chromedriver, its chromium and the chromium's renderers and helpers."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    total, wanted = 0.0, set(roots)
    for pid in parent:
        p = pid
        while p and p not in wanted:
            p = parent.get(p, 0)
        if p:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
    return total


class Arm(typing.NamedTuple):
    rate: float  # orders a second acknowledged
    cost: float  # the exchange's CPU time an order, µs
    watching: float  # CPU seconds a second of the console and the browsers (cores busy)


async def throughput(seconds: float, browsers: int = 0, readers: int = 0, nice: int = 0, blank: bool = False) -> Arm:
    """What ``etx load`` gets with nothing, plain readers or browsers watching (with
    ``blank``, browsers open on a blank page and no console)."""
    spawned = Spawned(1)
    port = await spawned.start()
    console = None
    drivers: list[Any] = []
    plain = None
    try:
        web = 0
        if (browsers and not blank) or readers:
            console, web = await start_console(port)
        if browsers:
            drivers = await asyncio.get_running_loop().run_in_executor(None, open_browsers, browsers, web,
                                                                       spawned.secret, nice)
        if readers:
            plain = Readers(readers, web, spawned.secret)
            await plain.start()
        await asyncio.sleep(2)  # the pages drawn and live
        watchers = [console.pid] if console is not None else []
        watchers += [d.service.process.pid for d in drivers if d.service.process is not None]
        before, watched_before, t0 = cpu_seconds(spawned.proc.pid), tree_cpu_seconds(watchers), time.monotonic()
        result = await drive("127.0.0.1", port, spawned.creds(), seconds=seconds, rate=0, seed=3)
        used = cpu_seconds(spawned.proc.pid) - before
        watching = (tree_cpu_seconds(watchers) - watched_before) / (time.monotonic() - t0)
        if drivers and web:  # the pages were alive to the end
            assert all("live" in text_of(d, "link") for d in drivers)
        if plain is not None:
            assert plain.messages > 0
        return Arm(result.rate, used / max(1, result.orders) * 1e6, watching)
    finally:
        if plain is not None:
            await plain.stop()
        for d in drivers:
            d.quit()
        if console is not None:
            console.terminate()
            console.wait(30)
        spawned.stop()


async def main(args: argparse.Namespace) -> None:
    if not args.no_lag:
        print(f"lag at {args.rate:,} orders/s for {args.seconds:g} s, market data to {args.mqtt}:")
        figures = await lag(args.rate, args.seconds, args.mqtt)
        print(f"  {figures['orders_per_s']:,} orders/s, {figures['fills']:,} fills")
        print(f"  trade -> MQTT subscriber: median {figures['mqtt_p50_ms']:.1f} ms, "
              f"p99 {figures['mqtt_p99_ms']:.1f} ms ({figures['mqtt_trades']:,} trades)")
        print(f"  trade -> console page:    median {figures['page_p50_ms']:.1f} ms, "
              f"p99 {figures['page_p99_ms']:.1f} ms ({figures['page_trades']:,} trades)")
    arms: dict[str, dict[str, Any]] = {
        "without the console": {},
        "console, 3 sessions read without a browser": {"readers": 3},
        "console open in 3 headless Chromiums": {"browsers": 3},
        "the same, the browsers at nice 19": {"browsers": 3, "nice": 19},
        "3 Chromiums on a blank page, no console": {"browsers": 3, "blank": True},
    }
    names = list(arms)
    got: dict[str, list[Arm]] = {name: [] for name in arms}
    print(f"etx load throughput for {args.seconds:g} s, {args.runs} runs, the arms' order rotated each run:")
    for run in range(args.runs):
        for name in names[run % len(names):] + names[:run % len(names)]:
            got[name].append(await throughput(args.seconds, **arms[name]))
        print(f"  run {run + 1}: " + "; ".join(f"{name} {got[name][-1].rate:,.0f}/s" for name in names), flush=True)
    base = got[names[0]]
    b, cb = statistics.median(a.rate for a in base), statistics.median(a.cost for a in base)
    print("medians over the runs: orders/s and its ratio to the arm without (the median of each run's ratio in "
          "brackets); the exchange's CPU time an order; the cores the console and browsers kept busy")
    for name in names:
        paired = [a.rate / a0.rate for a, a0 in zip(got[name], base, strict=True)]
        r = statistics.median(a.rate for a in got[name])
        c = statistics.median(a.cost for a in got[name])
        w = statistics.median(a.watching for a in got[name])
        print(f"  {name:<44} {r:>10,.0f}/s  ratio {r / b:.3f} (paired {statistics.median(paired):.3f})"
              f"  {c:5.2f} µs an order (ratio {c / cb:.3f})  watching {w:.2f} cores")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mqtt", default="127.0.0.1:1883")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-lag", action="store_true", help="only the throughput arms")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()

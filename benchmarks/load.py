"""``etx load``: load-test an exchange over TCP and report throughput and latency.

One process drives ``--pairs`` pairs of member sessions (a buyer and a seller member
each) against a running exchange, or against one it starts itself (``--spawn``: ``etx
serve`` in a subprocess on a fresh folder, journal and SQLite registry included, whose
members the load tool funds through the registry clerk and authority first).

- Throughput (``--rate 0``): each session sends pre-encoded orders as fast as the
  exchange acknowledges them, keeping at most ``--window`` unacknowledged orders in
  flight; the figure is acknowledged orders (Accepted or Rejected reports) per second.
- Latency (``--rate N``): orders are sent at N per second in total, paced every
  millisecond; the latency of an order is the time from its write to the arrival of
  its acknowledgement, on this machine's monotonic clock. Median and 99th percentile.

Orders are limits on both sides of the reference price; a tenth of them are priced
through the other side and trade (every fill is settled by the exchange's ledger and
written to its registry), the rest rest in the book, as most orders do on a market.
The load generator is deliberately lean (pre-encoded frames, a bare asyncio Protocol,
one decoder) so that it does not measure itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from engine import NewOrder, Side
from gateway.auth import hash_secret
from gateway.client import Client
from gateway.framing import MAX_OUTBOUND_FRAME, FrameSplitter, encode_frame
from gateway.protocol import PROTOCOL_VERSION, CodMode, Heartbeat, Logon, Report

SYMBOL = "CEA24"
REF = 10_000
_ACCEPTED, _REJECTED, _FILL = 101, 102, 170


class LoadResult(msgspec.Struct):
    orders: int
    acked: int
    rejected: int
    fills: int
    seconds: float
    rate: float  # acknowledged orders per second
    latency_p50_us: float = 0.0
    latency_p99_us: float = 0.0
    latency_p999_us: float = 0.0
    latency_max_us: float = 0.0
    target_rate: int = 0


class _Session(asyncio.Protocol):
    """A bare member session: pre-encoded orders out, acknowledgements counted in."""

    def __init__(self) -> None:
        self.splitter = FrameSplitter(MAX_OUTBOUND_FRAME)
        self.decode = msgspec.msgpack.decode  # generic: only the tag and a few fields are read
        self.transport: asyncio.Transport | None = None
        self.acked = self.rejected = self.fills = 0
        self.sent_at: list[float] = []  # send time per order index
        self.latencies: list[float] = []
        self.prefix = ""  # client order ids of this run start with it
        self.logged_on: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.wake = asyncio.Event()
        self.timing = False
        self.clock = time.perf_counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.wake.set()
        if not self.closed.done():
            self.closed.set_result(exc)
        if not self.logged_on.done():
            self.logged_on.set_exception(ConnectionError("closed before logon"))

    def data_received(self, data: bytes) -> None:
        decode = self.decode
        now = self.clock()
        for frame in self.splitter.split(data):
            msg = decode(frame)
            tag = msg[0]
            if tag == 160:  # Report(seq_out, body)
                body = msg[2]
                kind = body[0]
                if kind == _ACCEPTED or kind == _REJECTED:
                    if not body[4].startswith(self.prefix):
                        continue  # replayed at logon from an earlier run
                    self.acked += 1
                    if kind == _REJECTED:
                        self.rejected += 1
                    if self.timing:
                        coid = body[4]
                        idx = int(coid[coid.rindex("-") + 1:])
                        self.latencies.append(now - self.sent_at[idx])
                elif kind == _FILL and body[4].startswith(self.prefix):
                    self.fills += 1
            elif tag == 150 and not self.logged_on.done():
                self.logged_on.set_result(msg)
            elif tag in (151, 154):
                if not self.logged_on.done():
                    self.logged_on.set_exception(ConnectionError(f"refused: {msg}"))
        self.wake.set()


WRITE_FRAMES = 4096  # orders joined into one socket write by the throughput mode
CROSS_SHARE = 0.1  # orders priced through the other side's book; the rest rest passively


def _orders(member: str, prefix: str, side: int, n: int, rng: random.Random, qty_max: int) -> list[bytes]:
    # Client order ids are PREFIX-INDEX: the index finds the send time of an order.
    """Passive limits 1-30 ticks from the reference on the order's own side, and a
    share priced 20 ticks through it that trade against the other side's book."""
    out = []
    sign = -1 if side == Side.BUY else 1
    for i in range(n):
        price = REF - sign * 20 if rng.random() < CROSS_SHARE else REF + sign * rng.randint(1, 30)
        out.append(encode_frame(NewOrder(member, f"{prefix}-{i}", SYMBOL, side, rng.randint(1, qty_max), price)))
    return out


async def _open(host: str, port: int, member: str, user: str, secret: str, prefix: str) -> _Session:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_Session, host, port)
    proto.prefix = prefix  # before the logon: replayed reports of earlier runs must not count
    assert proto.transport is not None
    proto.transport.write(encode_frame(Logon(PROTOCOL_VERSION, member, user, secret, 0, int(CodMode.ON))))
    await asyncio.wait_for(proto.logged_on, 10)
    return proto


async def drive(host: str, port: int, creds: list[tuple[str, str, str, int]], *, seconds: float, rate: int,
                window: int = 20_000, qty_max: int = 10, seed: int = 1) -> LoadResult:
    """Run the load over sessions given as (member, user, secret, side)."""
    rng = random.Random(seed)
    n = len(creds)
    per = int((rate or 150_000) * seconds / n * 1.2) + 1000
    run_id = os.urandom(3).hex()
    # Encoded before logging on: the sessions must not sit silent past the heartbeat timeout.
    frames = [_orders(m, f"{run_id}{k}", side, per, rng, qty_max) for k, (m, _, _, side) in enumerate(creds)]
    sessions = [await _open(host, port, m, u, s, f"{run_id}{k}-") for k, (m, u, s, _) in enumerate(creds)]
    loop = asyncio.get_running_loop()
    beat = encode_frame(Heartbeat())

    async def heartbeats() -> None:
        while True:
            await asyncio.sleep(0.3)
            for s in sessions:
                if s.transport is not None and not s.transport.is_closing():
                    s.transport.write(beat)

    beating = asyncio.create_task(heartbeats())
    for s in sessions:
        s.sent_at = [0.0] * per
        s.timing = bool(rate)
    start = loop.time()
    end = start + seconds
    sent = [0] * n

    async def blast(k: int) -> None:  # throughput: keep `window` orders in flight
        s, fr = sessions[k], frames[k]
        while loop.time() < end and sent[k] < per and not s.closed.done():
            # Fill the whole window at once (in writes of at most WRITE_FRAMES frames),
            # so that the exchange always has input queued and never waits on this tool.
            upto = min(per, s.acked + window)
            while sent[k] < upto:
                step = min(upto, sent[k] + WRITE_FRAMES)
                s.transport.write(b"".join(fr[sent[k]:step]))  # type: ignore[union-attr]
                sent[k] = step
            s.wake.clear()
            await s.wake.wait()

    async def pace() -> None:  # latency: `rate` orders a second, written every millisecond or so
        total = 0
        t0 = time.perf_counter()
        while loop.time() < end:
            now = time.perf_counter()
            due = int((now - t0) * rate) - total  # catches up if a sleep ran long
            if due >= 1:
                # The orders due now, spread over the sessions in turn; each session
                # writes its share in one write, as a client does that sends several
                # orders in one turn of its loop.
                first = total % n  # who is next in turn
                total += due
                for k in range(n):
                    s = sessions[k]
                    if s.closed.done():
                        raise ConnectionError("the exchange closed a load session")
                    share = due // n + (1 if (k - first) % n < due % n else 0)
                    i = sent[k]
                    upto = min(per, i + share)
                    if upto <= i:
                        continue
                    s.sent_at[i:upto] = [now] * (upto - i)
                    s.transport.write(b"".join(frames[k][i:upto]))  # type: ignore[union-attr]
                    sent[k] = upto
                if all(sent[k] >= per for k in range(n)):
                    return
            await asyncio.sleep(0.001)

    if rate:
        await pace()
    else:
        await asyncio.gather(*(blast(k) for k in range(n)))
    elapsed = loop.time() - start
    # Let the acknowledgements of what was sent arrive (bounded wait).
    deadline = loop.time() + 30
    while sum(s.acked for s in sessions) < sum(sent) and loop.time() < deadline:
        if any(s.closed.done() for s in sessions):
            break
        await asyncio.sleep(0.01)
    beating.cancel()
    if any(s.closed.done() for s in sessions):
        raise ConnectionError("the exchange closed a load session before acknowledging everything")
    acked_total = sum(s.acked for s in sessions)
    if not rate:
        elapsed = loop.time() - start  # throughput counts until the last acknowledgement
    lat = sorted(x for s in sessions for x in s.latencies)
    for s in sessions:
        assert s.transport is not None
        s.transport.close()
    res = LoadResult(sum(sent), acked_total, sum(s.rejected for s in sessions), sum(s.fills for s in sessions),
                     elapsed, acked_total / elapsed if elapsed else 0.0, target_rate=rate)
    if lat:
        res.latency_p50_us = lat[len(lat) // 2] * 1e6
        res.latency_p99_us = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
        res.latency_p999_us = lat[min(len(lat) - 1, int(len(lat) * 0.999))] * 1e6
        res.latency_max_us = lat[-1] * 1e6
    return res


# --- a spawned exchange ---------------------------------------------------------------


class Spawned:
    """``etx serve`` in a subprocess on a fresh folder, with funded load members."""

    def __init__(self, pairs: int, folder: str | None = None, serve_args: list[str] | None = None,
                 log_path: str | None = None, market_data: bool = False) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="etx-load-"))
        self.log_path = log_path  # the exchange's output is appended to it at stop
        self.pairs = pairs
        self.market_data = market_data  # publish to the broker --mqtt names (serve_args), else none
        self.serve_args = list(serve_args or [])  # more options for etx serve
        self.secret = secrets.token_urlsafe(12)
        self.members = [f"L{i:02d}" for i in range(2 * pairs)]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def config(self) -> str:
        h = hash_secret(self.secret, n=1 << 12)
        lines = ['[exchange]', 'listen = "127.0.0.1:0"', 'schedule = "always"', 'operator_member = "EXCH"',
                 '[fees]', 'trading_rate = 0.0003', 'registry_rate = 0.00005',
                 '[session]', 'orders_per_second = 10000000', 'burst = 10000000',
                 '[[instrument]]', f'symbol = "{SYMBOL}"', 'ref_price = 100.00']
        for m in self.members:
            lines += ['[[member]]', f'id = "{m}"', '[[user]]', f'member = "{m}"', 'user = "load"', 'role = "trader"',
                      f'secret_hash = "{h}"']
        for u, role in (("clerk", "clerk"), ("authority", "authority"), ("ops", "operator")):
            lines += ['[[user]]', 'member = "EXCH"', f'user = "{u}"', f'role = "{role}"', f'secret_hash = "{h}"']
        return "\n".join(lines) + "\n"

    async def start(self) -> int:
        cfg = self.folder / "etx.toml"
        cfg.write_text(self.config())
        self.proc = subprocess.Popen(
            [sys.executable, *os.environ.get("ETX_LOAD_PYFLAGS", "").split(), "-m", "tools.cli", "serve", "--config", str(cfg), "--data", str(self.folder / "data"),
             *([] if self.market_data else ["--no-market-data"]), "--log-level", "WARNING", *self.serve_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, self.proc.stdout.readline)
            if not line:
                raise RuntimeError("etx serve exited before listening")
            if line.startswith("etx serving on "):
                self.port = int(line.split()[3].rstrip(";").rpartition(":")[2])
                break
        await self.fund()
        return self.port

    async def fund(self) -> None:
        from settlement import Allocate, Deposit, HolderType, OpenAccount, RegistryDone

        clerk = Client("127.0.0.1", self.port, "EXCH", "clerk", self.secret)
        auth = Client("127.0.0.1", self.port, "EXCH", "authority", self.secret)
        await clerk.connect()
        await auth.connect()
        for m in self.members:
            clerk.send(OpenAccount("", m, int(HolderType.INSTITUTION), m))
            clerk.send(Deposit("", m, 10**13))
            auth.send(Allocate("", "AUTHORITY", m, SYMBOL, 10**9))
        from settlement import RegistryRejected

        # Each staff user has its own stream: each reads the answers to its commands.
        for client, answers in ((clerk, 2 * len(self.members)), (auth, len(self.members))):
            for _ in range(answers):
                msg = await client.wait_for(
                    lambda x: isinstance(x, Report) and isinstance(x.body, RegistryDone | RegistryRejected), 30)
                if not isinstance(msg.body, RegistryDone):
                    raise RuntimeError(f"funding refused: {msg.body}")
        await clerk.close()
        await auth.close()

    def creds(self) -> list[tuple[str, str, str, int]]:
        return [(m, "load", self.secret, int(Side.BUY if i % 2 == 0 else Side.SELL)) for i, m in enumerate(self.members)]

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(2)  # SIGINT: graceful
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(out)
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spawn", action="store_true", help="start an exchange (etx serve) for the test")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7400)
    parser.add_argument("--session", action="append", default=[], metavar="MEMBER:USER:SECRET:SIDE",
                        help="a member session to drive (without --spawn); SIDE is buy or sell; repeatable")
    parser.add_argument("--pairs", type=int, default=1, help="buyer/seller session pairs with --spawn (default 1)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=0, help="orders per second (0: as fast as acknowledged)")
    parser.add_argument("--latency-at-half", action="store_true",
                        help="after the throughput run, measure latency at half the rate reached")
    parser.add_argument("--window", type=int, default=20_000, help="unacknowledged orders in flight per session")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for the spawned etx serve, e.g. --serve-arg=--no-snapshots; repeatable")
    parser.add_argument("--serve-log", metavar="FILE",
                        help="append the spawned etx serve's output to FILE (with --serve-arg=--log-level=INFO "
                             "it shows each snapshot's pause and write time)")


def _print(res: LoadResult) -> None:
    what = f"paced at {res.target_rate:,}/s" if res.target_rate else "as fast as acknowledged"
    print(f"  {what}: {res.orders:,} orders sent, {res.acked:,} acknowledged ({res.rejected:,} rejected), "
          f"{res.fills:,} fills in {res.seconds:.2f}s = {res.rate:,.0f} orders/s")
    if res.latency_p50_us:
        print(f"  latency (write to acknowledgement): median {res.latency_p50_us:,.0f} us, "
              f"p99 {res.latency_p99_us:,.0f} us, p99.9 {res.latency_p999_us:,.0f} us, max {res.latency_max_us:,.0f} us")


async def _main(args: argparse.Namespace) -> int:
    spawned = None
    if args.spawn:
        spawned = Spawned(args.pairs, serve_args=args.serve_arg, log_path=args.serve_log)
        port = await spawned.start()
        host, creds = "127.0.0.1", spawned.creds()
        print(f"etx load: exchange spawned on 127.0.0.1:{port} in {spawned.folder}")
    else:
        host, port = args.host, args.port
        creds = []
        for spec in args.session:
            m, u, s, side = spec.split(":")
            creds.append((m, u, s, int(Side.BUY if side == "buy" else Side.SELL)))
        if not creds:
            print("etx load: give --spawn or at least one --session MEMBER:USER:SECRET:SIDE")
            return 2
    try:
        res = await drive(host, port, creds, seconds=args.seconds, rate=args.rate, window=args.window)
        _print(res)
        if args.latency_at_half and not args.rate:
            half = int(res.rate / 2)
            if spawned is not None:  # a fresh exchange: no backlog of the first run
                print("  exchange: " + (spawned.stop().strip().splitlines() or ["(no output)"])[-1])
                spawned = Spawned(args.pairs, serve_args=args.serve_arg, log_path=args.serve_log)
                port = await spawned.start()
                creds = spawned.creds()
            res2 = await drive(host, port, creds, seconds=args.seconds, rate=half, seed=2)
            _print(res2)
    finally:
        if spawned is not None:
            tail = spawned.stop().strip().splitlines()
            print("  exchange: " + (tail[-1] if tail else "(no output)"))
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))

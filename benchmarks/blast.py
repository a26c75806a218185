"""The throughput benchmark's lean driver (``drive``), used by benchmarks/test_gateway.py and
benchmarks/console_bench.py so that their figures stay comparable across changes;
``etx load`` itself is the open-loop generator of benchmarks/loadgen.py.

``drive`` runs member sessions given as (member, user, secret, side), usually the
buyers and sellers of a ``benchmarks.spawn.Spawned`` exchange.

- Throughput (``rate`` 0): each session sends pre-encoded orders as fast as the
  exchange acknowledges them, keeping at most ``--window`` unacknowledged orders in
  flight; the figure is acknowledged orders (Accepted or Rejected reports) per second.
- Latency (``rate`` N): orders are sent at N per second in total, paced every
  millisecond; the latency of an order is the time from its write to the arrival of
  its acknowledgement, on this machine's monotonic clock. Median and 99th percentile.

Orders are limits on both sides of the reference price; a tenth of them are priced
through the other side and trade (every fill is settled by the exchange's ledger and
written to its registry), the rest rest in the book, as most orders do on a market.
The load generator is deliberately lean (pre-encoded frames, a bare asyncio Protocol,
one decoder) so that it does not measure itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import msgspec

from engine import NewOrder, Side
from gateway.framing import MAX_OUTBOUND_FRAME, FrameSplitter, encode_frame
from gateway.protocol import PROTOCOL_VERSION, CodMode, Heartbeat, Logon

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

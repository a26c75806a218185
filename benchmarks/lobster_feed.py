"""A LOBSTER day through the gateway: ``etx load --lobster``.

The file is read as ``benchmarks/lobster.py`` reads it for the engine (the instrument
from its prices, no band, tick one cent; the opening book from the orderbook file's first
row), and each row becomes what a member would send over the wire, from two member
sessions: every buy from the first, every sell from the second, so no two orders that can
meet share a member and self-trade prevention never fires:

The instrument is named as an allowance vintage of the file's year (the registry holds
only vintages): GOOG of 2012-06-21 trades as ``CEA12``.

- type 1 (new) -> ``NewOrder`` (client order id ``L<id>``);
- type 2 (partial cancel) -> ``Amend`` to the smaller quantity at the same price (the
  rest cancelled when nothing is left), type 3 (delete) -> ``Cancel``: both need the
  exchange's order id, so they wait for the order's ``Accepted`` when it has not come yet
  (their latency still runs from their own intended time);
- type 4 (visible execution) -> an IOC ``NewOrder`` from the other side's session at that
  price and size; types 5, 6, 7 are counted and ignored; rows about orders the day did not
  add, or at prices finer than a cent, are counted as not applicable.

Pace: the recorded timestamps (``--speed 1``), compressed by a factor, or ``max``: as fast
as answered with a window of unanswered commands per session. Latency, in an HDR
histogram, runs from each command's intended send time to its answer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.loadgen import (
    LATENCY_MAX_US,
    Tick,
    Wire,
    distribution,
    fence,
    heartbeats,
    histogram,
    open_wire,
    percentiles,
)
from benchmarks.lobster import PRICE_PER_CENT, LobsterReplay, parse_message
from engine.messages import Amend, Cancel, NewOrder, OrdType, Side, TimeInForce
from gateway.framing import encode_frame
from gateway.protocol import CodMode

BUY, SELL = int(Side.BUY), int(Side.SELL)
WINDOW = 2000  # --speed max: unanswered commands per session


class _Session(Wire):
    def __init__(self, feed: LobsterFeed) -> None:
        super().__init__()
        self.feed = feed
        self.waiting = 0

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        for frame in self.splitter.split(data):
            msg = msgspec.msgpack.decode(frame)
            if msg[0] == 160:
                self.feed.answer(self, msg[2], now, msg[1] == 0)
            else:
                self.session_message(msg)
        for s in self.feed.sessions:  # cancels that waited for an acceptance go out now
            s.flush()
        self.wake.set()


class LobsterFeed:
    def __init__(self, path: str, rows: int | None = None) -> None:
        folder = Path(path)
        if folder.is_dir() and not list(folder.glob("*_message_*.csv")):
            zips = sorted(folder.glob("*.zip"))
            if len(zips) == 1:
                path = str(zips[0])  # a folder holding one LOBSTER zip (the sample day under ../shared)
        self.replay = LobsterReplay(path, limit=rows, check_every=0)
        self.source = self.replay.source
        rows_iter = self.replay._rows()
        first_row = next(rows_iter, None)
        self.first = parse_message(first_row[1], self.source.base_ns) if first_row else None
        self.opening = self.replay._opening_book(self.first)
        self.rules = self.replay._instrument(self.opening)
        # The registry holds allowance vintages: the day's stock trades as the vintage of
        # its year (GOOG of 2012-06-21 as CEA12), prices and sizes as recorded.
        self.symbol = f"CEA{self.source.date[2:4]}"
        # LOBSTER id -> [exchange order id (0 until accepted), open quantity, side, price]
        self.orders: dict[int, list[int]] = {}
        self.by_exchange_id: dict[int, int] = {}
        self.deferred: dict[int, list[tuple[str, int, float]]] = {}  # id -> (action, size, intended time)
        self.due_new: dict[str, tuple[str, float]] = {}  # coid -> (kind, intended)
        self.due_cancel: dict[int, float] = {}
        self.due_amend: dict[int, float] = {}
        self.sent: Counter[str] = Counter()
        self.answered_n: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.rows = 0
        self.not_applicable = 0
        self.ignored = 0
        self.fills = 0
        self.trade_ids: set[int] = set()
        self.hist = histogram()
        self.tick_hist = histogram()
        self.tick_sent = self.tick_answered = self.tick_rejected = 0
        self.seq = 0

    def instrument_toml(self) -> str:
        r = self.rules
        return "\n".join([f'symbol = "{self.symbol}"', f"ref_price = {r.ref_price / 100:.2f}", "tick = 0.01",
                          "band_pct = 0", f"price_min = {r.price_min / 100:.2f}", f"price_max = {r.price_max / 100:.2f}",
                          f"qty_max = {max(r.qty_max, 1)}"])

    # --- answers ------------------------------------------------------------------------

    def _record(self, kind: str, seconds: float, rejected: str | None) -> None:
        us = min(max(int(seconds * 1e6), 1), LATENCY_MAX_US)
        self.hist.record_value(us)
        self.tick_hist.record_value(us)
        self.answered_n[kind] += 1
        self.tick_answered += 1
        if rejected is not None:
            self.rejected[f"{kind}:{rejected}"] += 1
            self.tick_rejected += 1

    def answer(self, s: _Session, body: list[Any], now: float, refused: bool) -> None:
        kind = body[0]
        if kind == 101:  # Accepted
            coid = body[4]
            due = self.due_new.pop(coid, None)
            if due is None:
                return
            s.waiting -= 1
            self._record(due[0], now - due[1], None)
            if coid[0] == "L":
                lob_id = int(coid[1:])
                row = self.orders.get(lob_id)
                if row is not None:
                    row[0] = body[5]
                    self.by_exchange_id[body[5]] = lob_id
                    for action, size, intended in self.deferred.pop(lob_id, []):
                        self._act(action, lob_id, size, intended)
        elif kind == 102:  # Rejected
            coid, order_id, reason = body[4], body[5], body[6]
            tag = f"{reason}{':gateway' if refused else ''}"
            if coid:
                due = self.due_new.pop(coid, None)
                if due is not None:
                    s.waiting -= 1
                    self._record(due[0], now - due[1], tag)
                    if coid[0] == "L":
                        self.orders.pop(int(coid[1:]), None)
                        self.deferred.pop(int(coid[1:]), None)
            elif order_id in self.due_cancel:
                s.waiting -= 1
                self._record("cancel", now - self.due_cancel.pop(order_id), tag)
            elif order_id in self.due_amend:
                s.waiting -= 1
                self._record("amend", now - self.due_amend.pop(order_id), tag)
        elif kind == 170:  # Fill
            self.fills += 1
            self.trade_ids.add(body[5])
            lob_id = self.by_exchange_id.get(body[3])
            if lob_id is not None and lob_id in self.orders:
                self.orders[lob_id][1] = body[11]
                if not body[11]:
                    self._gone(body[3])
        elif kind == 104:  # Cancelled
            order_id = body[4]
            due = self.due_cancel.pop(order_id, None)
            if due is not None and body[7] == 1:
                s.waiting -= 1
                self._record("cancel", now - due, None)
            self._gone(order_id)
        elif kind == 105:  # Amended
            due = self.due_amend.pop(body[4], None)
            if due is not None:
                s.waiting -= 1
                self._record("amend", now - due, None)

    def _gone(self, order_id: int) -> None:
        lob_id = self.by_exchange_id.pop(order_id, None)
        if lob_id is not None:
            self.orders.pop(lob_id, None)

    # --- commands -----------------------------------------------------------------------

    def _session(self, side: int) -> _Session:
        return self.sessions[0] if side == BUY else self.sessions[1]

    def _new(self, kind: str, coid: str, side: int, size: int, price: int, intended: float, tif: int = 1) -> None:
        s = self._session(side)
        s.out.append(encode_frame(NewOrder(self.members[0 if side == BUY else 1], coid, self.symbol, side, size, price,
                                           int(OrdType.LIMIT), tif)))
        self.due_new[coid] = (kind, intended)
        self.sent[kind] += 1
        self.tick_sent += 1
        s.waiting += 1

    def _act(self, action: str, lob_id: int, size: int, intended: float) -> None:
        """A cancel or partial cancel of an accepted order."""
        row = self.orders.get(lob_id)
        if row is None:
            self.not_applicable += 1
            return
        order_id, open_qty, side = row[0], row[1], row[2]
        if order_id in self.due_cancel or order_id in self.due_amend:
            self.deferred.setdefault(lob_id, []).append((action, size, intended))  # after the one on its way
            return
        s = self._session(side)
        member = self.members[0 if side == BUY else 1]
        if action == "amend" and open_qty > size:
            s.out.append(encode_frame(Amend(member, order_id, row[3], open_qty - size)))
            row[1] = open_qty - size
            self.due_amend[order_id] = intended
            self.sent["amend"] += 1
        else:
            s.out.append(encode_frame(Cancel(member, order_id)))
            self.due_cancel[order_id] = intended
            self.sent["cancel"] += 1
        self.tick_sent += 1
        s.waiting += 1

    def _row(self, m: Any, intended: float) -> None:
        self.rows += 1
        if m.type > 4:
            self.ignored += 1
            return
        if m.price % PRICE_PER_CENT:
            self.not_applicable += 1
            return
        price = m.price // PRICE_PER_CENT
        if m.type == 1:
            self.orders[m.order_id] = [0, m.size, m.side, price]
            self._new("new", f"L{m.order_id}", m.side, m.size, price, intended)
        elif m.type in (2, 3):
            action = "amend" if m.type == 2 else "cancel"
            row = self.orders.get(m.order_id)
            if row is None:
                self.not_applicable += 1
            elif not row[0]:
                self.deferred.setdefault(m.order_id, []).append((action, m.size, intended))
            else:
                self._act(action, m.order_id, m.size, intended)
        else:  # a visible execution of a resting order: the other side's IOC at its price
            self.seq += 1
            self._new("execution", f"X{self.seq}", SELL if m.side == BUY else BUY, m.size, price, intended,
                      int(TimeInForce.IOC))

    # --- the run ------------------------------------------------------------------------

    async def run(self, host: str, port: int, creds: list[tuple[str, str, str, int]], speed: str,
                  report: dict[str, Any], progress: bool = True) -> None:
        if len(creds) < 2:
            raise ConnectionError("a LOBSTER replay needs two member sessions (buys and sells)")
        loop = asyncio.get_running_loop()
        self.sessions: list[_Session] = []
        self.members = [creds[0][0], creds[1][0]]
        for member, user, secret, _ in creds[:2]:
            self.sessions.append(await open_wire(lambda: _Session(self), host, port, member, user, secret,
                                                 int(CodMode.OFF)))

        timeline: list[Tick] = []

        async def ticker(start: float) -> None:
            while True:
                await asyncio.sleep(1.0)
                h = self.tick_hist
                timeline.append(Tick(round(loop.time() - start, 3), self.tick_sent, self.tick_answered,
                                     self.tick_rejected, h.get_value_at_percentile(50) if h.get_total_count() else 0,
                                     h.get_value_at_percentile(99) if h.get_total_count() else 0, h.get_max_value()))
                if progress and sys.stdout.isatty():
                    print(f"\r  lobster {loop.time() - start:6.1f}s  rows {self.rows:,}  sent {sum(self.sent.values()):,}"
                          f"  answered {sum(self.answered_n.values()):,}  p99 {timeline[-1].p99_us / 1000:.2f} ms   ",
                          end="", flush=True)
                self.tick_hist = histogram()
                self.tick_sent = self.tick_answered = self.tick_rejected = 0

        beating = asyncio.create_task(heartbeats(self.sessions))
        start = loop.time()
        ticking = asyncio.create_task(ticker(start))
        t0 = time.perf_counter()
        factor = 0.0 if speed == "max" else float(speed)
        try:
            # The opening book: one order per level and side, entered first.
            n = 0
            for side in (BUY, SELL):
                for lob_price, size in sorted(self.opening[side].items()):
                    if lob_price % PRICE_PER_CENT:
                        continue
                    n += 1
                    self._new("opening", f"S{n}", side, size, lob_price // PRICE_PER_CENT, t0)
            for s in self.sessions:
                s.flush()
            rows = self.replay._rows()
            first_ts = self.first.ts if self.first is not None else 0
            pending: deque[Any] = deque()
            for _, line in rows:
                try:
                    m = parse_message(line, self.source.base_ns)
                except ValueError:
                    self.not_applicable += 1
                    continue
                if factor:
                    intended = t0 + (m.ts - first_ts) / 1e9 / factor
                    wait = intended - time.perf_counter()
                    if wait > 0.001:
                        for s in self.sessions:
                            s.flush()
                        await asyncio.sleep(wait)
                    self._row(m, intended)
                else:
                    pending.append(m)
                    if len(pending) >= 256:
                        await self._window(pending)
                if any(s.closed.done() for s in self.sessions):
                    raise ConnectionError("the exchange closed a session of the replay")
            if pending:
                await self._window(pending)
            for s in self.sessions:
                s.flush()
            send_seconds = loop.time() - start
            deadline = loop.time() + 30
            while self._unanswered() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            await fence(list(self.sessions), self.symbol, deadline)
        finally:
            beating.cancel()
            ticking.cancel()
            for s in self.sessions:
                if s.transport is not None:
                    s.transport.close()
            self.source.close()
        if progress and sys.stdout.isatty():
            print()
        seconds = loop.time() - start
        answered = sum(self.answered_n.values())
        result = {
            "mode": "lobster", "target_rate": 0, "seconds": seconds, "send_seconds": send_seconds,
            "sent": dict(self.sent), "answered": dict(self.answered_n), "rejected": dict(self.rejected),
            "unanswered": self._unanswered(), "fills": self.fills, "trades": len(self.trade_ids),
            "rate": answered / seconds if seconds else 0.0,
            "send_rate": sum(self.sent.values()) / send_seconds if send_seconds else 0.0,
            "latency_us": percentiles(self.hist), "latency_by_kind_us": {}, "distribution": distribution(self.hist),
            "timeline": [msgspec.to_builtins(t) for t in timeline], "other": {},
        }
        report["runs"].append({"name": f"lobster {speed}", **result})
        report["lobster"] = {"file": self.source.path, "rows": self.rows, "commands": sum(self.sent.values()),
                             "sent": dict(self.sent), "pace": "as fast as answered" if not factor else
                             f"recorded pace x {factor:g}", "not_applicable": self.not_applicable,
                             "ignored": self.ignored}
        lat = result["latency_us"]
        print(f"  lobster {self.source.symbol}: {self.rows:,} rows, {sum(self.sent.values()):,} commands, "
              f"{answered:,} answered ({sum(self.rejected.values()):,} rejected, {result['unanswered']:,} unanswered), "
              f"{self.fills:,} fills in {seconds:.2f}s = {result['rate']:,.0f}/s; latency p50 {lat['p50'] / 1000:.2f} ms, "
              f"p99 {lat['p99'] / 1000:.2f} ms, max {lat['max'] / 1000:.2f} ms")

    async def _window(self, pending: deque[Any]) -> None:
        """--speed max: send rows while each session has fewer than WINDOW unanswered."""
        while pending:
            while pending and all(s.waiting < WINDOW for s in self.sessions):
                now = time.perf_counter()
                self._row(pending.popleft(), now)
            for s in self.sessions:
                s.flush()
            if pending:
                busy = [s for s in self.sessions if s.waiting >= WINDOW]
                for s in busy:
                    s.wake.clear()
                await asyncio.wait([asyncio.ensure_future(s.wake.wait()) for s in busy], timeout=1.0,
                                   return_when=asyncio.FIRST_COMPLETED)

    def _unanswered(self) -> int:
        return sum(self.sent.values()) - sum(self.answered_n.values())


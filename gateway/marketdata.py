"""Market data over MQTT: conflated book, trades, stats and status per instrument, plus
operator alerts and health.

Contract:
- ``MarketDataPublisher.on_events(events)`` is called by the core after each batch, on
  the event loop's thread. It is synchronous and cheap (a few hundred nanoseconds per
  event): it only marks which instruments changed, keeps the Trade events in a bounded
  buffer, and remembers closing prices. It never does I/O and never blocks. Trades are
  published without member or order ids: the market is anonymous.
- ``run()`` is an asyncio task that publishes, conflated, at most once every
  ``interval_ms`` per instrument: the retained ``{root}/md/{instrument}/book``,
  ``.../stats`` and ``.../status`` snapshots (read from the engine at publish time) and
  the non-retained ``.../trades`` arrays. It also publishes ``{root}/ops/alerts`` (from
  ``alert()``) and the retained ``{root}/ops/health`` every ``health_interval_ms``.
- ``run()`` never raises (except when cancelled). A broker that is down or goes away
  costs one log line per outage; the publisher keeps conflating in bounded memory and
  reconnects with exponential backoff. On every (re)connect it republishes every
  instrument's retained snapshots, because a restarted broker may have lost them.
- Limits: ``trades_max`` trades buffered (the oldest is dropped and counted when full),
  ``alerts_max`` alerts queued (likewise), ``payload_max`` bytes per message (trade
  arrays are split to fit; anything else that cannot fit is dropped and counted).
- Payloads are JSON (msgspec). Every price is given twice: an integer in fen
  (``price``) and a decimal string in yuan (``price_yuan``, e.g. "100.25"). See
  docs/marketdata.md for the schemas.

Trades and alerts go out with QoS 1 (at least once: a trade may be delivered twice
after a reconnect; ``trade_id`` identifies it). Snapshots go out with QoS 0: each one
supersedes the last, and a reconnect republishes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import aiomqtt
import msgspec

from engine import DayClosed, Engine, Event, Phase, Side, Trade
from engine.messages import Accepted, Amended, Cancelled, Decremented, Expired, StatusChanged

log = logging.getLogger("etx.marketdata")

# What an event changes, as a bit mask per instrument. TRADE and CLOSE only tell
# on_events what else to record; the snapshots published are BOOK, STATS and STATUS.
BOOK, STATS, STATUS, TRADE, CLOSE = 1, 2, 4, 8, 16
_CHANGES: dict[type, int] = {
    Accepted: BOOK,  # an order that rests changes the book; one that does not costs a spare snapshot
    Cancelled: BOOK,
    Amended: BOOK,
    Expired: BOOK,
    Decremented: BOOK,
    Trade: BOOK | STATS | TRADE,
    StatusChanged: BOOK | STATUS,  # the book snapshot carries the phase too
    DayClosed: STATS | CLOSE,
}
_PHASE_NAMES = {int(Phase.CLOSED): "closed", int(Phase.CONTINUOUS): "continuous", int(Phase.HALTED): "halted"}
_SIDE_NAMES = {int(Side.BUY): "buy", int(Side.SELL): "sell"}
_TOPIC_FORBIDDEN = ("+", "#", "\x00")
ALERT_KIND_MAX = 64
ALERT_TEXT_MAX = 2000
_ids = itertools.count(1)


def yuan(fen: int) -> str:
    """Exact decimal string of an amount in fen: 10025 -> "100.25", -5 -> "-0.05"."""
    sign = "-" if fen < 0 else ""
    units, cents = divmod(abs(fen), 100)
    return f"{sign}{units}.{cents:02d}"


def _price(fen: int) -> tuple[int | None, str | None]:
    """The engine's 0 means "no price yet" (no trade today); JSON says null."""
    return (fen, yuan(fen)) if fen else (None, None)


# --- payloads (one definition each; docs/marketdata.md shows examples) --------------


class BookLevel(msgspec.Struct):
    price: int
    price_yuan: str
    qty: int  # open quantity at this price, tonnes
    orders: int  # number of live orders at this price


class BookMsg(msgspec.Struct):
    instrument: str
    seq: int  # sequence number of the last event that touched this instrument
    ts: int  # its timestamp, ns since the Unix epoch
    phase: str  # "closed", "continuous" or "halted"
    bids: list[BookLevel]  # best first
    asks: list[BookLevel]  # best first


class TradeMsg(msgspec.Struct):
    trade_id: int
    price: int
    price_yuan: str
    qty: int
    aggressor: str  # the taker's side: "buy" or "sell"
    ts: int
    seq: int


class ClosedDay(msgspec.Struct):
    """The figures of the last closed trading day (they survive the engine's day roll)."""

    open: int | None
    open_yuan: str | None
    volume: int
    value: int
    value_yuan: str
    seq: int
    ts: int


class StatsMsg(msgspec.Struct):
    instrument: str
    seq: int
    ts: int
    open: int | None  # null until the day's first trade
    open_yuan: str | None
    high: int | None
    high_yuan: str | None
    low: int | None
    low_yuan: str | None
    last: int | None
    last_yuan: str | None
    volume: int  # tonnes traded today
    value: int  # fen traded today
    value_yuan: str
    trades: int
    ref_price: int  # the previous close: the band's centre
    ref_price_yuan: str
    band_low: int
    band_low_yuan: str
    band_high: int
    band_high_yuan: str
    close: int | None  # closing price of the last closed day; null until one closed
    close_yuan: str | None
    closed_day: ClosedDay | None


class StatusMsg(msgspec.Struct):
    instrument: str
    seq: int
    ts: int
    phase: str
    halted: bool


class AlertMsg(msgspec.Struct):
    kind: str
    text: str
    ts: int  # wall clock, ns since the Unix epoch
    last_seq: int  # the engine's last sequence number when the alert was raised


class HealthMsg(msgspec.Struct):
    status: str  # "online" or "offline" (the latter also as the connection's will)
    ts: int = 0
    uptime_ms: int = 0
    last_seq: int = 0
    instruments: int = 0
    dirty: int = 0
    trades_buffered: int = 0
    trades_max: int = 0
    trades_dropped: int = 0
    alerts_queued: int = 0
    alerts_max: int = 0
    alerts_dropped: int = 0
    oversize_dropped: int = 0
    published: int = 0
    reconnects: int = 0




class _Lost(Exception):
    """The broker connection went away while we were serving it."""


class MarketDataPublisher:
    """Publishes one engine's market data to an MQTT broker. See the module docstring."""

    def __init__(
        self,
        engine: Engine,
        host: str,
        port: int,
        root: str = "etx/v1",
        depth: int = 5,
        *,
        interval_ms: int = 100,
        health_interval_ms: int = 5000,
        trades_max: int = 10_000,
        alerts_max: int = 1000,
        payload_max: int = 256 * 1024,
        trades_per_message: int = 1000,
        backoff_min_ms: int = 200,
        backoff_max_ms: int = 5000,
        timeout_ms: int = 5000,
        identifier: str | None = None,
    ) -> None:
        if not root or root.startswith("/") or root.endswith("/") or any(c in root for c in _TOPIC_FORBIDDEN):
            raise ValueError(f"root must be a topic without wildcards or leading/trailing '/', got {root!r}")
        for symbol in engine.markets:
            if "/" in symbol or any(c in symbol for c in _TOPIC_FORBIDDEN):
                raise ValueError(f"instrument {symbol!r} cannot be a topic level ('/', '+', '#' not allowed)")
        if not 1 <= depth <= 100:
            raise ValueError(f"depth must be in [1, 100], got {depth}")
        if interval_ms < 1 or health_interval_ms < interval_ms:
            raise ValueError(f"need 1 <= interval_ms <= health_interval_ms, got {interval_ms}, {health_interval_ms}")
        if trades_max < 1 or alerts_max < 1 or trades_per_message < 1:
            raise ValueError("trades_max, alerts_max and trades_per_message must be positive")
        if payload_max < 4096:
            raise ValueError(f"payload_max must be at least 4096 bytes (one book or alert), got {payload_max}")
        if not 1 <= backoff_min_ms <= backoff_max_ms:
            raise ValueError(f"need 1 <= backoff_min_ms <= backoff_max_ms, got {backoff_min_ms}, {backoff_max_ms}")
        self.engine = engine
        self.host, self.port = host, port
        self.root, self.depth = root, depth
        self.interval_s = interval_ms / 1000
        self.health_interval_s = health_interval_ms / 1000
        self.trades_max, self.alerts_max = trades_max, alerts_max
        self.payload_max, self.trades_per_message = payload_max, trades_per_message
        self.backoff_min_s, self.backoff_max_s = backoff_min_ms / 1000, backoff_max_ms / 1000
        self.timeout_s = timeout_ms / 1000
        self.identifier = identifier or f"etx-md-{os.getpid()}-{next(_ids)}"
        # Filled by on_events (the core's side), drained by run().
        self._dirty: dict[str, int] = {}
        self._last: dict[str, Event | None] = {s: None for s in engine.markets}  # the last event of each
        self._closed: dict[str, DayClosed] = {}
        self._trades: deque[Trade] = deque()
        self._alerts: deque[bytes] = deque()
        # Counters, reported in the health message.
        self.trades_dropped = self.alerts_dropped = self.oversize_dropped = 0
        self.published = self.reconnects = 0
        self.connected = False
        self._running = False
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._enc = msgspec.json.Encoder()
        self._topic_health = f"{root}/ops/health"
        self._topic_alerts = f"{root}/ops/alerts"
        self._topics = {s: (f"{root}/md/{s}/book", f"{root}/md/{s}/trades", f"{root}/md/{s}/stats",
                            f"{root}/md/{s}/status") for s in engine.markets}

    # --- the core's side: synchronous, no I/O -------------------------------------------

    def on_events(self, events: Iterable[Event]) -> None:
        """Record what a batch of events changed. Cheap; call after every batch."""
        # Bound to locals: this runs once per event on the core's path.
        changes, dirty, last = _CHANGES, self._dirty, self._last
        trades, trades_max = self._trades, self.trades_max
        for ev in events:
            mask = changes.get(type(ev))
            if mask is None:
                continue
            symbol: str = ev.instrument  # type: ignore[attr-defined]
            if symbol not in last:
                continue  # not ours: the engine only reports its own instruments
            last[symbol] = ev  # the event itself: its seq and ts, without building a tuple
            dirty[symbol] = dirty.get(symbol, 0) | mask
            if mask & TRADE:
                if len(trades) >= trades_max:
                    trades.popleft()
                    self.trades_dropped += 1
                trades.append(ev)  # type: ignore[arg-type]
            elif mask & CLOSE:
                self._closed[symbol] = ev  # type: ignore[assignment]

    def alert(self, kind: str, text: str) -> None:
        """Queue an operator alert for ``{root}/ops/alerts``. Long fields are cut to
        ALERT_KIND_MAX / ALERT_TEXT_MAX characters (and the text further if the message
        would exceed payload_max); a full queue drops its oldest."""
        kind, text = str(kind)[:ALERT_KIND_MAX], str(text)[:ALERT_TEXT_MAX]
        ts, seq = time.time_ns(), self.engine.last_seq
        payload = self._enc.encode(AlertMsg(kind, text, ts, seq))
        while len(payload) > self.payload_max:  # multi-byte or escaped text: cut until it fits
            text = text[:len(text) // 2]
            payload = self._enc.encode(AlertMsg(kind, text, ts, seq))
        if len(self._alerts) >= self.alerts_max:
            self._alerts.popleft()
            self.alerts_dropped += 1
        self._alerts.append(payload)

    def stop(self) -> None:
        """Ask run() to publish what is pending, mark health offline and return. Final:
        a stopped publisher does not start again."""
        self._stop.set()

    # --- snapshots ----------------------------------------------------------------------

    def _seq_ts(self, symbol: str) -> tuple[int, int]:
        """Sequence number and time of the last event that touched the instrument."""
        ev = self._last[symbol]
        return (0, 0) if ev is None else (ev.seq, ev.ts)  # type: ignore[attr-defined]

    def book(self, symbol: str) -> BookMsg:
        market = self.engine.markets[symbol]
        bids, asks = self.engine.depth(symbol, self.depth)
        seq, ts = self._seq_ts(symbol)
        return BookMsg(
            symbol, seq, ts, _PHASE_NAMES.get(market.phase, str(market.phase)),
            [BookLevel(p, yuan(p), q, n) for p, q, n in bids],
            [BookLevel(p, yuan(p), q, n) for p, q, n in asks],
        )

    def stats(self, symbol: str) -> StatsMsg:
        s = self.engine.markets[symbol].stats()
        seq, ts = self._seq_ts(symbol)
        closed = self._closed.get(symbol)
        close, close_yuan = _price(closed.close_price) if closed else (None, None)
        day = None
        if closed is not None:
            day = ClosedDay(*_price(closed.open_price), closed.volume, closed.value, yuan(closed.value),
                            closed.seq, closed.ts)
        return StatsMsg(
            symbol, seq, ts, *_price(s["open"]), *_price(s["high"]), *_price(s["low"]), *_price(s["last"]),
            s["volume"], s["value"], yuan(s["value"]), s["trades"],
            s["ref_price"], yuan(s["ref_price"]), s["band_low"], yuan(s["band_low"]),
            s["band_high"], yuan(s["band_high"]), close, close_yuan, day,
        )

    def status(self, symbol: str) -> StatusMsg:
        market = self.engine.markets[symbol]
        seq, ts = self._seq_ts(symbol)
        return StatusMsg(symbol, seq, ts, _PHASE_NAMES.get(market.phase, str(market.phase)), market.halted)

    def health(self, status: str = "online") -> HealthMsg:
        return HealthMsg(
            status, time.time_ns(), int((time.monotonic() - self._started) * 1000), self.engine.last_seq,
            len(self.engine.markets), len(self._dirty), len(self._trades), self.trades_max, self.trades_dropped,
            len(self._alerts), self.alerts_max, self.alerts_dropped, self.oversize_dropped, self.published,
            self.reconnects,
        )

    def trade_payloads(self, trades: list[Trade]) -> list[tuple[bytes, int]]:
        """JSON arrays of the trades, in order, each at most payload_max bytes, with
        the number of trades each one covers."""
        out: list[tuple[bytes, int]] = []
        step = self.trades_per_message
        for i in range(0, len(trades), step):
            self._split(
                # Only what the public may see: no member ids, no order ids.
                [TradeMsg(t.trade_id, t.price, yuan(t.price), t.qty, _SIDE_NAMES.get(t.aggressor, str(t.aggressor)),
                          t.ts, t.seq) for t in trades[i:i + step]],
                out,
            )
        return out

    def _split(self, msgs: list[TradeMsg], out: list[tuple[bytes, int]]) -> None:
        payload = self._enc.encode(msgs)
        if len(payload) <= self.payload_max:
            out.append((payload, len(msgs)))
        elif len(msgs) == 1:
            # Cannot happen with payload_max >= 4096; counted (and skipped) if it does.
            self.oversize_dropped += 1
            out.append((b"", 1))
        else:
            half = len(msgs) // 2
            self._split(msgs[:half], out)
            self._split(msgs[half:], out)

    # --- the publishing task ------------------------------------------------------------

    @staticmethod
    async def probe(host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether an MQTT broker accepts a connection at host:port within timeout seconds."""
        try:
            async with asyncio.timeout(timeout):
                async with aiomqtt.Client(host, port, identifier=f"etx-probe-{os.getpid()}-{next(_ids)}",
                                          timeout=timeout):
                    return True
        except (aiomqtt.MqttError, OSError, TimeoutError):
            return False

    async def run(self) -> None:
        """Publish until stop() (or cancellation). Never raises anything else."""
        if self._running:
            raise RuntimeError("MarketDataPublisher.run() is already running")
        self._running = True
        try:
            await self._run()
        finally:
            self._running = False

    async def _run(self) -> None:
        backoff = self.backoff_min_s
        down_since: float | None = None  # monotonic time the current outage began
        attempts = 0
        while not self._stop.is_set():
            try:
                will = aiomqtt.Will(self._topic_health, self._enc.encode(HealthMsg("offline")), qos=1, retain=True)
                client = aiomqtt.Client(self.host, self.port, identifier=self.identifier, will=will,
                                        timeout=self.timeout_s, keepalive=10)
                async with asyncio.timeout(self.timeout_s * 2):  # a blackholed host must not hang us
                    await client.__aenter__()
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                attempts += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("market data: cannot reach MQTT broker %s:%s (%s); conflating and retrying",
                                self.host, self.port, exc or type(exc).__name__)
            else:
                if down_since is not None:
                    log.warning("market data: connected to %s:%s after %.1f s and %d attempts",
                                self.host, self.port, time.monotonic() - down_since, attempts)
                    down_since, attempts = None, 0
                    self.reconnects += 1
                backoff = self.backoff_min_s
                try:
                    await self._serve(client)
                except (_Lost, aiomqtt.MqttError, OSError, TimeoutError) as exc:
                    down_since = time.monotonic()
                    log.warning("market data: lost MQTT broker %s:%s (%s); conflating and reconnecting",
                                self.host, self.port, exc or type(exc).__name__)
                except Exception:
                    # A bug in a snapshot must not take market data down for good, nor reach
                    # the core: log it with its traceback and start over after a pause.
                    down_since = time.monotonic()
                    log.exception("market data: publisher error; restarting the connection")
                finally:
                    self.connected = False
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish on one connection until it is lost (raises) or stop() (returns)."""
        self.connected = True
        # A (re)started broker may have lost the retained snapshots: send them all again.
        for symbol in self.engine.markets:
            self._dirty[symbol] = self._dirty.get(symbol, 0) | BOOK | STATS | STATUS
        next_health = 0.0
        watcher = asyncio.create_task(self._watch(client))
        stopper = asyncio.create_task(self._stop.wait())
        try:
            while True:
                started = time.monotonic()
                flush = asyncio.create_task(self._flush(client, started >= next_health))
                await asyncio.wait((flush, watcher), return_when=asyncio.FIRST_COMPLETED)
                if not flush.done():
                    flush.cancel()  # its finally clause puts unsent trades back
                    await asyncio.gather(flush, return_exceptions=True)
                    raise _Lost("connection closed")
                flush.result()
                if started >= next_health:
                    next_health = started + self.health_interval_s
                if stopper.done():
                    await client.publish(self._topic_health, self._enc.encode(self.health("offline")),
                                         qos=1, retain=True)
                    return
                delay = self.interval_s - (time.monotonic() - started)
                if delay > 0:
                    await asyncio.wait((watcher, stopper), timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    raise _Lost("connection closed")
        finally:
            for task in (watcher, stopper):
                task.cancel()
            await asyncio.gather(watcher, stopper, return_exceptions=True)

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        """Returns (or raises) when the connection drops: the message iterator ends then,
        and we subscribe to nothing, so it yields nothing before."""
        async for _ in client.messages:
            pass

    async def _flush(self, client: aiomqtt.Client, with_health: bool) -> None:
        """Publish alerts, then per changed instrument its trades, book, stats and status."""
        publish = client.publish
        while self._alerts:
            await publish(self._topic_alerts, self._alerts[0], qos=1)
            self._alerts.popleft()  # only once sent: a lost connection keeps it queued
            self.published += 1
        dirty, self._dirty = self._dirty, {}
        # Take the buffered trades, grouped per instrument in order; whatever is not sent
        # when this returns (error, cancellation) goes back to the front of the buffer.
        groups: dict[str, list[Trade]] = {}
        trades = self._trades
        for _ in range(len(trades)):
            t = trades.popleft()
            groups.setdefault(t.instrument, []).append(t)
            if t.instrument not in dirty:
                dirty[t.instrument] = 0  # its trades still go out (they normally come with a mask)
        try:
            for symbol, mask in dirty.items():
                book_t, trades_t, stats_t, status_t = self._topics[symbol]
                group = groups.get(symbol)
                if group:
                    for payload, count in self.trade_payloads(group):
                        if payload:
                            await publish(trades_t, payload, qos=1)
                            self.published += 1
                        del group[:count]  # sent: never put back
                    del groups[symbol]
                if mask & BOOK:
                    await self._send(publish, book_t, self.book(symbol))
                if mask & STATS:
                    await self._send(publish, stats_t, self.stats(symbol))
                if mask & STATUS:
                    await self._send(publish, status_t, self.status(symbol))
                dirty[symbol] = 0
            if with_health:
                await publish(self._topic_health, self._enc.encode(self.health()), qos=0, retain=True)
                self.published += 1
        finally:
            for symbol, mask in dirty.items():
                if mask:
                    self._dirty[symbol] = self._dirty.get(symbol, 0) | mask
            if groups:
                self._requeue([t for g in groups.values() for t in g])

    async def _send(self, publish: Callable[..., Awaitable[None]], topic: str, msg: msgspec.Struct) -> None:
        payload = self._enc.encode(msg)
        if len(payload) > self.payload_max:
            self.oversize_dropped += 1
            return
        await publish(topic, payload, qos=0, retain=True)
        self.published += 1

    def _requeue(self, unsent: list[Trade]) -> None:
        """Put unsent trades back before the ones that arrived meanwhile, within the limit."""
        merged = deque(sorted(unsent, key=lambda t: t.trade_id))
        merged.extend(self._trades)
        while len(merged) > self.trades_max:
            merged.popleft()
            self.trades_dropped += 1
        self._trades = merged

    def _check(self) -> None:
        """Assert the publisher's invariants (O(buffered trades + instruments))."""
        markets = self.engine.markets
        assert len(self._trades) <= self.trades_max, len(self._trades)
        assert len(self._alerts) <= self.alerts_max, len(self._alerts)
        assert set(self._last) == set(markets)
        for symbol, mask in self._dirty.items():
            assert symbol in markets and 0 <= mask <= BOOK | STATS | STATUS | TRADE | CLOSE, (symbol, mask)
        last_id: dict[str, int] = {}
        for t in self._trades:
            assert type(t) is Trade and t.instrument in markets, t
            assert t.trade_id > last_id.get(t.instrument, 0), ("trades out of order", t)
            last_id[t.instrument] = t.trade_id
            assert t.seq <= self._seq_ts(t.instrument)[0], t
        assert min(self.trades_dropped, self.alerts_dropped, self.oversize_dropped, self.published) >= 0

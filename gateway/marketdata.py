"""Market data over MQTT: conflated book, trades, stats, status and reference data per
instrument, the exchange's own status, operator alerts and health.

Contract:
- Every topic is under one root that names the exchange (``etx/v1/{exchange.id}`` by
  default), so exchanges sharing a broker never touch each other's topics:
  ``{root}/status`` (retained: "online", "closed" or "lost", and the publisher's random
  instance id), ``{root}/md/{instrument}/book|trades|stats|status|ref`` and
  ``{root}/ops/alerts|health``.
- ``MarketDataPublisher.on_events(events)`` is called by the core after each batch, on
  the event loop's thread. It is synchronous and cheap (a few hundred nanoseconds per
  event): it only marks which instruments changed, keeps the Trade events in a bounded
  buffer, and remembers closing prices. It never does I/O and never blocks. Trades are
  published without member or order ids: the market is anonymous.
- ``run()`` is an asyncio task. On each connect it first reads ``{root}/status`` on a
  connection without a will: if another instance says "online" there, it waits for
  the broker to confirm that instance is gone (its will turns the status "lost" at
  most 1.5 x keepalive after it died); if instead that instance shows it is alive (a
  live health message under the root) or stays "online", this publisher logs one
  error line naming the root and the instance and publishes nothing, ever (the
  exchange trades on without market data). Otherwise it publishes the retained
  ``{root}/status`` "online" and every instrument's snapshots, then, conflated, at most
  once every ``interval_ms`` per instrument: the retained ``book``, ``stats``,
  ``status`` and ``ref`` snapshots (read from the engine at publish time) and the
  non-retained ``trades`` arrays. Alerts go to ``{root}/ops/alerts`` and the retained
  ``{root}/ops/health`` every ``health_interval_ms``.
- Two connections publish: the main one, whose will sets ``{root}/status`` "lost", and
  one for health, whose will sets health "offline" (MQTT has one will per connection).
  ``stop()`` publishes what is pending, then every instrument's book, stats and status
  with the phase "closed", ``{root}/status`` "closed" and health "offline", and
  disconnects cleanly (no will).
- ``run()`` never raises (except when cancelled). A broker that is down, refuses the
  user or fails the TLS handshake costs one log line per outage; the publisher keeps
  conflating in bounded memory and reconnects with exponential backoff. On every
  (re)connect it republishes every instrument's retained snapshots, because a
  restarted broker may have lost them.
- Limits: ``trades_max`` trades buffered (the oldest is dropped and counted when full),
  ``alerts_max`` alerts queued (likewise), ``payload_max`` bytes per message (trade
  arrays are split to fit; anything else that cannot fit is dropped and counted),
  ``depth`` at most ``MD_DEPTH_MAX`` levels per side.
- Payloads are JSON (msgspec). Every price is given twice: an integer in fen
  (``price``) and a decimal string in yuan (``price_yuan``, e.g. "100.25"). See
  docs/marketdata.md for the schemas.
- The broker password never appears in a log line, a message or a ``repr``.

Trades, alerts, ``{root}/status`` and the closing snapshots go out with QoS 1 (at least
once: a trade may be delivered twice after a reconnect; ``trade_id`` identifies it).
Other snapshots go out with QoS 0: each one supersedes the last, and a reconnect
republishes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiomqtt
import msgspec
from aiomqtt.exceptions import MqttConnectError

from engine import DayClosed, Engine, Event, Phase, Side, Trade
from engine.messages import (
    Accepted,
    Amended,
    AuctionAnnounced,
    AuctionResult,
    BlockTraded,
    Cancelled,
    Decremented,
    Expired,
    StatusChanged,
)
from gateway.config import MD_DEPTH_MAX, Config, ConfigError, MarketDataSection, md_root, topic_problem
from gateway.credentials import CredentialsError, read_private

log = logging.getLogger("etx.marketdata")

# What an event changes, as a bit mask per instrument. TRADE and CLOSE only tell
# on_events what else to record; the snapshots published are BOOK, STATS, STATUS, REF.
BOOK, STATS, STATUS, TRADE, CLOSE, REF, BLOCK, AUCTION = 1, 2, 4, 8, 16, 32, 64, 128
SNAPSHOTS = BOOK | STATS | STATUS | REF
_CHANGES: dict[type, int] = {
    Accepted: BOOK,  # an order that rests changes the book; one that does not costs a spare snapshot
    Cancelled: BOOK,
    Amended: BOOK,
    Expired: BOOK,
    Decremented: BOOK,
    Trade: BOOK | STATS | TRADE,
    StatusChanged: BOOK | STATUS,  # the book snapshot carries the phase too
    DayClosed: STATS | CLOSE | REF,  # the day's close moves the reference price and the band
    BlockTraded: STATS | BLOCK,  # a block agreement trade: published apart, counted apart in stats
    AuctionAnnounced: AUCTION,  # an auction's terms, then its result (no bidder named)
    AuctionResult: AUCTION,
}
CLOSED = "closed"
_PHASE_NAMES = {int(Phase.CLOSED): CLOSED, int(Phase.CONTINUOUS): "continuous", int(Phase.HALTED): "halted"}
_SIDE_NAMES = {int(Side.BUY): "buy", int(Side.SELL): "sell"}
ONLINE, LOST = "online", "lost"  # the states of {root}/status, with CLOSED
ALERT_KIND_MAX = 64
ALERT_TEXT_MAX = 2000
KEEPALIVE_S = 10  # the broker fires a silent connection's will 1.5 x this after its last packet
_AUTH_REFUSED = {4, 5, 134, 135}  # CONNACK: bad user name or password, not authorized (3.1.1 and 5 codes)
_ids = itertools.count(1)


def yuan(fen: int) -> str:
    """Exact decimal string of an amount in fen: 10025 -> "100.25", -5 -> "-0.05"."""
    sign = "-" if fen < 0 else ""
    units, cents = divmod(abs(fen), 100)
    return f"{sign}{units}.{cents:02d}"


def auction_msg(a: AuctionAnnounced | AuctionResult) -> AuctionMsg:
    if type(a) is AuctionAnnounced:
        return AuctionMsg("announced", a.auction_id, a.seller, a.qty, a.ts, a.seq, a.floor, yuan(a.floor), a.ceiling,
                          yuan(a.ceiling), a.start_ts, a.end_ts, "uniform" if a.pricing == 1 else "own_bid")
    assert type(a) is AuctionResult
    ratio = f"{a.qty_sold / a.bid_qty:.4f}" if a.bid_qty else "0.0000"
    return AuctionMsg("result", a.auction_id, a.seller, a.qty, a.ts, a.seq, clearing_price=a.clearing_price,
                      clearing_price_yuan=yuan(a.clearing_price), qty_sold=a.qty_sold, bids=a.bids, winners=a.winners,
                      bid_qty=a.bid_qty, fill_ratio=ratio, cancelled=a.cancelled)


def _price(fen: int) -> tuple[int | None, str | None]:
    """The engine's 0 means "no price yet" (no trade today); JSON says null."""
    return (fen, yuan(fen)) if fen else (None, None)


def _hhmm(minutes: int) -> str:
    """Local minutes after midnight as "HH:MM" (1440 is "24:00", the end of a day)."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _utc_offset(minutes: int) -> str:
    """480 -> "+08:00", -330 -> "-05:30"."""
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{_hhmm(abs(minutes))}"


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


class BlockMsg(msgspec.Struct):
    """A block agreement trade as the market sees it: no members."""

    trade_id: int
    price: int
    price_yuan: str
    qty: int
    ts: int
    seq: int


class AuctionMsg(msgspec.Struct, omit_defaults=True):
    """An auction's announcement (``kind`` "announced": its terms) or result ("result":
    the clearing price, the quantity sold, the bids and winners, the fill ratio: sold over
    bid for), naming no bidder."""

    kind: str
    auction_id: int
    seller: str
    qty: int
    ts: int
    seq: int
    floor: int | None = None
    floor_yuan: str | None = None
    ceiling: int | None = None
    ceiling_yuan: str | None = None
    start_ts: int | None = None
    end_ts: int | None = None
    pricing: str | None = None
    clearing_price: int | None = None
    clearing_price_yuan: str | None = None
    qty_sold: int | None = None
    bids: int | None = None
    winners: int | None = None
    bid_qty: int | None = None
    fill_ratio: str | None = None  # qty_sold / bid_qty, 4 decimals ("0.0000" when no bid)
    cancelled: bool | None = None


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
    # Block agreement trades today, counted apart (they move none of the figures above).
    block_volume: int = 0
    block_value: int = 0
    block_value_yuan: str = "0.00"
    block_trades: int = 0


class StatusMsg(msgspec.Struct):
    instrument: str
    seq: int
    ts: int
    phase: str
    halted: bool


class Window(msgspec.Struct):
    open: str  # local time "HH:MM"
    close: str  # local time "HH:MM"; "24:00" is midnight at the day's end


class RefMsg(msgspec.Struct):
    """An instrument's rules: what an order must respect, and when it can trade."""

    instrument: str
    seq: int
    ts: int
    tick: int  # the price step, fen
    tick_yuan: str
    lot: int  # the quantity step, tonnes
    qty_min: int
    qty_max: int
    ref_price: int  # today's reference price (the previous close)
    ref_price_yuan: str
    band_bps: int  # the band, +- basis points of the reference price; 0 = a fixed range
    band_low: int  # the lowest and highest price an order may have today
    band_low_yuan: str
    band_high: int
    band_high_yuan: str
    windows: list[Window]  # the daily continuous trading windows, local time
    utc_offset_minutes: int  # local time = UTC + this
    utc_offset: str  # the same as "+08:00"


class ExchangeStatusMsg(msgspec.Struct):
    """``{root}/status``: whether the exchange behind the root is publishing."""

    state: str  # "online", "closed" (stopped cleanly) or "lost" (the broker's will)
    instance: str  # a random id of the publishing process
    ts: int  # wall clock, ns since the Unix epoch (for "lost": when that connection was made)
    seq: int  # the exchange's last sequence number then


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


# --- what the configuration names: the password file and the TLS files ----------------


class _Secret:
    """A value kept out of every repr (so out of logs and tracebacks)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<hidden>"


def read_password_file(path: str) -> str:
    """The broker password: the one line of a file only its owner can read or write
    (``gateway.credentials.read_private``). ConfigError naming
    ``market_data.password_file``, the path and what to do; never the password."""
    where = f"market_data.password_file {path}"
    try:
        text = read_private(path, where)
    except CredentialsError as e:
        raise ConfigError(str(e)) from None
    lines = text.splitlines()
    if len(lines) > 1:
        raise ConfigError(f"{where} has more than one line: write only the broker password")
    if not lines or not lines[0]:
        raise ConfigError(f"{where} holds no password: write the broker password on its one line")
    return lines[0]


def broker_tls_context(md: MarketDataSection) -> ssl.SSLContext | None:
    """The TLS context for the broker (None without market_data.tls): its certificate
    checked against market_data.tls_ca (or the system's CAs) and the host name, and
    the client certificate when given. ConfigError naming the key and the file."""
    if not md.tls:
        return None
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(md, name)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(f"market_data.{name} {path} cannot be read ({e.strerror or e}): give the path of "
                                  "a readable PEM file") from None
    try:
        ctx = ssl.create_default_context(cafile=md.tls_ca or None)
    except ssl.SSLError:
        raise ConfigError(f"market_data.tls_ca {md.tls_ca} is not a PEM certificate (the CA that signed the "
                          "broker's certificate)") from None
    if md.tls_cert:
        try:
            ctx.load_cert_chain(md.tls_cert, md.tls_key)
        except ssl.SSLError as e:
            if e.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(f"market_data.tls_key {md.tls_key} is not the private key of "
                                  f"market_data.tls_cert {md.tls_cert}") from None
            raise ConfigError(f"market_data.tls_cert {md.tls_cert} and market_data.tls_key {md.tls_key} are not a "
                              "PEM certificate chain and its private key") from None
    return ctx


def _trouble(exc: BaseException, broker: str, username: str | None) -> tuple[int, str]:
    """The log level and words for a failed connection to ``broker`` (host:port): a
    refused user and a failed TLS handshake are the operator's to fix, and say so."""
    if isinstance(exc, MqttConnectError):
        rc = getattr(exc.rc, "value", exc.rc)
        if rc in _AUTH_REFUSED:
            who = f"user {username!r}" if username else "an anonymous connection"
            return logging.ERROR, (f"MQTT broker {broker} refused {who} ({exc}): check market_data.username and "
                                   "market_data.password_file")
    cause = exc.__context__ if isinstance(exc, aiomqtt.MqttError) else exc
    if isinstance(cause, ssl.SSLError):
        return logging.ERROR, (f"TLS with MQTT broker {broker} failed ({cause.reason or cause}): check "
                               "market_data.host, tls_ca, tls_cert and tls_key")
    return logging.WARNING, f"cannot reach MQTT broker {broker} ({exc or type(exc).__name__})"


class _Lost(Exception):
    """The broker connection went away while we were serving it."""


_CONNECT_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)


class MarketDataPublisher:
    """Publishes one engine's market data to an MQTT broker. See the module docstring."""

    def __init__(
        self,
        engine: Engine,
        host: str,
        port: int,
        root: str = md_root("etx"),
        depth: int = 5,
        *,
        interval_ms: int = 100,
        health_interval_ms: int = 5000,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        keepalive_s: int = KEEPALIVE_S,
        trades_max: int = 10_000,
        alerts_max: int = 1000,
        payload_max: int = 256 * 1024,
        trades_per_message: int = 1000,
        backoff_min_ms: int = 200,
        backoff_max_ms: int = 5000,
        timeout_ms: int = 5000,
    ) -> None:
        problem = topic_problem(root)
        if problem:
            raise ValueError(f"root: {problem}")
        for symbol in engine.markets:
            if "/" in symbol or any(c in symbol for c in "+#\x00"):
                raise ValueError(f"instrument {symbol!r} cannot be a topic level ('/', '+', '#' not allowed)")
        if not 1 <= depth <= MD_DEPTH_MAX:
            raise ValueError(f"depth must be in [1, {MD_DEPTH_MAX}], got {depth}")
        if interval_ms < 1 or health_interval_ms < interval_ms:
            raise ValueError(f"need 1 <= interval_ms <= health_interval_ms, got {interval_ms}, {health_interval_ms}")
        if trades_max < 1 or alerts_max < 1 or trades_per_message < 1:
            raise ValueError("trades_max, alerts_max and trades_per_message must be positive")
        if payload_max < 4096:
            raise ValueError(f"payload_max must be at least 4096 bytes (one book or alert), got {payload_max}")
        if not 1 <= backoff_min_ms <= backoff_max_ms:
            raise ValueError(f"need 1 <= backoff_min_ms <= backoff_max_ms, got {backoff_min_ms}, {backoff_max_ms}")
        if not 1 <= keepalive_s <= 65535:
            raise ValueError(f"keepalive_s must be in [1, 65535], got {keepalive_s}")
        if password is not None and not username:
            raise ValueError("a password needs a username")
        self.engine = engine
        self.host, self.port = host, port
        self.root, self.depth = root, depth
        self.username = username or None
        self._password = None if password is None else _Secret(password)
        self.tls_context = tls_context
        self.keepalive_s = keepalive_s
        # How long a starting publisher waits for the broker to confirm that the other
        # instance online under its root is gone: the broker fires a will 1.5 x keepalive
        # after a connection's last packet (at once when the process died and its
        # socket was closed).
        self.takeover_wait_s = 1.5 * keepalive_s + 1
        self.interval_s = interval_ms / 1000
        self.health_interval_s = health_interval_ms / 1000
        self.trades_max, self.alerts_max = trades_max, alerts_max
        self.payload_max, self.trades_per_message = payload_max, trades_per_message
        self.backoff_min_s, self.backoff_max_s = backoff_min_ms / 1000, backoff_max_ms / 1000
        self.timeout_s = timeout_ms / 1000
        self.instance = secrets.token_hex(8)  # this process's publisher, in {root}/status
        # Client ids: unique per instance (a broker drops the older of two equal ones).
        # 23 characters, the most every MQTT 3.1.1 broker must accept.
        self._client_ids = (f"etx-md-{self.instance}", f"etx-mh-{self.instance}", f"etx-mc-{self.instance}")
        # Filled by on_events (the core's side), drained by run().
        self._dirty: dict[str, int] = {}
        self._dirty_since = 0.0
        self._last: dict[str, Event | None] = {s: None for s in engine.markets}  # the last event of each
        self._start_seq_ts = (engine.last_seq, engine.last_ts)  # what the exchange recovered
        self._closed: dict[str, DayClosed] = {}
        self._trades: deque[Trade] = deque()
        self._blocks: deque[BlockTraded] = deque()  # block trades to publish (at most trades_max)
        self._auction_events: deque[AuctionAnnounced | AuctionResult] = deque()  # to publish (at most trades_max)
        self._alerts: deque[bytes] = deque()
        # Counters, reported in the health message.
        self.trades_dropped = self.alerts_dropped = self.oversize_dropped = 0
        self.published = self.reconnects = 0
        self.connect_failures = 0  # connection attempts that failed (logged once per outage)
        self.connected = False
        self.refused_by: str | None = None  # the other instance online under our root, once refused
        self._running = False
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._enc = msgspec.json.Encoder()
        self._topic_status = f"{root}/status"
        self._topic_health = f"{root}/ops/health"
        self._topic_alerts = f"{root}/ops/alerts"
        self._topics = {s: (f"{root}/md/{s}/book", f"{root}/md/{s}/trades", f"{root}/md/{s}/stats",
                            f"{root}/md/{s}/status", f"{root}/md/{s}/ref") for s in engine.markets}
        self._block_topics = {s: f"{root}/md/{s}/blocks" for s in engine.markets}
        self._auction_topics = {s: f"{root}/md/{s}/auctions" for s in engine.markets}

    @classmethod
    def from_config(cls, engine: Engine, cfg: Config, *, host: str | None = None, port: int | None = None,
                    **kw: Any) -> MarketDataPublisher:
        """The publisher [market_data] describes (``host``/``port`` override it, as
        ``etx serve --mqtt`` does). Reads the password file and the TLS files now:
        ConfigError naming the key when one cannot be used."""
        md = cfg.market_data
        password = read_password_file(md.password_file) if md.password_file else None
        return cls(engine, host or md.host, port or md.port, cfg.md_root(), md.depth, interval_ms=md.interval_ms,
                   health_interval_ms=md.health_interval_ms, username=md.username or None, password=password,
                   tls_context=broker_tls_context(md), **kw)

    @property
    def has_password(self) -> bool:
        return self._password is not None

    @property
    def url(self) -> str:
        """Where it publishes, for a log line: ``mqtts://host:port/root`` (no password)."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt{'s' if self.tls_context else ''}://{user}{self.host}:{self.port}/{self.root}"

    def __repr__(self) -> str:
        return f"MarketDataPublisher({self.url!r}, instance={self.instance!r})"

    # --- the core's side: synchronous, no I/O -------------------------------------------

    def on_events(self, events: Iterable[Event]) -> None:
        """Record what a batch of events changed. Cheap; call after every batch."""
        # Bound to locals: this runs once per event on the core's path.
        changes, dirty, last = _CHANGES, self._dirty, self._last
        trades, trades_max = self._trades, self.trades_max
        if not dirty:
            self._dirty_since = time.monotonic()  # the oldest change not yet published (lag_ms)
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
            elif mask & AUCTION:
                if len(self._auction_events) >= trades_max:
                    self._auction_events.popleft()
                    self.trades_dropped += 1
                self._auction_events.append(ev)  # type: ignore[arg-type]
                continue  # no snapshot changes
            elif mask & BLOCK:
                if len(self._blocks) >= trades_max:
                    self._blocks.popleft()
                    self.trades_dropped += 1
                self._blocks.append(ev)  # type: ignore[arg-type]
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
        """Ask run() to publish what is pending, mark everything closed and return.
        Final: a stopped publisher does not start again."""
        self._stop.set()

    # --- snapshots ----------------------------------------------------------------------

    def _seq_ts(self, symbol: str) -> tuple[int, int]:
        """Sequence number and time of the last event that touched the instrument; the
        exchange's last ones at the start when none has since."""
        ev = self._last[symbol]
        return self._start_seq_ts if ev is None else (ev.seq, ev.ts)  # type: ignore[attr-defined]

    def book(self, symbol: str, phase: str | None = None) -> BookMsg:
        market = self.engine.markets[symbol]
        bids, asks = self.engine.depth(symbol, self.depth)
        seq, ts = self._seq_ts(symbol)
        return BookMsg(
            symbol, seq, ts, phase or _PHASE_NAMES.get(market.phase, str(market.phase)),
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
            s["block_volume"], s["block_value"], yuan(s["block_value"]), s["block_trades"],
        )

    def status(self, symbol: str, phase: str | None = None) -> StatusMsg:
        market = self.engine.markets[symbol]
        seq, ts = self._seq_ts(symbol)
        return StatusMsg(symbol, seq, ts, phase or _PHASE_NAMES.get(market.phase, str(market.phase)), market.halted)

    def ref(self, symbol: str) -> RefMsg:
        market = self.engine.markets[symbol]
        rules, schedule = market.rules, self.engine.schedule
        seq, ts = self._seq_ts(symbol)
        return RefMsg(
            symbol, seq, ts, rules.tick, yuan(rules.tick), rules.lot, rules.qty_min, rules.qty_max,
            market.ref_price, yuan(market.ref_price), rules.band_bps, market.low, yuan(market.low),
            market.high, yuan(market.high), [Window(_hhmm(a), _hhmm(b)) for a, b in schedule.windows],
            schedule.utc_offset_minutes, _utc_offset(schedule.utc_offset_minutes),
        )

    def exchange_status(self, state: str) -> ExchangeStatusMsg:
        return ExchangeStatusMsg(state, self.instance, time.time_ns(), self.engine.last_seq)

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
    async def probe(host: str, port: int, timeout: float = 1.0, **client: Any) -> bool:
        """Whether an MQTT broker accepts a connection at host:port within timeout seconds
        (``client``: aiomqtt.Client's username, password, tls_context)."""
        try:
            async with asyncio.timeout(timeout):
                async with aiomqtt.Client(host, port, identifier=f"etx-probe-{os.getpid()}-{next(_ids)}",
                                          timeout=timeout, **client):
                    return True
        except _CONNECT_ERRORS:
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

    def lag_ms(self) -> float:
        """How long the oldest change not yet published has waited (0: none waits)."""
        return (time.monotonic() - self._dirty_since) * 1000 if self._dirty else 0.0

    async def reachable(self, timeout: float = 1.0) -> bool:
        """Whether the broker accepts a connection with this publisher's settings now."""
        return await self.probe(self.host, self.port, timeout, username=self.username, tls_context=self.tls_context,
                                password=None if self._password is None else self._password.value)

    def _client(self, identifier: str, will: aiomqtt.Will | None = None) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host, self.port, identifier=identifier, will=will, timeout=self.timeout_s,
            keepalive=self.keepalive_s, username=self.username,
            password=None if self._password is None else self._password.value, tls_context=self.tls_context,
        )

    async def _connect(self, client: aiomqtt.Client, opened: list[aiomqtt.Client]) -> aiomqtt.Client:
        async with asyncio.timeout(self.timeout_s * 2):  # a blackholed host must not hang us
            await client.__aenter__()
        opened.append(client)
        return client

    async def _run(self) -> None:
        backoff = self.backoff_min_s
        down_since: float | None = None  # monotonic time the current outage began
        attempts = 0
        while not self._stop.is_set():
            opened: list[aiomqtt.Client] = []
            try:
                holder = await self._holder()
                if holder is not None:
                    if not self._stop.is_set():
                        self.refused_by = holder
                        log.error("market data: another exchange (instance %s) is online under %s; this one "
                                  "publishes nothing (trading goes on without market data): give each exchange its "
                                  "own exchange.id, or, if that instance is gone, clear its status "
                                  "(mosquitto_pub -r -n -t %s) and restart", holder, self.root, self._topic_status)
                    return
                # The wills: a crash (or a lost network) leaves "lost" and health "offline".
                lost = self._enc.encode(self.exchange_status(LOST))
                main = await self._connect(self._client(self._client_ids[0], aiomqtt.Will(
                    self._topic_status, lost, qos=1, retain=True)), opened)
                health = await self._connect(self._client(self._client_ids[1], aiomqtt.Will(
                    self._topic_health, self._enc.encode(HealthMsg("offline")), qos=1, retain=True)), opened)
            except _CONNECT_ERRORS as exc:
                attempts += 1
                self.connect_failures += 1
                if down_since is None:
                    down_since = time.monotonic()
                    level, text = _trouble(exc, f"{self.host}:{self.port}", self.username)
                    log.log(level, "market data: %s; conflating and retrying", text)
            else:
                if down_since is not None:
                    log.warning("market data: connected to %s:%s after %.1f s and %d attempts",
                                self.host, self.port, time.monotonic() - down_since, attempts)
                    down_since, attempts = None, 0
                    self.reconnects += 1
                backoff = self.backoff_min_s
                try:
                    await self._serve(main, health)
                except (_Lost, *_CONNECT_ERRORS) as exc:
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
                for client in reversed(opened):
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _decode_status(self, payload: Any) -> ExchangeStatusMsg | None:
        """A ``{root}/status`` message, or None for an empty (cleared) or foreign one."""
        try:
            return msgspec.json.decode(payload, type=ExchangeStatusMsg)
        except (msgspec.DecodeError, TypeError):
            return None

    async def _holder(self) -> str | None:
        """The instance of another publisher that is online under our root, if any.

        Read on a connection of its own without a will (whatever happens to it says
        nothing), closed before this returns. The broker sends a topic's retained
        message in answer to a subscribe, before it answers the next subscribe, so once
        the second subscription is acknowledged the retained status, if there is one,
        has arrived. "online" of another instance is believed while that instance shows
        it is alive or the broker keeps its connection: a crashed instance's will turns
        it "lost" within 1.5 x keepalive (at once when its process died), a live one
        publishes health every health_interval_ms."""
        client = await self._connect(self._client(self._client_ids[2]), [])
        try:
            return await self._read_holder(client)
        finally:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def _read_holder(self, client: aiomqtt.Client) -> str | None:
        await client.subscribe(self._topic_status, qos=1)
        await client.subscribe(self._topic_health, qos=0)
        messages = client.messages
        status: ExchangeStatusMsg | None = None
        while len(messages):
            m = await anext(messages)
            if m.topic.matches(self._topic_status):
                status = self._decode_status(m.payload)
        if status is None or status.instance == self.instance or status.state != ONLINE:
            return None
        holder = status.instance
        log.warning("market data: %s says instance %s is online; waiting up to %g s for it to show it is alive "
                    "or for the broker to confirm it is gone", self._topic_status, holder, self.takeover_wait_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.takeover_wait_s
        stopper = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return holder  # the broker still holds its connection: it is alive
                receive = asyncio.ensure_future(anext(messages))
                await asyncio.wait((receive, stopper), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    await asyncio.gather(receive, return_exceptions=True)
                    continue
                m = receive.result()
                if m.topic.matches(self._topic_status):
                    status = self._decode_status(m.payload)
                    if status is None or status.state != ONLINE:
                        log.warning("market data: instance %s under %s is %s; taking over", holder, self.root,
                                    status.state if status else "cleared")
                        return None
                    holder = status.instance
                elif not m.retain:
                    return holder  # a live health message: someone publishes under our root
            return holder
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)

    async def _serve(self, main: aiomqtt.Client, health: aiomqtt.Client) -> None:
        """Publish on one pair of connections until one is lost (raises) or stop() (returns)."""
        self.connected = True
        await main.publish(self._topic_status, self._enc.encode(self.exchange_status(ONLINE)), qos=1, retain=True)
        self.published += 1
        # A (re)started broker may have lost the retained snapshots: send them all again.
        for symbol in self.engine.markets:
            self._dirty[symbol] = self._dirty.get(symbol, 0) | SNAPSHOTS
        next_health = 0.0
        watchers = (asyncio.create_task(self._watch(main)), asyncio.create_task(self._watch(health)))
        stopper = asyncio.create_task(self._stop.wait())
        try:
            while True:
                started = time.monotonic()
                flush = asyncio.create_task(self._flush(main.publish, health.publish if started >= next_health
                                                        else None))
                await asyncio.wait((flush, *watchers), return_when=asyncio.FIRST_COMPLETED)
                if not flush.done():
                    flush.cancel()  # its finally clause puts unsent trades back
                    await asyncio.gather(flush, return_exceptions=True)
                    raise _Lost("connection closed")
                flush.result()
                if started >= next_health:
                    next_health = started + self.health_interval_s
                if stopper.done():
                    await self._close(main.publish, health.publish)
                    return
                delay = self.interval_s - (time.monotonic() - started)
                if delay > 0:
                    await asyncio.wait((*watchers, stopper), timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                if any(w.done() for w in watchers):
                    raise _Lost("connection closed")
        finally:
            for task in (*watchers, stopper):
                task.cancel()
            await asyncio.gather(*watchers, stopper, return_exceptions=True)

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        """Returns (or raises) when the connection drops: the message iterator ends then,
        and we subscribe to nothing, so it yields nothing before."""
        async for _ in client.messages:
            pass

    async def _flush(self, publish: Callable[..., Awaitable[Any]],
                     publish_health: Callable[..., Awaitable[Any]] | None) -> None:
        """Publish alerts, then per changed instrument its trades, book, stats, status and
        reference data; then health, when given its connection's publish."""
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
        while self._auction_events:  # few and QoS 1, in order
            a = self._auction_events[0]
            await publish(self._auction_topics[a.instrument], self._enc.encode(auction_msg(a)), qos=1)
            self._auction_events.popleft()  # only once sent
            self.published += 1
        while self._blocks:  # few and QoS 1: each as a one-element array, in order
            b = self._blocks[0]
            await publish(self._block_topics[b.instrument],
                          self._enc.encode([BlockMsg(b.trade_id, b.price, yuan(b.price), b.qty, b.ts, b.seq)]), qos=1)
            self._blocks.popleft()  # only once sent
            self.published += 1
        try:
            for symbol, mask in dirty.items():
                book_t, trades_t, stats_t, status_t, ref_t = self._topics[symbol]
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
                if mask & REF:
                    await self._send(publish, ref_t, self.ref(symbol))
                dirty[symbol] = 0
            if publish_health is not None:
                await publish_health(self._topic_health, self._enc.encode(self.health()), qos=0, retain=True)
                self.published += 1
        finally:
            for symbol, mask in dirty.items():
                if mask:
                    self._dirty[symbol] = self._dirty.get(symbol, 0) | mask
            if groups:
                self._requeue([t for g in groups.values() for t in g])

    async def _close(self, publish: Callable[..., Awaitable[Any]],
                     publish_health: Callable[..., Awaitable[Any]]) -> None:
        """The last word of a clean stop (after the last flush): every instrument's book,
        stats and status as they are with the phase "closed", then ``{root}/status``
        "closed" and health "offline"; QoS 1, so the broker has them before we go."""
        for symbol in self.engine.markets:
            book_t, _, stats_t, status_t, _ = self._topics[symbol]
            await self._send(publish, book_t, self.book(symbol, CLOSED), qos=1)
            await self._send(publish, stats_t, self.stats(symbol), qos=1)
            await self._send(publish, status_t, self.status(symbol, CLOSED), qos=1)
        await publish(self._topic_status, self._enc.encode(self.exchange_status(CLOSED)), qos=1, retain=True)
        await publish_health(self._topic_health, self._enc.encode(self.health("offline")), qos=1, retain=True)
        self.published += 2

    async def _send(self, publish: Callable[..., Awaitable[Any]], topic: str, msg: msgspec.Struct,
                    qos: int = 0) -> None:
        payload = self._enc.encode(msg)
        if len(payload) > self.payload_max:
            self.oversize_dropped += 1
            return
        await publish(topic, payload, qos=qos, retain=True)
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
        assert len(self._blocks) <= self.trades_max and all(type(b) is BlockTraded for b in self._blocks)
        assert len(self._auction_events) <= self.trades_max
        assert all(type(a) in (AuctionAnnounced, AuctionResult) for a in self._auction_events)
        assert len(self._alerts) <= self.alerts_max, len(self._alerts)
        assert set(self._last) == set(markets)
        for symbol, mask in self._dirty.items():
            assert symbol in markets and 0 <= mask <= SNAPSHOTS | TRADE | CLOSE | BLOCK | AUCTION, (symbol, mask)
        last_id: dict[str, int] = {}
        for t in self._trades:
            assert type(t) is Trade and t.instrument in markets, t
            assert t.trade_id > last_id.get(t.instrument, 0), ("trades out of order", t)
            last_id[t.instrument] = t.trade_id
            assert t.seq <= self._seq_ts(t.instrument)[0], t
        assert min(self.trades_dropped, self.alerts_dropped, self.oversize_dropped, self.published) >= 0

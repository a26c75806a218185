"""The load generator behind ``etx load``: member sessions driven open loop or closed
loop with a configurable mix, latencies in HDR histograms, a per-second timeline.

Open loop (``rate`` > 0): command k is due at ``t0 + k / rate`` whatever the exchange
does, and its latency runs from that intended time to its answer, so a stalled exchange
(or a stalled generator: its own lag is counted too) shows up as latency, never as a
lower send rate (no coordinated omission). Closed loop (``rate`` 0): each session keeps
``window`` commands unanswered and sends more as answers arrive; the figure is
answers per second, latency runs from the actual write.

The mix draws each command from weights: new limit orders (a ``cross`` share priced
through the other side's best, the rest resting 1..``levels`` ticks from the reference),
market, IOC and FOK orders, hits of another session's resting order, cancels and amends
of the session's own resting orders (a new limit order when it has none). It is seeded:
the same seed gives the same commands for the same answers.

Every command gets exactly one answer the generator recognises: a new order or hit its
``Accepted`` or ``Rejected`` (by client order id), a cancel its ``Cancelled`` (reason 1)
or ``Rejected`` (by order id), an amend its ``Amended`` or ``Rejected``. Refusals by the
gateway (``seq_out`` 0) are counted apart. The generator is lean on purpose (new orders
pre-encoded before the clock starts, generic msgpack decoding, one write per session and
step) so that it measures the exchange, not itself.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from hdrh.histogram import HdrHistogram

from engine.messages import Amend, Cancel, HitOrder, NewOrder, OrdType, Side, TimeInForce
from gateway.framing import MAX_OUTBOUND_FRAME, FrameSplitter, encode_frame
from gateway.protocol import PROTOCOL_VERSION, CodMode, Heartbeat, Logon, QueryInstruments

NEW_KINDS = ("limit", "market", "ioc", "fok")
KINDS = (*NEW_KINDS, "hit", "cancel", "amend")
_ACCEPTED, _REJECTED, _CANCELLED, _AMENDED, _EXPIRED, _DECREMENTED, _FILL = 101, 102, 104, 105, 106, 109, 170
_REPORT, _LOGON_ACK, _LOGON_REJECT, _SESSION_CLOSED = 160, 150, 151, 154
_INSTRUMENTS_REPLY, _QUERY_REJECTED = 174, 175
FENCE_REQ_ID = 0x10AD  # the query that closes a run (see fence)
LATENCY_MAX_US = 3_600_000_000  # an hour: longer answers are recorded at the maximum
BUY, SELL = int(Side.BUY), int(Side.SELL)


class MixError(ValueError):
    """A --mix that cannot be used; the message says what is wrong."""


class Mix(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Shares of each kind of command (weights, normalised), the share of crossing
    prices among new limit, IOC and FOK orders, sizes and resting distance."""

    limit: float = 55.0
    market: float = 2.0
    ioc: float = 3.0
    fok: float = 1.0
    hit: float = 1.0
    cancel: float = 30.0
    amend: float = 8.0
    cross: float = 10.0  # percent of new limit/IOC/FOK orders priced through the other side's best
    qty_max: int = 10  # tonnes, drawn 1..qty_max
    levels: int = 30  # resting orders 1..levels ticks from the reference

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``limit=55,cancel=30,...`` over the defaults; ``orders`` is new limit orders
        only (a tenth crossing), the flow of the throughput benchmark."""
        if text.strip() == "orders":
            return cls(limit=100, market=0, ioc=0, fok=0, hit=0, cancel=0, amend=0)
        if text.strip() in ("", "default"):
            return cls()
        values: dict[str, Any] = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in cls.__struct_fields__:
                raise MixError(f"--mix takes NAME=NUMBER,... with names {', '.join(cls.__struct_fields__)}; "
                               f"got {part.strip()!r}")
            try:
                number = float(value)
            except ValueError:
                raise MixError(f"--mix: {name}={value!r} is not a number") from None
            if number < 0 or number != number or number == float("inf"):
                raise MixError(f"--mix: {name} must be a finite number >= 0, got {value}")
            values[name] = int(number) if name in ("qty_max", "levels") else number
        mix = cls(**{**msgspec.structs.asdict(cls()), **values})
        mix.check()
        return mix

    def check(self) -> None:
        if sum(getattr(self, k) for k in KINDS) <= 0:
            raise MixError("--mix: at least one kind of command needs a weight above 0")
        if not 0 <= self.cross <= 100:
            raise MixError(f"--mix: cross is a percentage (0-100), got {self.cross}")
        if self.qty_max < 1 or self.levels < 1:
            raise MixError("--mix: qty_max and levels must be at least 1")

    def weights(self) -> list[float]:
        return [getattr(self, k) for k in KINDS]

    def describe(self) -> str:
        total = sum(self.weights())
        parts = [f"{k} {getattr(self, k) / total:.0%}" for k in KINDS if getattr(self, k)]
        return ", ".join(parts) + f"; {self.cross:g} % crossing, 1-{self.qty_max} t, resting 1-{self.levels} ticks"


def histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def percentiles(h: HdrHistogram) -> dict[str, float]:
    """Latency figures in microseconds (0 when nothing was recorded)."""
    if not h.get_total_count():
        return {"count": 0, "p50": 0, "p90": 0, "p99": 0, "p99_9": 0, "p99_99": 0, "max": 0, "mean": 0}
    return {"count": h.get_total_count(), "p50": h.get_value_at_percentile(50), "p90": h.get_value_at_percentile(90),
            "p99": h.get_value_at_percentile(99), "p99_9": h.get_value_at_percentile(99.9),
            "p99_99": h.get_value_at_percentile(99.99), "max": h.get_max_value(), "mean": round(h.get_mean_value(), 1)}


def distribution(h: HdrHistogram) -> list[list[float]]:
    """[percentile, latency us] pairs for a percentile plot (50 .. 99.999 and the max)."""
    if not h.get_total_count():
        return []
    points = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999]
    return [[p, h.get_value_at_percentile(p)] for p in points] + [[100.0, h.get_max_value()]]


class Instrument(msgspec.Struct):
    symbol: str
    ref: int  # reference price, fen
    tick: int = 1


class Wire(asyncio.Protocol):
    """The connection of one load session (the generator's and the LOBSTER feed's):
    frames in, commands queued in ``out`` and written together by ``flush``, the
    logon's answer in ``logged_on``, the end in ``closed``, ``wake`` set on every read."""

    def __init__(self) -> None:
        self.splitter = FrameSplitter(MAX_OUTBOUND_FRAME)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.logged_on: asyncio.Future[Any] = loop.create_future()
        self.closed: asyncio.Future[Any] = loop.create_future()
        self.wake = asyncio.Event()
        self.out: list[bytes] = []
        self.closed_by_exchange = ""  # the SessionClosed's text, when the exchange ended the session
        self.fence: asyncio.Future[None] | None = None  # answered by a run's closing query (see ``fence``)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.wake.set()
        if not self.closed.done():
            self.closed.set_result(exc)
        if not self.logged_on.done():
            self.logged_on.set_exception(ConnectionError("the exchange closed the connection before the logon answer"))

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out = []

    def session_message(self, msg: list[Any]) -> None:
        """A message outside the reports: the logon's answer, the session's end, the
        answer to a fence."""
        tag = msg[0]
        if tag in (_INSTRUMENTS_REPLY, _QUERY_REJECTED) and msg[1] == FENCE_REQ_ID:
            if self.fence is not None and not self.fence.done():
                self.fence.set_result(None)
        elif tag == _LOGON_ACK and not self.logged_on.done():
            self.logged_on.set_result(msg)
        elif tag in (_LOGON_REJECT, _SESSION_CLOSED):
            text = msg[2] if len(msg) > 2 else str(msg)
            if not self.logged_on.done():
                self.logged_on.set_exception(LogonRefused(text, msg[1]))
            else:
                self.closed_by_exchange = text


W = TypeVar("W", bound=Wire)


async def fence(wires: list[Wire], instrument: str, deadline: float) -> None:
    """Wait until each session has read every report the exchange sent it so far.

    Every command answered is not yet every report read: a trade's resting side hears
    of it on another session, which may still have the fill on its way. Each session
    asks one query, which the exchange answers after the batch it came with, and so
    behind every report it sent that session before. Returns with each answer in, or
    at ``deadline`` (the event loop's clock)."""
    loop = asyncio.get_running_loop()
    query = encode_frame(QueryInstruments(FENCE_REQ_ID, instrument))
    waits = []
    for w in wires:
        if w.transport is None or w.transport.is_closing() or w.closed.done():
            continue
        w.fence = loop.create_future()
        waits.append(w.fence)
        w.transport.write(query)
    if waits:
        await asyncio.wait(waits, timeout=max(0.1, deadline - loop.time()))
    for w in wires:
        w.fence = None


async def open_wire(make: Callable[[], W], host: str, port: int, member: str, user: str, secret: str,
                    cod: int, before_logon: Callable[[W], None] | None = None) -> W:
    """Connect a session and log it on; ConnectionError in one line saying why not."""
    loop = asyncio.get_running_loop()
    try:
        _, wire = await asyncio.wait_for(loop.create_connection(make, host, port), 10)
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"cannot reach the exchange at {host}:{port}: "
                              f"{getattr(e, 'strerror', None) or e or 'no answer'}") from None
    if before_logon is not None:
        before_logon(wire)
    assert wire.transport is not None
    wire.transport.write(encode_frame(Logon(PROTOCOL_VERSION, member, user, secret, 0, cod)))
    try:
        await asyncio.wait_for(wire.logged_on, 10)
    except LogonRefused as e:
        raise ConnectionError(f"the exchange at {host}:{port} refused the logon of {member}/{user}: "
                              f"{e.text} ({e.reason})") from None
    except TimeoutError:
        raise ConnectionError(f"the exchange at {host}:{port} did not answer the logon of {member}/{user} "
                              "within 10 s") from None
    return wire


PREPARE_CHUNK = 5_000  # orders encoded between two turns of the event loop


async def heartbeats(wires: list[Any]) -> None:
    """A client heartbeat on every open session every 0.3 s, until cancelled."""
    beat = encode_frame(Heartbeat())
    while True:
        await asyncio.sleep(0.3)
        for w in wires:
            if w.transport is not None and not w.transport.is_closing():
                w.transport.write(beat)


class Session(Wire):
    """One member session of the generator: what it sent and is waiting for, its live
    orders (for cancels, amends and other sessions' hits), what it was answered."""

    def __init__(self, gen: Generator, index: int, member: str, user: str, secret: str, side: int) -> None:
        super().__init__()
        self.gen = gen
        self.index = index
        self.member, self.user = member, user
        self.side = side  # 0: both sides; else new orders of this side only
        self.prefix = ""
        # New orders, encoded before the clock starts: frame, kind.
        self.frames: list[bytes] = []
        self.frame_kinds: list[int] = []
        self.next_frame = 0
        self.due_new: list[float] = []  # intended send time per new order index
        self.due_hit: dict[str, float] = {}
        self.due_cancel: dict[int, float] = {}
        self.due_amend: dict[int, float] = {}
        self.hits = itertools.count()
        # Resting orders: order id -> [instrument index, side, price, qty]; ``ids`` for a
        # random pick, ``at`` its position there.
        self.live: dict[int, list[int]] = {}
        self.ids: list[int] = []
        self.at: dict[int, int] = {}
        self.sent = 0
        self.answers = 0

    # --- live orders --------------------------------------------------------------------

    def _add(self, order_id: int, row: list[int]) -> None:
        if order_id in self.live:
            return
        self.live[order_id] = row
        self.at[order_id] = len(self.ids)
        self.ids.append(order_id)

    def _take(self, order_id: int) -> list[int] | None:
        row = self.live.pop(order_id, None)
        if row is not None:
            i = self.at.pop(order_id)
            last = self.ids.pop()
            if last != order_id:
                self.ids[i] = last
                self.at[last] = i
        return row

    def pick(self, rng: random.Random) -> int | None:
        """A random resting order of this session, taken out of the pool (a cancel or an
        amend is on its way for it)."""
        if not self.ids:
            return None
        order_id = self.ids[rng.randrange(len(self.ids))]
        return order_id

    # --- answers --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        gen = self.gen
        now = time.perf_counter()
        decode = msgspec.msgpack.decode
        for frame in self.splitter.split(data):
            msg = decode(frame)
            tag = msg[0]
            if tag == _REPORT:
                body = msg[2]
                kind = body[0]
                if kind == _FILL:
                    self._fill(body)
                elif kind == _ACCEPTED:
                    self._accepted(body, now)
                elif kind == _REJECTED:
                    self._rejected(body, now, refused=msg[1] == 0)
                elif kind == _CANCELLED:
                    order_id = body[4]
                    self._take(order_id)
                    due = self.due_cancel.pop(order_id, None) if body[7] == 1 else None
                    if due is not None:
                        gen.answered(self, "cancel", now - due, None)
                    elif body[7] == 2:
                        gen.counts["rest cancelled"] += 1
                    else:
                        gen.counts[f"cancelled by the exchange ({body[7]})"] += 1
                elif kind == _AMENDED:
                    order_id = body[4]
                    row = self.live.get(order_id)
                    if row is not None:
                        row[2], row[3] = body[6], body[7]
                    due = self.due_amend.pop(order_id, None)
                    if due is not None:
                        gen.answered(self, "amend", now - due, None)
                elif kind == _EXPIRED:
                    self._take(body[4])
                elif kind == _DECREMENTED:
                    row = self.live.get(body[4])
                    if row is not None:
                        row[3] = body[7]
                        if not body[7]:
                            self._take(body[4])
            else:
                self.session_message(msg)
        self.wake.set()

    def _accepted(self, body: list[Any], now: float) -> None:
        coid = body[4]
        if not coid.startswith(self.prefix):
            return  # an earlier run's, replayed at the logon
        tail = coid[len(self.prefix):]
        if tail[0] == "h":
            due = self.due_hit.pop(tail, None)
            if due is not None:
                self.gen.answered(self, "hit", now - due, None)
            return
        idx = int(tail)
        kind = KINDS[self.frame_kinds[idx]]
        self.gen.answered(self, kind, now - self.due_new[idx], None)
        if kind == "limit":
            self._add(body[5], [self.gen.instrument_index[body[6]], body[7], body[8], body[9]])

    def _rejected(self, body: list[Any], now: float, refused: bool) -> None:
        coid, order_id, reason = body[4], body[5], body[6]
        gen = self.gen
        if coid:
            if not coid.startswith(self.prefix):
                return
            tail = coid[len(self.prefix):]
            if tail[0] == "h":
                due = self.due_hit.pop(tail, None)
                kind = "hit"
            else:
                idx = int(tail)
                due, kind = self.due_new[idx], KINDS[self.frame_kinds[idx]]
            if due is not None:
                gen.answered(self, kind, now - due, (reason, refused))
            return
        if order_id in self.due_cancel:
            gen.answered(self, "cancel", now - self.due_cancel.pop(order_id), (reason, refused))
            self._take(order_id)
        elif order_id in self.due_amend:
            gen.answered(self, "amend", now - self.due_amend.pop(order_id), (reason, refused))
        elif refused:  # a refusal by the gateway of something else (a mass cancel ...)
            gen.counts["refused other"] += 1

    def _fill(self, body: list[Any]) -> None:
        coid = body[4]
        if not coid.startswith(self.gen.run_id):  # any run of this generator: orders rest across runs
            return
        gen = self.gen
        gen.fills += 1
        if body[5] not in gen.trade_ids:  # the other side's fill may come in a later run: counted once
            gen.trade_ids.add(body[5])
            gen.trades += 1
        if not body[11]:
            self._take(body[3])
        else:
            row = self.live.get(body[3])
            if row is not None:
                row[3] = body[11]


class LogonRefused(ConnectionError):
    def __init__(self, text: str, reason: int) -> None:
        super().__init__(text)
        self.text = text
        self.reason = reason


class Tick(msgspec.Struct):
    """One second of a run: what was sent and answered in it, latency of its answers."""

    t: float  # seconds since the run's start, at the end of this interval
    sent: int  # per second over the interval (a second, the last one shorter)
    answered: int
    rejected: int
    p50_us: int
    p99_us: int
    max_us: int


class RunResult(msgspec.Struct):
    """A run's figures (see ``Generator.run``)."""

    mode: str  # "open" or "closed"
    target_rate: int  # open loop: commands a second offered; 0 closed loop
    seconds: float  # from the first send to the last answer waited for
    send_seconds: float  # the sending part
    sent: dict[str, int]
    answered: dict[str, int]
    rejected: dict[str, int]  # by reason, "kind:reason" (gateway refusals "kind:reason:gateway")
    unanswered: int
    fills: int
    trades: int  # distinct trade ids in the sessions' fills
    rate: float  # answers per second over ``seconds``
    send_rate: float  # commands sent per second over ``send_seconds``
    latency_us: dict[str, float]
    latency_by_kind_us: dict[str, dict[str, float]]
    distribution: list[list[float]]
    timeline: list[Tick]
    other: dict[str, int]

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    @property
    def errors(self) -> int:
        return sum(self.rejected.values())


class Generator:
    """Sessions on one exchange, and runs over them (open or closed loop, any number in
    turn: a ramp reuses the sessions)."""

    def __init__(self, host: str, port: int, creds: list[tuple[str, str, str, int]], instruments: list[Instrument],
                 mix: Mix, seed: int = 1) -> None:
        if not creds:
            raise ValueError("no session to drive")
        self.host, self.port = host, port
        self.creds = creds
        self.instruments = instruments
        self.instrument_index = {ins.symbol: i for i, ins in enumerate(instruments)}
        self.mix = mix
        self.rng = random.Random(seed)
        # Every trade id a session of this generator saw: a trade's two fills reach two
        # sessions, and at the end of a run one may come before it and the other after.
        self.trade_ids: set[int] = set()
        self.sessions: list[Session] = []
        self.run_id = f"{random.Random(seed * 7919 + time.time_ns()).getrandbits(24):06x}"
        self.runs = 0
        self._reset()
        self._beating: asyncio.Task[Any] | None = None
        self.on_tick: Callable[[Tick, dict[str, Any]], None] | None = None

    def _reset(self) -> None:
        for s in getattr(self, "sessions", []):
            s.sent = s.answers = 0
        self.counts: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.answered_n: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.fills = 0
        self.trades = 0  # trades first seen in this run (trade_ids spans every run)
        self.hist = histogram()
        self.by_kind = {k: histogram() for k in KINDS}
        self.tick_hist = histogram()
        self.tick_sent = self.tick_answered = self.tick_rejected = 0

    async def connect(self) -> None:
        for k, (member, user, secret, side) in enumerate(self.creds):

            def prefix(s: Session, k: int = k) -> None:  # before the logon: earlier runs' replayed reports do not count
                s.prefix = f"{self.run_id}{k}-"

            self.sessions.append(await open_wire(
                lambda m=member, u=user, s=secret, sd=side, i=k: Session(self, i, m, u, s, sd),
                self.host, self.port, member, user, secret, int(CodMode.ON), prefix))
        self._beating = asyncio.create_task(heartbeats(self.sessions))

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
        for s in self.sessions:
            if s.transport is not None:
                s.transport.close()

    # --- commands -----------------------------------------------------------------------

    async def prepare(self, count: int) -> None:
        """Encode ``count`` new orders for the sessions (before the clock starts),
        giving the event loop a turn every ``PREPARE_CHUNK`` orders: a run of ten
        seconds prepares over a million, and the sessions' heartbeats must go on
        meanwhile (the exchange drops a session silent for 3 s)."""
        rng, mix = self.rng, self.mix
        new_weights = [mix.limit, mix.market, mix.ioc, mix.fok]
        if sum(new_weights) <= 0:
            new_weights = [1.0, 0, 0, 0]
        cum = list(itertools.accumulate(new_weights))
        n = len(self.sessions)
        per = count // n + 1
        cross = mix.cross / 100
        for s in self.sessions:
            s.frames, s.frame_kinds, s.next_frame = [], [], 0
            s.due_new = [0.0] * per
            for i in range(per):
                if i % PREPARE_CHUNK == PREPARE_CHUNK - 1:
                    await asyncio.sleep(0)
                kind = bisect.bisect_right(cum, rng.random() * cum[-1])
                kind = min(kind, 3)
                ins = self.instruments[rng.randrange(len(self.instruments))]
                side = s.side or (BUY if rng.random() < 0.5 else SELL)
                sign = -1 if side == BUY else 1
                qty = rng.randint(1, mix.qty_max)
                coid = f"{s.prefix}{i}"
                if kind == 1:
                    cmd = NewOrder(s.member, coid, ins.symbol, side, qty, 0, int(OrdType.MARKET))
                else:
                    through = kind in (2, 3) or rng.random() < cross
                    price = ins.ref - sign * 20 * ins.tick if through else ins.ref + sign * rng.randint(1, mix.levels) * ins.tick
                    tif = (TimeInForce.DAY, TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK)[kind]
                    cmd = NewOrder(s.member, coid, ins.symbol, side, qty, price, int(OrdType.LIMIT), int(tif))
                s.frames.append(encode_frame(cmd))
                s.frame_kinds.append(kind)

    def _send_one(self, s: Session, due: float) -> bool:
        """Queue one command of the mix on session ``s`` due at ``due``; False when the
        session has no prepared new order left."""
        rng = self.rng
        kind = KINDS[bisect.bisect_right(self._cum, rng.random() * self._cum[-1])]
        if kind == "cancel" or kind == "amend":
            order_id = s.pick(rng)
            if order_id is not None and order_id not in s.due_cancel and order_id not in s.due_amend:
                row = s.live[order_id]
                if kind == "cancel":
                    s.due_cancel[order_id] = due
                    s.out.append(encode_frame(Cancel(s.member, order_id)))
                    s._take(order_id)
                else:
                    ins = self.instruments[row[0]]
                    sign = -1 if row[1] == BUY else 1
                    price = ins.ref + sign * rng.randint(1, self.mix.levels) * ins.tick
                    s.due_amend[order_id] = due
                    s.out.append(encode_frame(Amend(s.member, order_id, price, rng.randint(1, self.mix.qty_max))))
                self.sent[kind] += 1
                self.tick_sent += 1
                s.sent += 1
                return True
        elif kind == "hit" and len(self.sessions) > 1:
            other = self.sessions[(s.index + 1 + rng.randrange(len(self.sessions) - 1)) % len(self.sessions)]
            target = other.pick(rng) if other.member != s.member else None
            if target is not None:
                row = other.live[target]
                tail = f"h{next(s.hits)}"
                s.due_hit[tail] = due
                s.out.append(encode_frame(HitOrder(s.member, s.prefix + tail, self.instruments[row[0]].symbol,
                                                   target, rng.randint(1, self.mix.qty_max))))
                self.sent["hit"] += 1
                self.tick_sent += 1
                s.sent += 1
                return True
        i = s.next_frame
        if i >= len(s.frames):
            return False
        s.next_frame = i + 1
        s.due_new[i] = due
        s.out.append(s.frames[i])
        self.sent[KINDS[s.frame_kinds[i]]] += 1
        self.tick_sent += 1
        s.sent += 1
        return True

    def answered(self, s: Session, kind: str, seconds: float, rejected: tuple[int, bool] | None) -> None:
        s.answers += 1
        us = min(max(int(seconds * 1e6), 1), LATENCY_MAX_US)
        self.hist.record_value(us)
        self.tick_hist.record_value(us)
        self.by_kind[kind].record_value(us)
        self.answered_n[kind] += 1
        self.tick_answered += 1
        if rejected is not None:
            reason, refused = rejected
            self.rejected[f"{kind}:{reason}{':gateway' if refused else ''}"] += 1
            self.tick_rejected += 1

    # --- runs ---------------------------------------------------------------------------

    async def run(self, *, rate: int, seconds: float = 0.0, commands: int = 0, window: int = 2_000,
                  drain_s: float = 30.0) -> RunResult:
        """One run: open loop at ``rate`` commands a second (closed loop with ``window``
        unanswered per session when ``rate`` is 0), for ``seconds`` or ``commands``."""
        if not self.sessions:
            await self.connect()
        self._reset()
        for s in self.sessions:  # client order ids are unique per day: each run has its own
            s.prefix = f"{self.run_id}r{self.runs}s{s.index}-"
            s.due_hit.clear()
            s.due_cancel.clear()
            s.due_amend.clear()
        self._cum = list(itertools.accumulate(self.mix.weights()))
        expected = commands or int((rate or 200_000) * seconds * 1.1) + 1000
        new_share = sum(self.mix.weights()[:4]) / sum(self.mix.weights())
        await self.prepare(int(expected * max(new_share, 0.05)) + 2000 if not commands else commands + 100)
        loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(self._ticker(loop.time()))
        start = loop.time()
        t0 = time.perf_counter()
        try:
            if rate:
                await self._open(rate, seconds, commands, t0)
            else:
                await self._closed(window, seconds, commands)
            send_seconds = loop.time() - start
            deadline = loop.time() + drain_s
            while self._waiting() and loop.time() < deadline and not any(s.closed.done() for s in self.sessions):
                await asyncio.sleep(0.005)
            await fence(list(self.sessions), self.instruments[0].symbol, deadline)
        finally:
            ticker.cancel()
        seconds_all = loop.time() - start
        if self.tick_sent or self.tick_answered:  # the last part of a second
            self._tick(seconds_all)
        if any(s.closed.done() for s in self.sessions):
            why = "; ".join(f"{s.member}/{s.user}: {s.closed_by_exchange}" for s in self.sessions if s.closed_by_exchange)
            raise ConnectionError("the exchange closed a load session" + (f" ({why})" if why else ""))
        total_answered = sum(self.answered_n.values())
        self.runs += 1
        return RunResult(
            mode="open" if rate else "closed", target_rate=rate, seconds=seconds_all, send_seconds=send_seconds,
            sent=dict(self.sent), answered=dict(self.answered_n), rejected=dict(self.rejected),
            unanswered=self._waiting(), fills=self.fills, trades=self.trades,
            rate=total_answered / seconds_all if seconds_all else 0.0,
            send_rate=sum(self.sent.values()) / send_seconds if send_seconds else 0.0,
            latency_us=percentiles(self.hist),
            latency_by_kind_us={k: percentiles(h) for k, h in self.by_kind.items() if h.get_total_count()},
            distribution=distribution(self.hist), timeline=self.timeline, other=dict(self.counts))

    def _waiting(self) -> int:
        return sum(self.sent.values()) - sum(self.answered_n.values())

    async def _open(self, rate: int, seconds: float, commands: int, t0: float) -> None:
        sessions = self.sessions
        n = len(sessions)
        issued = 0
        limit = commands or int(rate * seconds)
        step = 1 / rate
        while issued < limit:
            now = time.perf_counter()
            due = min(int((now - t0) * rate) + 1, limit)
            while issued < due:
                s = sessions[issued % n]
                if not self._send_one(s, t0 + issued * step):
                    limit = issued  # out of prepared orders: the run ends here
                    break
                issued += 1
            for s in sessions:
                s.flush()
                if s.closed.done():
                    return
            await asyncio.sleep(0.0005)

    async def _closed(self, window: int, seconds: float, commands: int) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds if seconds else float("inf")
        limit = commands or 1 << 62
        issued = [0]

        async def keep_full(s: Session) -> None:
            while loop.time() < end and issued[0] < limit and not s.closed.done():
                # Everything the window allows at once: the exchange always has input queued.
                waiting = s.sent - s.answers
                now = time.perf_counter()
                while waiting < window and issued[0] < limit:
                    if not self._send_one(s, now):
                        return
                    issued[0] += 1
                    waiting += 1
                s.flush()
                s.wake.clear()
                await s.wake.wait()

        await asyncio.gather(*(keep_full(s) for s in self.sessions))

    async def _ticker(self, start: float) -> None:
        self.timeline: list[Tick] = []
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            self._tick(loop.time() - start)

    def _tick(self, t: float) -> None:
        """Close the current second of the timeline (rates per second of its length)."""
        h = self.tick_hist
        length = max(t - (self.timeline[-1].t if self.timeline else 0.0), 1e-3)
        tick = Tick(round(t, 3), round(self.tick_sent / length), round(self.tick_answered / length),
                    round(self.tick_rejected / length), h.get_value_at_percentile(50) if h.get_total_count() else 0,
                    h.get_value_at_percentile(99) if h.get_total_count() else 0, h.get_max_value())
        self.timeline.append(tick)
        self.tick_hist = histogram()
        self.tick_sent = self.tick_answered = self.tick_rejected = 0
        if self.on_tick is not None:
            self.on_tick(tick, {"sent": sum(self.sent.values()), "answered": sum(self.answered_n.values()),
                                "errors": sum(self.rejected.values())})

"""The gateway server: sessions in, one core loop, per-member sequenced reports out.

Contract:
- Sessions (``gateway.session``) put checked commands on the core queue. The core loop
  takes everything queued (across sessions, at most BATCH_MAX) as one batch, stamps
  each command with the sequencer, starts ``journal(batch)`` (the write-ahead seam: a
  no-op by default), and applies the batch to the core in one call only once that
  journal write has returned (up to PIPELINE_DEPTH batches are journaled at once, so
  no acknowledgement leaves before its batch is durable); then it routes the core's
  events and writes each session's replies with one write. A batch the journal refuses
  is rejected whole (JOURNAL_UNAVAILABLE) and its sequence numbers are reused.
- The core's events are routed into the members' and staff users' streams
  (``gateway.streams``: sequences, fills, client order ids, snapshots of the streams);
  each session of a stream gets its new reports with one write per batch, and a
  client that logs on with the last seq_out it saw gets every later report once, in
  order, then the live stream. What the gateway refuses itself goes as
  ``Report(0, Rejected)``, outside the sequence: to the session that sent the command,
  or (a batch the journal refused) to every session of its stream.
- A cancel-on-disconnect that the journal refused is entered again after the next
  batch the journal takes, unless the member has logged on again meanwhile.
- A retransmitted client order id gets its first outcome in a ``Resent``, and the
  order is never entered twice; an id whose order was refused before the core (and
  so never entered) is free again.
- Queries (``gateway.queries``) are answered from the core's state after the batch they
  arrived with.
- Connections: those not logged on yet count against a budget per source address and
  in all (``prelogon_per_address``, ``prelogon_max``), logged-on sessions against
  ``sessions_max``; the timer closes connections that do not log on in time, frames
  not completed in time, silent peers, and sends heartbeats and schedule ticks.
- Limits: the core queue (``pending_max``: sessions stop being read above it), each
  member's history, each session's write buffer (a peer not reading is dropped),
  sessions, frames (see ``gateway.session``).

The core is anything with ``apply_batch(cmds)``, an ``out`` list of events, ``engine``
and ``ledger`` (``settlement.exchange.Exchange``, or ``EngineCore`` around a bare engine).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from engine.matching import Engine
from engine.messages import (
    TEXT_MAX,
    CancelReason,
    MassCancel,
    Note,
    Rejected,
    Tick,
)
from engine.sequencer import Sequencer
from gateway.auth import Authenticator
from gateway.config import SessionSection
from gateway.framing import FrameWriter
from gateway.protocol import (
    ENGINE_INBOUND,
    REGISTRY_INBOUND,
    GatewayReason,
    Report,
    Resent,
    Role,
    ServerHeartbeat,
    inbound_decoder,
    is_staff,
)
from gateway.queries import Queries
from gateway.session import (
    ACTIVE,
    CLOSED,
    LOGGED_ON,
    LOGGING_ON,
    NEW,
    PRELOGON,
    REPLAY_CHUNK,
    UNCOUNTED,
    Session,
    _Dup,
)
from gateway.streams import GatewayState, MemberStream, Router, StreamsCapture
from gateway.watch import Feed

log = logging.getLogger("etx.server")

PENDING_MAX = 200_000  # queued messages above which sessions stop being read
BATCH_MAX = 16_384  # commands per core batch (one journal record holds at most 65,536)
PIPELINE_DEPTH = 4  # batches being journaled at once
DISCONNECT = int(CancelReason.DISCONNECT)
JOURNAL_REFUSED = "the journal is unavailable; not entered"
LOGON_DEADLINE_S = 10.0  # a connection that has not logged on by then is closed
BATCH_TIMES_MAX = 65_536  # batch durations kept for the health figures of one second


class Core(Protocol):
    out: list[Any]
    engine: Engine
    ledger: Any

    def apply_batch(self, cmds: list[Any]) -> None: ...


class EngineCore:
    """A bare engine as the server's core (tests, replays, and until settlement is
    wired in)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ledger = engine.ledger
        self.out = engine.out
        self.apply_batch = engine.apply_batch

    def state_hash(self) -> str:
        return self.engine.state_hash()


async def _no_journal(batch: list[Any]) -> None:
    return None


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a journal failure as seen; the core loop reports it."""
    if not fut.cancelled():
        fut.exception()


class Server:
    """See the module docstring."""

    def __init__(
        self,
        core: Core,
        auth: Authenticator,
        members: Iterable[str],
        cfg: SessionSection | None = None,
        *,
        operator_member: str = "EXCH",
        sequencer: Sequencer | None = None,
        journal: Callable[[list[Any]], Awaitable[None]] = _no_journal,
        on_events: Iterable[Callable[[list[Any]], None]] = (),
        tick_s: float = 1.0,
        pending_max: int = PENDING_MAX,
        logon_deadline_s: float = LOGON_DEADLINE_S,
        replay_chunk: int = REPLAY_CHUNK,
    ) -> None:
        self.core = core
        self.auth = auth
        self.cfg = cfg or SessionSection()
        self.sequencer = sequencer or Sequencer(seq=core.engine.last_seq, ts=core.engine.last_ts)
        self._journal = journal
        # Called with each batch's events before they are dropped (market data, the
        # registry writer): synchronous, cheap, no I/O.
        self.on_events = list(on_events)
        self.tick_s = tick_s
        self.pending_max = pending_max
        self.logon_deadline_s = logon_deadline_s
        self.replay_chunk = replay_chunk
        self.decode = inbound_decoder().decode
        self.writer = FrameWriter()
        self.operator_member = operator_member
        # One stream per trading member (shared by its sessions), and one per staff user
        # (operators, clerks, the authority: keyed "member/user"), each its own sequence:
        # a staff user sees the answers to its own commands and the market's status.
        staff = [f"{m}/{u}" for (m, u), user in sorted(auth.users.items()) if is_staff(user.role, m, operator_member)]
        self.router = Router(core.engine, members, staff)
        self.streams = self.router.streams
        self.members = self.router.members
        self.system = self.router.system
        self.queries = Queries(core, self.router)
        # Called with each batch and its events (the operator feed, surveillance).
        self.on_batches: list[Callable[[list[Any], list[Any]], None]] = []
        self._batch_us: collections.deque[int] = collections.deque(maxlen=BATCH_TIMES_MAX)
        self.feed = Feed(core.engine, lambda: list(self.sessions), self._figures)
        self.on_batches.append(self.feed.on_batch)
        self.queries.recent = self.feed.recent
        # Connections: those not logged on yet, per source address, have their own budget
        # (prelogon_max, prelogon_per_address), so that strangers cannot take the places
        # of members; logged-on sessions count against sessions_max.
        self.prelogon: dict[str, int] = {}
        self.prelogon_total = 0
        self.logged_on = 0
        self.alerts: list[Callable[[str, str], None]] = []  # operator alert sinks (market data's ops topic)
        self.core_types = frozenset(ENGINE_INBOUND + REGISTRY_INBOUND) | {Tick, Note}
        # The core queue: commands with the stream they came from; other work (queries,
        # gateway rejects, retransmissions) with the session or stream it is for.
        self.p_cmds: list[Any] = []
        self.p_origins: list[MemberStream] = []
        self.p_extra: list[Any] = []
        self.p_extra_from: list[Any] = []
        # Members whose cancel-on-disconnect the journal refused: entered again after
        # the next batch it takes.
        self._cod_retry: dict[str, MemberStream] = {}
        self._cod_at: dict[str, float] = {}  # member -> when its last cancel-on-disconnect was queued
        self.sessions: set[Session] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._wakeup: asyncio.Event | None = None
        self._paused: list[Session] = []
        self._dirty_set: set[Session] = set()  # sessions with output in the current batch
        # Batches stamped and being journaled, in sequence order:
        # (journal future or None, commands, their streams, other work, its sessions).
        self._inflight: collections.deque[tuple[Any, list[Any], list[MemberStream], list[Any], list[Any]]] = (
            collections.deque())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        # A hot standby's gateway (gateway/replication.py): exchange staff log on and
        # query, nothing is entered and no clock tick is journaled until it takes over.
        self.standby = False
        self.ssl_context: ssl.SSLContext | None = None
        self._session_ids = 0
        self._stopping = False
        self.batches = 0  # core batches applied (statistics)
        self.commands = 0  # commands applied (statistics)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        """Listen; returns the bound (host, port)."""
        self.loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.router.track_core_orders()
        # TLS is started by each session (gateway.session): its handshake then counts
        # against the connection budgets and the logon deadline.
        self.ssl_context = ssl_context
        self._server = await self.loop.create_server(lambda: Session(self), host, port, backlog=256)
        self.spawn(self._core_loop())
        self.spawn(self._timer())
        sock = self._server.sockets[0].getsockname()
        log.info("listening on %s:%d%s", sock[0], sock[1], " (TLS)" if ssl_context else "")
        return sock[0], sock[1]

    async def stop(self) -> None:
        """Stop accepting, tell every session, apply what is queued, close."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        await self._drain()
        for s in list(self.sessions):
            s.cod = False  # a shutdown is not a member's disconnect
            s.close(GatewayReason.SHUTDOWN, "the exchange is shutting down")
        await self._drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    def next_session_id(self) -> int:
        self._session_ids += 1
        return self._session_ids

    def session_opened(self, s: Session) -> bool:
        """Count a new connection against the budget of connections not logged on (in
        all, and from its address); False when it is over either (it is closed)."""
        cfg = self.cfg
        here = self.prelogon.get(s.host, 0)
        if here >= cfg.prelogon_per_address or self.prelogon_total >= cfg.prelogon_max:
            return False
        self.prelogon[s.host] = here + 1
        self.prelogon_total += 1
        s.counted = PRELOGON
        self.sessions.add(s)
        return True

    def session_logged_on(self, s: Session) -> bool:
        """Move a session from the pre-logon budget to the logged-on one; False when
        ``sessions_max`` sessions are logged on already."""
        if self.logged_on >= self.cfg.sessions_max:
            return False
        self._uncount(s)
        self.logged_on += 1
        s.counted = LOGGED_ON
        return True

    def _uncount(self, s: Session) -> None:
        if s.counted == PRELOGON:
            left = self.prelogon[s.host] - 1
            if left:
                self.prelogon[s.host] = left
            else:
                del self.prelogon[s.host]
            self.prelogon_total -= 1
        elif s.counted == LOGGED_ON:
            self.logged_on -= 1
        s.counted = UNCOUNTED

    def alert(self, kind: str, text: str, instrument: str = "", member: str = "") -> None:
        """An operator alert: logged, pushed to the watching staff and handed to the
        alert sinks (the market data's ops topic)."""
        log.warning("alert %s: %s", kind, text)
        self.feed.alert(kind, text, instrument, member)
        for sink in self.alerts:
            sink(kind, text)

    def _figures(self) -> dict[str, int]:
        """The server's own health figures (the operator feed reads them each second)."""
        times = sorted(self._batch_us)
        self._batch_us.clear()
        return {"commands": self.commands, "batches": self.batches,
                "batch_p50_us": times[len(times) // 2] if times else 0,
                "batch_p99_us": times[min(len(times) - 1, len(times) * 99 // 100)] if times else 0,
                "sessions": self.logged_on, "connecting": self.prelogon_total}

    def note(self, actor: str, kind: str, text: str) -> None:
        """Record a staff action taken outside the core (an unlock, a disconnect) in the
        journal, the exchange's one history, as a ``Note`` command."""
        self.p_cmds.append(Note(actor, kind, text[:TEXT_MAX]))
        self.p_origins.append(self.streams.get(actor, self.system))
        self.wake()

    def disconnect(self, session_id: int, text: str) -> bool:
        """End a session (an operator's action); False when there is no such session."""
        for s in list(self.sessions):
            if s.session_id == session_id and s.acked:
                s.close(GatewayReason.DISCONNECTED, text or "disconnected by an operator")
                return True
        return False

    def session_lost(self, s: Session) -> None:
        self.sessions.discard(s)
        self._uncount(s)
        self.feed.forget(s)
        if not s.joined:
            return
        s.joined = False
        stream = s.stream
        assert stream is not None
        stream.sessions.remove(s)
        log.info("session ended: member=%s user=%s session=%d", s.member, s.user, s.session_id)
        if s.cod and not self._stopping:
            self._cod_at[s.member] = self.loop.time()
            self.p_cmds.append(MassCancel(s.member, "", DISCONNECT))
            self.p_origins.append(stream)
            self.wake()

    def wake(self, s: Session | None = None) -> None:
        assert self._wakeup is not None
        self._wakeup.set()
        if s is not None and not s.paused and len(self.p_cmds) + len(self.p_extra) > self.pending_max:
            s.paused = True
            assert s.transport is not None
            s.transport.pause_reading()
            self._paused.append(s)

    # --- the core loop ---------------------------------------------------------------

    async def _core_loop(self) -> None:
        """Take batches, start their journal writes, apply each once durable, in order.

        Up to ``PIPELINE_DEPTH`` batches are journaled at once: while one waits for its
        fsync the next is stamped and submitted (the journal group-commits them), so
        the core applies one batch while the disk works on the next. Nothing is
        applied, and so nothing acknowledged, before its own batch is durable."""
        wakeup = self._wakeup
        assert wakeup is not None
        inflight = self._inflight
        while True:
            while (self.p_cmds or self.p_extra) and len(inflight) < PIPELINE_DEPTH:
                self._take()
            if not inflight:
                wakeup.clear()
                if self.p_cmds or self.p_extra:
                    continue
                await wakeup.wait()
                continue
            head = inflight[0]
            fut = head[0]
            if fut is not None and not fut.done():
                # Wait for the head to be durable, or for new input to journal meanwhile.
                wakeup.clear()
                waiter = asyncio.ensure_future(wakeup.wait())
                await asyncio.wait((fut, waiter), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            inflight.popleft()
            self._finish(head)

    def _take(self) -> None:
        """Move the queue (at most BATCH_MAX commands) into a stamped batch whose
        journal write starts now."""
        cmds, origins = self.p_cmds, self.p_origins
        extra, extra_from = self.p_extra, self.p_extra_from
        if len(cmds) > BATCH_MAX:  # the rest waits for the next batch, queries with it
            self.p_cmds, self.p_origins = cmds[BATCH_MAX:], origins[BATCH_MAX:]
            cmds, origins = cmds[:BATCH_MAX], origins[:BATCH_MAX]
            extra, extra_from = [], []
        else:
            self.p_cmds, self.p_origins, self.p_extra, self.p_extra_from = [], [], [], []
        fut: asyncio.Future[None] | None = None
        if cmds:
            # One clock reading per batch: its commands arrived together.
            self.sequencer.stamp_batch(cmds)
            if self._journal is not _no_journal:
                fut = asyncio.ensure_future(self._journal(cmds))
                fut.add_done_callback(_retrieve)
        self._inflight.append((fut, cmds, origins, extra, extra_from))

    def _finish(self, entry: tuple[Any, list[Any], list[MemberStream], list[Any], list[Any]]) -> None:
        fut, cmds, origins, extra, extra_from = entry
        if fut is not None and fut.exception() is not None:
            # Not durable: nothing of it may be applied, nor of the batches journaled
            # after it (the journal refuses everything after a gap). Their numbers
            # were never used: stamping resumes at this batch's first.
            doomed = [(cmds, origins, extra, extra_from)]
            while self._inflight:
                _, c, o, e, f = self._inflight.popleft()
                doomed.append((c, o, e, f))
            log.error("journal refused %d batches (%s); their commands are rejected", len(doomed), fut.exception())
            self.sequencer.seq = cmds[0].seq - 1
            now = time.time_ns()
            for c, o, e, f in doomed:
                refusals: list[Any] = []
                refused_to: list[MemberStream] = []
                for cmd, origin in zip(c, o, strict=True):
                    t = type(cmd)
                    if t is Tick:
                        continue
                    if t is MassCancel and cmd.reason == DISCONNECT:
                        self._cod_retry[origin.member] = origin  # nobody to tell: try again later
                        continue
                    coid = getattr(cmd, "coid", "")
                    if coid and origin.coids.get(coid, False) is None:
                        del origin.coids[coid]  # never entered: the id is free again
                    refusals.append(Report(0, Rejected(0, now, origin.member, coid, getattr(cmd, "order_id", 0),
                                                       int(GatewayReason.JOURNAL_UNAVAILABLE), JOURNAL_REFUSED)))
                    refused_to.append(origin)
                # Ahead of the batch's other work: a retransmission queued with it comes
                # after its original's refusal (see _resend).
                self._apply([], [], refusals + e, refused_to + f)
            return
        # From here to the writes there is no await: routing, replay at logon and
        # session ends see each batch whole.
        self._apply(cmds, origins, extra, extra_from)
        if fut is not None and self._cod_retry:
            self._retry_cancel_on_disconnect()

    def _retry_cancel_on_disconnect(self) -> None:
        """The journal takes batches again: enter the cancels-on-disconnect it refused,
        for members none of whose traders has logged on since the session ended (a
        trader back in the market decides about its open orders itself)."""
        for member, stream in self._cod_retry.items():
            ended = self._cod_at.get(member, 0.0)
            if any(s.role == Role.TRADER and s.opened > ended for s in stream.sessions):
                log.info("cancel-on-disconnect of %s not retried: a trader has logged on since", member)
                continue
            log.info("cancel-on-disconnect of %s retried now that the journal writes", member)
            self.p_cmds.append(MassCancel(member, "", DISCONNECT))
            self.p_origins.append(stream)
        self._cod_retry.clear()
        self.wake()

    async def execute(self, cmds: list[Any], origin: MemberStream) -> list[Any]:
        """Stamp, journal and apply commands that no session sent (the offline tools, on
        an exchange that is not listening), exactly as the core loop would: the events
        are routed into the members' streams and handed to the listeners (settlement).
        Returns the events. Only before ``start``."""
        assert self._server is None, "execute is for an exchange that is not listening"
        self.loop = asyncio.get_running_loop()
        self.sequencer.stamp_batch(cmds)
        await self._journal(cmds)
        events: list[Any] = []
        collect = events.extend
        self.on_events.append(collect)
        try:
            self._apply(cmds, [origin] * len(cmds), [], [])
        finally:
            self.on_events.remove(collect)
        return events

    @property
    def started(self) -> bool:
        return self._server is not None

    def take_over(self) -> None:
        """A standby becomes the primary: its sessions get their roles' full permissions."""
        from gateway.session import PERMISSIONS

        self.standby = False
        for s in self.sessions:
            if s.acked and s.role is not None:
                s.perms = PERMISSIONS[s.role]

    def follow(self, cmds: list[Any]) -> None:
        """Apply a batch journaled by another node (a standby following the primary's
        stream), exactly as a replay at start applies it: the events are routed into
        the members' streams and handed to the listeners. Only before ``start``."""
        assert self._server is None or self.standby, "follow is for a standby or an exchange that is not listening"
        core = self.core
        core.apply_batch(cmds)
        out = core.out
        self.rebuild(cmds, out)
        for listener in self.on_events:
            listener(out)
        for batch_listener in self.on_batches:
            batch_listener(cmds, out)
        out.clear()
        self.batches += 1
        self.commands += len(cmds)

    async def _drain(self, timeout_s: float = 30.0) -> None:
        """Wait until everything queued is applied (or the timeout passes)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self.p_cmds or self.p_extra or self._inflight) and loop.time() < end:
            self.wake()
            await asyncio.sleep(0.005)

    def _apply(self, cmds: list[Any], origins: list[MemberStream], extra: list[Any], extra_from: list[Any]) -> None:
        core = self.core
        touched: list[MemberStream] = []
        if cmds:
            started = time.perf_counter()
            core.apply_batch(cmds)
            self._batch_us.append(int((time.perf_counter() - started) * 1e6))
            self.batches += 1
            self.commands += len(cmds)
            out = core.out
            self.router.route(out, origins, cmds[0].seq, touched)
            for listener in self.on_events:
                listener(out)
            for batch_listener in self.on_batches:
                batch_listener(cmds, out)
            out.clear()
            self._encode(touched)
        for msg, frm in zip(extra, extra_from, strict=True):
            if touched:  # reports queued so far go out ahead of this answer
                self._encode(touched)
            t = type(msg)
            if t is Report:
                self._refuse(frm, msg)
            elif t is _Dup:
                self._resend(frm, msg.coid)
            else:
                self._query(frm, msg)
        if touched:
            self._encode(touched)
        self._write()

    def _refuse(self, to: MemberStream | Session, rep: Report) -> None:
        """A refusal by the gateway, outside the sequence: of a session's own command to
        that session alone; of commands the journal refused, to every session of the
        stream they came from (the session that sent them may be gone)."""
        sessions: list[Session] = to.sessions if isinstance(to, MemberStream) else [to]
        if not sessions:
            return
        buf = bytearray()
        self.writer.append(buf, rep)
        dirty = self._dirty_set
        for s in sessions:
            if s.state != CLOSED:
                s.wbuf += buf
                dirty.add(s)

    # --- streams (gateway.streams) -----------------------------------------------------

    def origin_of(self, cmd: Any) -> MemberStream:
        return self.router.origin_of(cmd)

    def rebuild(self, cmds: list[Any], events: list[Any]) -> None:
        """Route the events of journaled commands replayed at start into the streams
        (``Router.rebuild``); the sequencer continues after them. Before ``start``."""
        self.router.rebuild(cmds, events)
        self.sequencer.seq = self.core.engine.last_seq
        self.sequencer.ts = max(self.sequencer.ts, self.core.engine.last_ts)

    def capture_streams(self, history_max: int) -> StreamsCapture:
        return self.router.capture(history_max)

    def restore_streams(self, state: GatewayState, open_orders: Iterable[tuple[int, str, str, int, int]]) -> None:
        self.router.restore(state, open_orders)

    @property
    def track(self) -> dict[int, tuple[str, int, int, MemberStream]]:
        return self.router.track

    def _resend(self, s: Session, coid: str) -> None:
        if s.state == CLOSED or s.stream is None:
            return
        rep = s.stream.coids.get(coid)
        if rep is None:
            # The original is ahead of this in the queue, so it has an outcome unless
            # the journal refused its batch (which freed the id): this copy was not
            # entered either.
            self.writer.append(s.wbuf, Report(0, Rejected(0, time.time_ns(), s.member, coid, 0,
                                                          int(GatewayReason.JOURNAL_UNAVAILABLE), JOURNAL_REFUSED)))
        else:
            self.writer.append(s.wbuf, Resent(rep.seq_out, rep.body))
        self._dirty_set.add(s)

    def _encode(self, touched: list[MemberStream]) -> None:
        """Encode the new reports of each touched stream once, into the buffers of the
        stream's sessions."""
        dirty = self._dirty_set
        frames = self.writer.frames
        history_max = self.cfg.history_max
        for stream in touched:
            if stream.sessions:
                buf = frames(stream.history[stream.mark:])
                for s in stream.sessions:
                    s.wbuf += buf
                    dirty.add(s)
            stream.mark = -1
            if len(stream.history) > history_max:
                drop = len(stream.history) - history_max // 2
                del stream.history[:drop]
                stream.base += drop
        touched.clear()

    def _write(self) -> None:
        """One write per session with output in this batch."""
        dirty = self._dirty_set
        self._dirty_set = set()
        now = self.loop.time()
        limit = self.cfg.write_buffer_max
        for s in dirty:
            t = s.transport
            if s.state == CLOSED or t is None or not s.wbuf:
                s.wbuf = bytearray()
                continue
            t.write(s.wbuf)
            s.wbuf = bytearray()
            s.last_tx = now
            if t.get_write_buffer_size() > limit:
                s.drop(GatewayReason.SLOW_CONSUMER, f"more than {limit} bytes of output unread")
        if self._paused and len(self.p_cmds) + len(self.p_extra) <= self.pending_max // 2:
            for s in self._paused:
                s.paused = False
                if s.state != CLOSED and s.transport is not None:
                    s.transport.resume_reading()
            self._paused.clear()

    def write_reports(self, s: Session, stream: MemberStream, after: int, upto: int) -> None:
        """Write the reports with seq_out in (after, upto] to one session (replay)."""
        assert s.transport is not None
        start = after - stream.base
        s.transport.write(self.writer.frames(stream.history[start:upto - stream.base]))
        s.last_tx = self.loop.time()

    def _query(self, s: Session, q: Any) -> None:
        if s.state == CLOSED:
            return
        self.writer.append(s.wbuf, self.queries.answer(s.member, s.staff, q))
        self._dirty_set.add(s)

    # --- time ------------------------------------------------------------------------

    async def _timer(self) -> None:
        """Heartbeats, silent peers, logon deadlines and schedule ticks."""
        step = 0.1
        next_tick = self.loop.time() + self.tick_s
        timeout_n = self.cfg.timeout_heartbeats
        while True:
            await asyncio.sleep(step)
            now = self.loop.time()
            self.feed.tick(now)
            frame_s = self.cfg.frame_deadline_ms / 1000
            for s in list(self.sessions):
                if s.state == ACTIVE:
                    hb = s.heartbeat_s
                    if now - s.last_rx > hb * timeout_n:
                        s.close(GatewayReason.HEARTBEAT_TIMEOUT, f"nothing received for {hb * timeout_n:.1f}s")
                        self.alert("session-dropped", f"session {s.session_id} of {s.member}/{s.user} from {s.peer} "
                                   f"timed out: nothing received for {hb * timeout_n:.1f} s", "", s.member)
                    elif s.partial_since and now - s.partial_since > frame_s:
                        # A frame trickled a byte at a time keeps last_rx fresh: the frame
                        # itself must complete in time.
                        s.close(GatewayReason.FRAME_TIMEOUT, f"a frame begun was not complete within {frame_s:g}s")
                    elif now - s.last_tx >= hb:
                        s.send(ServerHeartbeat(time.time_ns()))
                elif s.state in (NEW, LOGGING_ON) and not s.acked and now - s.opened > self.logon_deadline_s:
                    # From the connection, not the last byte: a logon trickled a byte at a
                    # time (or a TLS handshake left hanging) must not hold a connection.
                    s.close(GatewayReason.NOT_LOGGED_ON, f"no logon within {self.logon_deadline_s:g}s")
            if self.tick_s and now >= next_tick and not self.standby:
                next_tick = now + self.tick_s
                self.p_cmds.append(Tick())
                self.p_origins.append(self.system)
                self.wake()

    # --- checks ----------------------------------------------------------------------

    def _check(self) -> None:
        """Assert the gateway's invariants (O(members + reports + orders))."""
        for stream in self.streams.values():
            stream._check()
        live = self.core.engine.orders
        tracked = 0
        for stream in self.streams.values():
            for oid, info in stream.open.items():
                order = live.get(oid)
                assert order is not None, oid
                assert order.member == stream.member and info.qty == order.qty, (oid, info, order)
                assert info.coid == order.coid and info.side == order.side, (oid, info, order)
                tracked += 1
        assert tracked == len(live), (tracked, len(live))
        for s in self.sessions:
            if s.joined:
                assert s in s.stream.sessions  # type: ignore[union-attr]

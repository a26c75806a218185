"""One member connection: framing, logon, role checks, throttle, heartbeats.

A ``Session`` is an asyncio Protocol. Each socket read (``data_received``) is split into
every complete frame it holds; the frames are decoded with the one inbound decoder and
checked here (session order, the user's role, throttle, client order id), then handed
to the server's core queue in one go. The core applies the batch and writes the replies.

Contract:
- Nothing a peer sends can raise out of ``data_received``: a frame that does not decode
  gets a ``SessionReject(MALFORMED)``; more than ``malformed_max`` of them, an oversized
  length, or anything but a Logon first closes the session with a ``SessionClosed``.
- The member of every command is the session's member (operators' mass cancels and
  registry staff commands keep the member or account they name); ``seq``/``ts`` are
  the sequencer's: whatever the client put there is overwritten when it stamps them.
- A client order id already used today by the member is never entered again: its
  original outcome is sent back in a ``Resent``.
- A command the gateway refuses itself (throttle, role, field checks) never reaches the
  core: its ``Rejected`` travels in a ``Report`` with ``seq_out`` 0 (outside the
  member's sequence, which holds only what the journal can rebuild) and its client
  order id stays unused.
- Commands over the token bucket (``orders_per_second``, ``burst``) are rejected with
  THROTTLED, queries over their own bucket (``queries_per_second``) too; more than
  ``flood_factor x orders_per_second`` messages in one second close the session.
- Limits of a connection: at most ``sessions_max`` connections (more are closed at
  once, SESSION_LIMIT); a logon completed within the server's ``logon_deadline_s`` of
  the connection; a replay at logon that waits for the client to read (at most one
  chunk of reports beyond the transport's high-water mark) and drops a client that
  reads nothing for ``timeout_heartbeats`` intervals (SLOW_CONSUMER); a closed
  connection whose output is not taken within ``CLOSE_GRACE_S`` is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgspec

from engine.messages import (
    COID_MAX,
    Amend,
    AuctionAnnounce,
    AuctionBid,
    AuctionBidAmend,
    AuctionBidWithdraw,
    BlockAccept,
    BlockOffer,
    BlockWithdraw,
    Cancel,
    CancelReason,
    EndOfDay,
    Halt,
    HitOrder,
    MassCancel,
    NewOrder,
    ReinstateMember,
    Rejected,
    Resume,
    SuspendMember,
)
from gateway.auth import BAD_TEXT, Authenticator
from gateway.config import SessionSection
from gateway.framing import FrameSplitter, FrameTooLarge, FrameWriter
from gateway.protocol import (
    AUTHORITY_COMMANDS,
    CLERK_COMMANDS,
    EXCHANGE_ONLY_TAGS,
    PROTOCOL_VERSION,
    QUERIES,
    VERIFIER_COMMANDS,
    CodMode,
    Disconnect,
    Disconnected,
    GatewayReason,
    Heartbeat,
    Logon,
    LogonAck,
    LogonReject,
    Logout,
    Notice,
    QueryRejected,
    QuerySessions,
    ReplayDone,
    Report,
    Role,
    SessionClosed,
    SessionReject,
    Unlock,
    Unlocked,
    Watch,
    is_staff,
)
from gateway.streams import MemberStream


class Host(Protocol):
    """What a session needs of the server that accepted it (``gateway.server.Server``):
    the session is handed its host and never imports the server."""

    cfg: SessionSection
    loop: asyncio.AbstractEventLoop
    auth: Authenticator
    decode: Callable[[Any], Any]  # the inbound decoder
    writer: FrameWriter
    streams: dict[str, MemberStream]
    members: frozenset[str]
    core: Any
    ssl_context: ssl.SSLContext | None
    logon_deadline_s: float
    replay_chunk: int
    p_cmds: list[Any]
    p_origins: list[MemberStream]
    p_extra: list[Any]
    p_extra_from: list[Any]
    operator_member: str
    feed: Any  # gateway.watch.Feed
    standby: bool  # a hot standby's gateway: staff queries only (gateway.replication)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
    def wake(self, s: Session | None = None) -> None: ...
    def next_session_id(self) -> int: ...
    def session_opened(self, s: Session) -> bool: ...
    def session_logged_on(self, s: Session) -> bool: ...
    def session_lost(self, s: Session) -> None: ...
    def write_reports(self, s: Session, stream: MemberStream, after: int, upto: int) -> None: ...
    def disconnect(self, session_id: int, text: str) -> bool: ...
    def alert(self, kind: str, text: str, instrument: str = "", member: str = "") -> None: ...
    def note(self, actor: str, kind: str, text: str) -> None: ...

log = logging.getLogger("etx.session")

HEARTBEAT_MIN_MS = 100
HEARTBEAT_MAX_MS = 60_000
REPLAY_CHUNK = 1_000  # reports written per step of a replay (about 100 KB), between waits for the client
CLOSE_GRACE_S = 2.0  # a closed connection whose output the peer does not take by then is aborted
MASS_CANCEL = int(CancelReason.MASS_CANCEL)

# What each role may send: type -> kind. Anything not listed is NOT_PERMITTED.
K_ORDER, K_OWN, K_STAFF, K_QUERY, K_HEARTBEAT, K_LOGOUT, K_LOGON, K_OPS, K_WATCH = 1, 2, 3, 4, 5, 6, 7, 8, 9
# Watch and QuerySessions are for exchange staff (gateway.protocol.is_staff): anyone else
# is answered QueryRejected(NOT_PERMITTED) (see _each).
_COMMON: dict[type, int] = {Heartbeat: K_HEARTBEAT, Logout: K_LOGOUT, Logon: K_LOGON, **{q: K_QUERY for q in QUERIES},
                            Watch: K_WATCH, QuerySessions: K_WATCH}
PERMISSIONS: dict[Role, dict[type, int]] = {
    Role.TRADER: {**_COMMON, NewOrder: K_ORDER, HitOrder: K_ORDER, Cancel: K_OWN, Amend: K_OWN, MassCancel: K_OWN,
                  BlockOffer: K_ORDER, BlockAccept: K_ORDER, BlockWithdraw: K_OWN,
                  AuctionBid: K_ORDER, AuctionBidAmend: K_OWN, AuctionBidWithdraw: K_OWN},
    Role.READ_ONLY: dict(_COMMON),
    Role.OPERATOR: {**_COMMON, Halt: K_STAFF, Resume: K_STAFF, MassCancel: K_STAFF, EndOfDay: K_STAFF,
                    Cancel: K_STAFF, SuspendMember: K_STAFF, ReinstateMember: K_STAFF, Unlock: K_OPS,
                    Disconnect: K_OPS, AuctionAnnounce: K_STAFF},
    Role.CLERK: {**_COMMON, **{c: K_STAFF for c in CLERK_COMMANDS}},
    Role.AUTHORITY: {**_COMMON, **{c: K_STAFF for c in AUTHORITY_COMMANDS}},
    Role.VERIFIER: {**_COMMON, **{c: K_STAFF for c in VERIFIER_COMMANDS}},
}
# On a standby's gateway: queries and the staff's watch only (see Server.standby).
STANDBY_PERMISSIONS: dict[type, int] = dict(_COMMON)
_ALL_COMMANDS = frozenset(t for perms in PERMISSIONS.values() for t, k in perms.items() if k in (K_ORDER, K_OWN, K_STAFF))
_OPS = frozenset(t for perms in PERMISSIONS.values() for t, k in perms.items() if k == K_OPS)

NEW, LOGGING_ON, ACTIVE, CLOSED = 0, 1, 2, 3
UNCOUNTED, PRELOGON, LOGGED_ON = 0, 1, 2  # the connection budget a session counts in
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def _exchange_only(frame: bytes) -> str:
    """The name of the message a frame holds when it is one only the exchange sends
    (its tag, the array's first element), else "". Only on the error path."""
    try:
        body = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError:
        return ""
    if isinstance(body, list) and body and type(body[0]) is int:
        return EXCHANGE_ONLY_TAGS.get(body[0], "")
    return ""
_COID, _MEMBER = operator.attrgetter("coid"), operator.attrgetter("member")


class Session(asyncio.Protocol):
    """See the module docstring."""

    def __init__(self, server: Host) -> None:
        self.server = server
        cfg = server.cfg
        self.state = NEW
        self.splitter = FrameSplitter(cfg.max_frame)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.session_id = 0
        self.member = ""
        self.user = ""
        self.actor = ""
        self.role = Role.READ_ONLY
        self.stream: MemberStream | None = None
        self.perms: dict[type, int] = {}
        self.cod = False
        self.heartbeat_s = cfg.heartbeat_ms / 1000
        self.index = 0  # inbound frames seen
        self.malformed = 0
        self.held: list[bytes] = []  # frames that arrived behind the Logon
        self.wbuf = bytearray()  # replies of the current core batch
        self.rate = float(cfg.orders_per_second)
        self.burst = float(cfg.burst)
        self.tokens = float(cfg.burst)
        self.qrate = float(cfg.queries_per_second)  # the query bucket: its rate is its size
        self.qtokens = self.qrate
        self.refilled = 0.0
        self.window = 0.0  # start of the flood-count second
        self.window_count = 0
        self.flood_max = cfg.flood_factor * cfg.orders_per_second
        self.last_rx = 0.0
        self.last_tx = 0.0
        self.opened = 0.0  # when the connection was made (the logon deadline counts from it)
        self.paused = False
        self.acked = False  # the logon was accepted (the replay may still be running)
        self.joined = False  # attached to the member's stream (receives its reports)
        self.writable = asyncio.Event()  # cleared while the transport's buffer is over its high-water mark
        self.writable.set()
        self.host = ""  # the peer's address (its pre-logon budget)
        self.counted: int = UNCOUNTED  # which of the server's connection budgets this one is in
        self.handshaking = False  # a TLS handshake is under way
        self.partial_since = 0.0  # when the incomplete frame now buffered began (0: none)
        self.staff = False  # exchange staff: sees every member, may watch (gateway.server.is_staff)
        self.since = 0  # logon time, ns since the epoch
        self.commands = 0  # commands sent (the sessions view) ...
        self.refused = 0  # ... and of them refused by the gateway

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.last_rx = self.last_tx = self.refilled = self.window = self.opened = self.server.loop.time()
        context = self.server.ssl_context
        if not self.server.session_opened(self):
            # Connections not logged on yet have their own budget, per address and in all:
            # strangers holding connections open cannot keep members out.
            if context is None:
                self.send(SessionClosed(int(GatewayReason.SESSION_LIMIT),
                                        "too many connections not logged on; try again later"))
            self._end()
            return
        if context is not None:
            # The handshake runs here, counted and under the logon deadline like the rest
            # of what comes before a logon (asyncio's own handshake would be neither).
            self.handshaking = True
            transport.pause_reading()
            self.server.spawn(self._handshake(transport, context))

    async def _handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = self.server.loop
        try:
            tls = await loop.start_tls(raw, self, context, server_side=True,
                                       ssl_handshake_timeout=self.server.logon_deadline_s)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, asyncio.CancelledError):
            tls = None
        self.handshaking = False
        if tls is None or self.state == CLOSED:
            raw.abort()
            if self.state != CLOSED:
                self.connection_lost(None)  # the TLS layer reports nothing before its handshake
            return
        self.transport = tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.server.session_lost(self)

    def pause_writing(self) -> None:
        # Live output is checked against write_buffer_max after each flush (the server);
        # this flag paces only the replay at logon.
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        server = self.server
        now = server.loop.time()
        self.last_rx = now
        if self.state != ACTIVE:
            if self.state == NEW:
                self._before_logon(data)
            elif self.state == LOGGING_ON:
                self._hold(data)
            return
        try:
            frames = self.splitter.split(data)
        except FrameTooLarge as e:
            self.close(GatewayReason.FRAME_TOO_LARGE, str(e))
            return
        # A frame left incomplete must complete within the frame deadline (the timer
        # checks): the clock starts with the first read that leaves one.
        if self.splitter.rest:
            if frames or not self.partial_since:
                self.partial_since = now
        else:
            self.partial_since = 0.0
        # The buckets are refilled once per read, not per message.
        elapsed = now - self.refilled
        tokens = self.tokens + elapsed * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        tokens = self.qtokens + elapsed * self.qrate
        self.qtokens = tokens if tokens < self.qrate else self.qrate
        self.refilled = now
        if now - self.window >= 1.0:
            self.window = now
            self.window_count = 0
        self.window_count += len(frames)
        if self.window_count > self.flood_max:
            self.close(GatewayReason.FLOODING, f"more than {self.flood_max} messages in one second")
            return
        self._frames(frames)

    # --- frames ------------------------------------------------------------------

    def _frames(self, frames: list[bytes]) -> None:
        if frames and self.stream is not None and self._orders_only(frames):
            self.server.wake(self)
            return
        self._each(frames)

    def _orders_only(self, frames: list[bytes]) -> bool:
        """The common read of a trader's session, taken whole: every frame decodes to a
        heartbeat or to a new order (or hit order) this role may send, within the
        throttle, with a valid client order id not used today (nor twice in the read).
        Each check runs over the whole read in C (map, set), so there is no Python step
        per message. Returns False, having changed nothing, when any message is anything
        else; ``_each`` then takes the frames one by one and decides each exactly as
        here."""
        n = len(frames)
        if self.tokens < n:  # heartbeats take no token, but a read near the limit is rare
            return False
        try:
            msgs = list(map(self.server.decode, frames))
        except _DECODE_ERRORS:
            return False
        perms = self.perms
        types = set(map(type, msgs))
        if Heartbeat in types:  # a client's heartbeat may share a read with its orders
            types.discard(Heartbeat)
            msgs = [msg for msg in msgs if type(msg) is not Heartbeat]
            if not msgs:
                self.index += n
                return True
        for t in types:
            if perms.get(t) != K_ORDER:
                return False
        ids = list(map(_COID, msgs))
        stream = self.stream
        assert stream is not None
        coids = stream.coids
        fresh = set(ids)
        if len(fresh) != len(ids) or not coids.keys().isdisjoint(fresh) or not all(ids) or max(map(len, ids)) > COID_MAX:
            return False
        member = self.member
        if set(map(_MEMBER, msgs)) != {member}:
            for msg in msgs:
                msg.member = member
        coids.update(dict.fromkeys(ids))  # pending: the core records the outcomes
        self.commands += len(msgs)
        server = self.server
        server.p_cmds += msgs
        server.p_origins += [stream] * len(msgs)
        self.index += n
        self.tokens -= len(msgs)
        return True

    def _each(self, frames: list[bytes]) -> None:
        # Hot loop: names bound to locals because it runs per message.
        server = self.server
        decode = server.decode
        perms = self.perms
        stream = self.stream
        assert stream is not None
        member = self.member
        coids = stream.coids
        submit_cmd, submit_origin = server.p_cmds.append, server.p_origins.append
        submit_extra, submit_extra_from = server.p_extra.append, server.p_extra_from.append
        index = self.index
        tokens = self.tokens
        for frame in frames:
            index += 1
            try:
                msg = decode(frame)
            except _DECODE_ERRORS as e:
                self.index = index
                sent_by_exchange = _exchange_only(frame)
                if sent_by_exchange:
                    self._session_reject(index, GatewayReason.NOT_PERMITTED,
                                         f"{sent_by_exchange} is sent by the exchange only")
                    continue
                self._malformed(str(e))
                if self.state == CLOSED:
                    break
                continue
            kind = perms.get(type(msg))
            if kind is not None and kind <= K_STAFF:
                self.commands += 1
            if kind == K_ORDER:
                coid = msg.coid
                # A retransmission first: it is answered with the original outcome, never
                # with a refusal that would say the order was not entered.
                if coid in coids:
                    submit_extra(_Dup(coid))  # answered with the original outcome by the core
                    submit_extra_from(self)
                    continue
                if tokens < 1.0:
                    self._reject(msg, index, GatewayReason.THROTTLED, "over the session's order rate")
                    continue
                tokens -= 1.0
                if not 0 < len(coid) <= COID_MAX:
                    self._reject(msg, index, GatewayReason.INVALID_FIELD, f"coid must have 1-{COID_MAX} characters, got {len(coid)}")
                    continue
                coids[coid] = None  # pending: the core records the outcome
                msg.member = member
                submit_cmd(msg)
                submit_origin(stream)
            elif kind == K_OWN:
                if tokens < 1.0:
                    self._reject(msg, index, GatewayReason.THROTTLED, "over the session's order rate")
                    continue
                tokens -= 1.0
                if type(msg) is MassCancel:
                    if msg.reason != MASS_CANCEL:
                        self._reject(msg, index, GatewayReason.INVALID_FIELD,
                                     f"a mass cancel's reason must be {MASS_CANCEL}, got {msg.reason}")
                        continue
                    msg.actor = self.actor
                msg.member = member
                submit_cmd(msg)
                submit_origin(stream)
            elif kind == K_QUERY:
                if self.qtokens < 1.0:
                    self.send(QueryRejected(msg.req_id, GatewayReason.THROTTLED, "over the session's query rate"))
                    continue
                self.qtokens -= 1.0
                submit_extra(msg)
                submit_extra_from(self)
            elif kind == K_STAFF:
                if tokens < 1.0:
                    self._reject(msg, index, GatewayReason.THROTTLED, "over the session's order rate")
                    continue
                tokens -= 1.0
                if type(msg) is MassCancel:
                    # Checked here: the core would answer with a rejection naming the
                    # member, which is not who sent it.
                    problem = self._staff_mass_cancel_problem(msg)
                    if problem is not None:
                        self._reject(msg, index, *problem)
                        continue
                elif type(msg) in (SuspendMember, ReinstateMember) and msg.member not in self.server.members:
                    # The engine knows no member list: a name that is not a member is refused here.
                    self._reject(msg, index, GatewayReason.UNKNOWN_MEMBER, f"unknown member {msg.member!r}")
                    continue
                msg.actor = self.actor  # every staff command names who ran it (its origin, for the record)
                submit_cmd(msg)
                submit_origin(stream)
            elif kind == K_OPS or kind == K_WATCH:
                if kind == K_WATCH and not self.staff:
                    self.send(QueryRejected(msg.req_id, GatewayReason.NOT_PERMITTED,
                                            f"only exchange staff may send {type(msg).__name__}"))
                    continue
                if self.qtokens < 1.0:
                    self.send(QueryRejected(msg.req_id, GatewayReason.THROTTLED, "over the session's query rate"))
                    continue
                self.qtokens -= 1.0
                self._ops(msg)
            elif kind == K_HEARTBEAT:
                pass  # last_rx is already updated
            elif kind == K_LOGOUT:
                self.index = index
                self.close(GatewayReason.LOGOUT, "logged out")
                break
            elif kind == K_LOGON:
                self._session_reject(index, GatewayReason.ALREADY_LOGGED_ON, "already logged on")
            elif type(msg) in _ALL_COMMANDS:
                # A refusal costs a token like the command would: refusals cannot be
                # had faster than commands.
                if tokens < 1.0:
                    self._reject(msg, index, GatewayReason.THROTTLED, "over the session's order rate")
                    continue
                tokens -= 1.0
                self._reject(msg, index, GatewayReason.NOT_PERMITTED,
                             f"this node is the standby (read only): send {type(msg).__name__} to the primary"
                             if server.standby else f"role {self.role.name.lower()} may not send {type(msg).__name__}")
            elif type(msg) in _OPS:
                self._session_reject(index, GatewayReason.NOT_PERMITTED,
                                     f"role {self.role.name.lower()} may not send {type(msg).__name__}")
            else:
                self._session_reject(index, GatewayReason.NOT_PERMITTED, f"{type(msg).__name__} is not accepted from a client")
        self.index = index
        self.tokens = tokens
        server.wake(self)

    def _ops(self, msg: Any) -> None:
        """A staff request to the gateway itself (not a command of the core)."""
        server = self.server
        t = type(msg)
        if t is Unlock:
            locks = server.auth.unlock(msg.member, msg.user)
            log.warning("unlock: member=%r user=%r by %s: %d lockouts lifted", msg.member, msg.user, self.actor, locks)
            server.note(self.actor, "unlock", f"{msg.member}/{msg.user}: {locks} lockouts lifted. {msg.text}".strip())
            self.send(Unlocked(msg.req_id, msg.member, msg.user, locks))
        elif t is Disconnect:
            found = server.disconnect(msg.session_id, msg.text)
            log.warning("disconnect: session %d by %s: %s", msg.session_id, self.actor, "done" if found else "no such session")
            if found:
                server.note(self.actor, "disconnect", f"session {msg.session_id}. {msg.text}".strip())
            self.send(Disconnected(msg.req_id, msg.session_id, found))
        elif t is Watch:
            # Answered at once with the sessions (the reply carries the req_id); the
            # feed follows from the next tick.
            self.send(server.feed.sessions_reply(msg.req_id))
            server.feed.watch(self, msg.depth, msg.interval_ms)
        elif t is QuerySessions:
            self.send(server.feed.sessions_reply(msg.req_id))

    def _staff_mass_cancel_problem(self, msg: MassCancel) -> tuple[int, str] | None:
        if msg.member and msg.member not in self.server.members:
            return GatewayReason.UNKNOWN_MEMBER, f"unknown member {msg.member!r}"
        if msg.instrument and msg.instrument not in self.server.core.engine.markets:
            return GatewayReason.UNKNOWN_INSTRUMENT, f"unknown instrument {msg.instrument!r}"
        if msg.reason != MASS_CANCEL:
            return GatewayReason.INVALID_FIELD, f"a mass cancel's reason must be {MASS_CANCEL}, got {msg.reason}"
        return None

    def _reject(self, msg: Any, index: int, reason: int, text: str) -> None:
        """An unsequenced Rejected (a Report with seq_out 0, naming the command's inbound
        frame ``index``) for a command the gateway refused. It goes through the core
        queue, so it follows the answers to what was sent in earlier reads. The client
        order id stays unused: the order was not entered."""
        # What the refusal answers: an order's coid, or a registry command's ref (both
        # bounded by the decoder).
        coid = getattr(msg, "coid", "") or getattr(msg, "ref", "")
        self.refused += 1
        rej = Rejected(0, time.time_ns(), self.member, coid, getattr(msg, "order_id", 0), int(reason), text)
        self.server.p_extra.append(Report(0, rej, index))
        self.server.p_extra_from.append(self)  # this session's own refusal: to it alone
        self.server.wake()

    def _malformed(self, text: str) -> None:
        self.malformed += 1
        if self.malformed > self.server.cfg.malformed_max:
            self.close(GatewayReason.TOO_MANY_MALFORMED, f"more than {self.server.cfg.malformed_max} malformed frames")
            return
        self._session_reject(self.index, GatewayReason.MALFORMED, text[:200])

    def _session_reject(self, index: int, reason: int, text: str) -> None:
        self.send(SessionReject(index, int(reason), text))

    # --- logon -------------------------------------------------------------------

    def _before_logon(self, data: bytes) -> None:
        try:
            frames = self.splitter.split(data)
        except FrameTooLarge as e:
            self.close(GatewayReason.FRAME_TOO_LARGE, str(e))
            return
        if not frames:
            return
        self.index += 1
        try:
            msg = self.server.decode(frames[0])
        except _DECODE_ERRORS as e:
            self._session_reject(self.index, GatewayReason.MALFORMED, str(e)[:200])
            self.close(GatewayReason.NOT_LOGGED_ON, "the first message must be a valid Logon")
            return
        if type(msg) is not Logon:
            self.close(GatewayReason.NOT_LOGGED_ON, f"the first message must be a Logon, got {type(msg).__name__}")
            return
        self.held = frames[1:]
        if msg.version != PROTOCOL_VERSION:
            self._logon_reject(GatewayReason.UNSUPPORTED_VERSION,
                               f"protocol version {msg.version} not supported; this server speaks {PROTOCOL_VERSION}")
            return
        if msg.cod not in (CodMode.DEFAULT, CodMode.ON, CodMode.OFF):
            self._logon_reject(GatewayReason.INVALID_FIELD, f"cod must be 0 (default), 1 (on) or 2 (off), got {msg.cod}")
            return
        self.state = LOGGING_ON
        assert self.transport is not None
        self.transport.pause_reading()
        self.server.spawn(self._logon(msg))

    def _hold(self, data: bytes) -> None:
        # Reading is paused while logging on; whatever was already read waits here.
        try:
            self.held += self.splitter.split(data)
        except FrameTooLarge as e:
            self.close(GatewayReason.FRAME_TOO_LARGE, str(e))

    async def _logon(self, msg: Logon) -> None:
        server = self.server
        user, reason, text = await server.auth.check(msg.member, msg.user, msg.secret, self.peer, self.host)
        if self.state != LOGGING_ON:
            return  # the connection went away meanwhile
        if user is None:
            self._logon_reject(reason, text)
            return
        staff = is_staff(user.role, user.member, server.operator_member)
        if server.standby and not staff:
            self._logon_reject(GatewayReason.NOT_PERMITTED, "this node is the standby: members connect to the primary")
            return
        stream = server.streams.get(f"{user.member}/{user.user}" if staff else user.member)
        if stream is None:
            self._logon_reject(GatewayReason.BAD_CREDENTIALS, BAD_TEXT)
            return
        if msg.last_seq < 0 or msg.last_seq > stream.seq:
            self._logon_reject(GatewayReason.SEQ_AHEAD,
                               f"last_seq {msg.last_seq} is outside [0, {stream.seq}], the member's sequence")
            return
        if not server.session_logged_on(self):
            self._logon_reject(GatewayReason.SESSION_LIMIT, "too many sessions are logged on; try again later")
            return
        self.member, self.user, self.role = user.member, user.user, user.role
        self.staff = staff
        self.since = time.time_ns()
        self.actor = f"{user.member}/{user.user}"
        self.stream = stream
        self.perms = STANDBY_PERMISSIONS if server.standby else PERMISSIONS[user.role]
        self.cod = msg.cod == CodMode.ON or (msg.cod == CodMode.DEFAULT and user.role == Role.TRADER)
        hb = msg.heartbeat_ms or server.cfg.heartbeat_ms
        hb = min(max(hb, HEARTBEAT_MIN_MS), HEARTBEAT_MAX_MS)
        self.heartbeat_s = hb / 1000
        self.session_id = server.next_session_id()
        self.send(LogonAck(PROTOCOL_VERSION, self.member, self.user, int(self.role), stream.seq, hb, self.cod,
                           self.session_id))
        log.info("logon: member=%s user=%s role=%s peer=%s session=%d last_seq=%d",
                 self.member, self.user, self.role.name.lower(), self.peer, self.session_id, msg.last_seq)
        self.acked = True
        # Replay what the client missed, a chunk at a time, each once the client has
        # read the one before (so the write buffer holds at most about one chunk). New
        # reports keep arriving meanwhile and old ones may be trimmed; the session joins
        # the live stream only once it has caught up, with no await in between: nothing
        # is lost or sent twice.
        sent = msg.last_seq
        chunk = server.replay_chunk
        while True:
            if sent < stream.base:
                self.send(Notice(GatewayReason.REPLAY_TRIMMED,
                                 f"reports up to {stream.base} are no longer kept; replay goes on at {stream.base + 1}"))
                sent = stream.base
            if sent >= stream.seq:
                break
            upto = min(stream.seq, sent + chunk)
            server.write_reports(self, stream, sent, upto)
            sent = upto
            if not await self._wait_writable():
                return
        # The end of the replay: what follows is live (no await between this and joining).
        self.send(ReplayDone(stream.seq))
        stream.sessions.append(self)
        self.joined = True
        self.state = ACTIVE
        self.last_rx = server.loop.time()  # what the client sent during the replay is still unread
        assert self.transport is not None
        self.transport.resume_reading()
        held, self.held = self.held, []
        if held:
            self.data_received_frames(held)

    async def _wait_writable(self) -> bool:
        """Wait until the transport's buffer is below its low-water mark; drop the
        session (False) if the client reads nothing for ``timeout_heartbeats``
        intervals, or when it is closed meanwhile."""
        if self.writable.is_set():
            await asyncio.sleep(0)  # let the other sessions and the core loop run
        limit_s = self.heartbeat_s * self.server.cfg.timeout_heartbeats
        assert self.transport is not None
        left = self.transport.get_write_buffer_size()
        while not self.writable.is_set() and self.state != CLOSED:
            try:
                await asyncio.wait_for(self.writable.wait(), limit_s)
            except TimeoutError:
                now_left = self.transport.get_write_buffer_size()
                if now_left >= left:
                    self.drop(GatewayReason.SLOW_CONSUMER, f"nothing of the replay read for {limit_s:.1f}s")
                    return False
                left = now_left
        return self.state != CLOSED

    def data_received_frames(self, frames: list[bytes]) -> None:
        self._frames(frames)

    def _logon_reject(self, reason: int, text: str) -> None:
        self.send(LogonReject(int(reason), text))
        self._end()

    # --- output and closing ------------------------------------------------------

    def send_many(self, msgs: list[Any]) -> None:
        """Write several messages now, with one write."""
        if self.state == CLOSED or self.transport is None:
            return
        self.transport.write(self.server.writer.frames(msgs))
        self.last_tx = self.server.loop.time()
        if self.transport.get_write_buffer_size() > self.server.cfg.write_buffer_max:
            self.drop(GatewayReason.SLOW_CONSUMER, f"more than {self.server.cfg.write_buffer_max} bytes of output unread")

    def send(self, msg: Any) -> None:
        """Write one message now (session-level replies; the core batches its own)."""
        if self.state == CLOSED or self.transport is None:
            return
        buf = bytearray()
        self.server.writer.append(buf, msg)
        self.transport.write(buf)
        self.last_tx = self.server.loop.time()
        if self.transport.get_write_buffer_size() > self.server.cfg.write_buffer_max:
            self.drop(GatewayReason.SLOW_CONSUMER, f"more than {self.server.cfg.write_buffer_max} bytes of output unread")

    def close(self, reason: int, text: str) -> None:
        """End the session with a SessionClosed; pending output is flushed first."""
        if self.state == CLOSED:
            return
        if self.handshaking:  # nothing can be said to a peer before its TLS handshake ends
            log.info("connection closed during its TLS handshake: peer=%s reason=%d %s", self.peer, reason, text)
            self.abort()
            # The TLS layer reports no loss before its handshake ends: the session is
            # lost here (out of the address's budget and the session list).
            self.connection_lost(None)
            return
        if self.wbuf and self.transport is not None:
            self.transport.write(self.wbuf)
            self.wbuf = bytearray()
        self.send(SessionClosed(int(reason), text))
        if reason not in (GatewayReason.LOGOUT, GatewayReason.SHUTDOWN):
            log.info("session closed: member=%s user=%s peer=%s reason=%d %s",
                     self.member, self.user, self.peer, reason, text)
        self._end()

    def drop(self, reason: int, text: str) -> None:
        """End the session at once, without a message: the peer is not reading, so
        nothing more is put in front of it."""
        if self.state == CLOSED:
            return
        log.warning("session dropped: member=%s user=%s peer=%s session=%d reason=%d %s",
                    self.member, self.user, self.peer, self.session_id, reason, text)
        if self.acked:
            self.server.alert("session-dropped", f"session {self.session_id} of {self.member}/{self.user} from "
                              f"{self.peer} dropped: {text}", "", self.member)
        self.state = CLOSED
        self.abort()

    def _end(self) -> None:
        # Detaching from the stream and cancel-on-disconnect happen in connection_lost.
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()
            if self.transport.get_write_buffer_size():
                # A peer that does not take its last output must not hold the session.
                self.server.loop.call_later(CLOSE_GRACE_S, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Dup(msgspec.Struct, gc=False):
    """A retransmitted client order id, answered by the core in order."""

    coid: str


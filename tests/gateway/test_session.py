"""Session rules over real TCP: logon checks and lockout, throttle and flooding,
malformed and oversized frames, session order, heartbeats and silent peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys

import msgspec
import pytest

from engine import Accepted, NewOrder, Rejected, Side
from gateway.auth import Authenticator, User, hash_secret, verify_secret
from gateway.client import LogonError
from gateway.config import ConfigError, SessionSection, loads
from gateway.framing import encode_frame
from gateway.protocol import (
    PROTOCOL_VERSION,
    GatewayReason,
    Heartbeat,
    Logon,
    LogonAck,
    LogonReject,
    QueryInstruments,
    ReplayDone,
    Report,
    Role,
    ServerHeartbeat,
    SessionClosed,
    SessionReject,
    outbound_decoder,
)
from tests.gateway.harness import SECRET, SYMBOL, Harness, body_of, run

DECODE = outbound_decoder().decode


class Raw:
    """A bare socket speaking frames, for what the client library never sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.replay_done: list[ReplayDone] = []  # the end-of-replay markers, which recv() skips

    @classmethod
    async def open(cls, port: int, rcvbuf: int = 0, source: str = "") -> Raw:
        """A connection; ``rcvbuf`` shrinks the socket's receive buffer (set before the
        connect, so the window stays small), for tests of peers that do not read;
        ``source`` is the local address to connect from (127.0.0.2 ...: another peer)."""
        if not rcvbuf:
            local = (source, 0) if source else None
            return cls(*await asyncio.open_connection("127.0.0.1", port, local_addr=local))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(*await asyncio.open_connection(sock=sock, limit=rcvbuf))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> object | None:
        """The next message, or None when the server closed the connection."""
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    msg = DECODE(body)
                    if type(msg) is ReplayDone:
                        self.replay_done.append(msg)
                        continue
                    return msg
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.buf += data

    async def until_closed(self, timeout: float = 5.0) -> list[object]:
        out = []
        while (msg := await self.recv(timeout)) is not None:
            out.append(msg)
        return out

    async def logon(self, member: str = "M1", user: str = "t1", **kw: object) -> LogonAck:
        self.send(encode_frame(Logon(PROTOCOL_VERSION, member, user, SECRET, **kw)))  # type: ignore[arg-type]
        ack = await self.recv()
        assert isinstance(ack, LogonAck), ack
        return ack


@run
async def test_bad_logons_lock_the_user_and_are_logged_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "etx.auth")
    async with Harness() as h:
        for i in range(5):
            c = h.new_client("M1", "t1", secret=f"wrong-{i}-xyzzy")
            with pytest.raises(LogonError) as e:
                await c.connect()
            assert e.value.reason == (GatewayReason.BAD_CREDENTIALS if i < 4 else GatewayReason.LOCKED)
        with pytest.raises(LogonError) as e:
            await h.new_client("M1", "t1").connect()  # the right secret, but locked
        assert e.value.reason == GatewayReason.LOCKED
        await h.client("M1", "t1b")  # another user of the member is not locked
        with pytest.raises(LogonError) as e:
            await h.new_client("M9", "ghost").connect()
        assert e.value.reason == GatewayReason.BAD_CREDENTIALS  # unknown user: the same answer
    text = caplog.text
    assert "failed logon" in text and "user locked" in text and "member='M1' user='t1'" in text
    assert "wrong-" not in text and SECRET not in text


@run
async def test_lock_expires() -> None:
    now = [0.0]
    async with Harness(clock=lambda: now[0], lockout_s=30) as h:
        for _ in range(5):
            with pytest.raises(LogonError):
                await h.new_client("M2", "t2", secret="nope").connect()
        with pytest.raises(LogonError):
            await h.new_client("M2", "t2").connect()
        now[0] += 31
        await h.client("M2", "t2")


@run
async def test_logon_refusals() -> None:
    async with Harness() as h:
        raw = await Raw.open(h.port)
        raw.send(encode_frame(Logon(PROTOCOL_VERSION + 1, "M1", "t1", SECRET)))
        rej = await raw.recv()
        assert isinstance(rej, LogonReject) and rej.reason == GatewayReason.UNSUPPORTED_VERSION
        assert await raw.recv() is None
        raw = await Raw.open(h.port)
        raw.send(encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1", SECRET, last_seq=5)))
        rej = await raw.recv()
        assert isinstance(rej, LogonReject) and rej.reason == GatewayReason.SEQ_AHEAD
        # Anything but a logon first closes the session.
        raw = await Raw.open(h.port)
        raw.send(encode_frame(NewOrder("M1", "x", SYMBOL, 1, 1, 10_000)))
        msgs = await raw.until_closed()
        assert isinstance(msgs[-1], SessionClosed) and msgs[-1].reason == GatewayReason.NOT_LOGGED_ON
        assert h.exchange.engine.orders == {}
        # A second logon on a live session is refused, the session goes on.
        raw = await Raw.open(h.port)
        await raw.logon()
        raw.send(encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1", SECRET)))
        rej2 = await raw.recv()
        assert isinstance(rej2, SessionReject) and rej2.reason == GatewayReason.ALREADY_LOGGED_ON and rej2.index == 2


@run
async def test_orders_sent_with_the_logon_are_taken_after_it() -> None:
    async with Harness() as h:
        raw = await Raw.open(h.port)
        raw.send(encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1", SECRET))
                 + encode_frame(NewOrder("M1", "early", SYMBOL, 1, 10, 9_900)))
        assert isinstance(await raw.recv(), LogonAck)
        rep = await raw.recv()
        assert isinstance(rep, Report) and isinstance(rep.body, Accepted) and rep.body.coid == "early"


@run
async def test_throttle_rejects_and_flooding_closes() -> None:
    cfg = SessionSection(orders_per_second=50, burst=20, flood_factor=4)
    async with Harness(cfg) as h:
        m1 = await h.client("M1", "t1")
        for i in range(30):
            m1.new_order(SYMBOL, Side.BUY, 1, 9_000 + i)
        bodies = [(await m1.wait_for(lambda m: isinstance(m, Report))).body for _ in range(30)]
        accepted = [b for b in bodies if isinstance(b, Accepted)]
        throttled = [b for b in bodies if isinstance(b, Rejected) and b.reason == GatewayReason.THROTTLED]
        assert len(accepted) == 20 and len(throttled) == 10
        assert all(b.coid for b in throttled)
        await asyncio.sleep(0.2)  # the bucket refills at 50 a second
        m1.new_order(SYMBOL, Side.BUY, 1, 9_500)
        assert isinstance(await body_of(m1, Accepted), Accepted)
        # Far over the limit (more than 4 x 50 messages in a second): closed.
        m2 = await h.client("M2", "t2")
        for i in range(250):
            m2.new_order(SYMBOL, Side.SELL, 1, 10_500 + i)
        closed = await m2.wait_for(lambda m: isinstance(m, SessionClosed))
        assert closed.reason == GatewayReason.FLOODING
        h.check()


@run
async def test_an_idle_session_saves_up_no_more_than_its_burst() -> None:
    """The bucket refills while the session is idle, but never past ``burst``: after
    an idle time that would refill it several times over, twice the burst sent in one
    write lets exactly the burst through (the first ones) and throttles the rest."""
    cfg = SessionSection(orders_per_second=5, burst=3, heartbeat_ms=10_000)
    async with Harness(cfg) as h:
        raw = await Raw.open(h.port)
        await raw.logon()
        await asyncio.sleep(1.5)  # 7.5 tokens' worth of refill on top of a full bucket
        raw.send(b"".join(encode_frame(NewOrder("M1", f"idle-{i}", SYMBOL, int(Side.BUY), 1, 9_900 + i))
                          for i in range(6)))
        bodies = []
        while len(bodies) < 6:
            msg = await raw.recv()
            assert msg is not None, "the session closed"
            if isinstance(msg, Report):
                bodies.append(msg.body)
        accepted = sorted(b.coid for b in bodies if isinstance(b, Accepted))
        throttled = sorted(b.coid for b in bodies if isinstance(b, Rejected) and b.reason == GatewayReason.THROTTLED)
        assert accepted == ["idle-0", "idle-1", "idle-2"], bodies
        assert throttled == ["idle-3", "idle-4", "idle-5"], bodies
        h.check()


@run
async def test_malformed_frames_are_rejected_then_close_the_session() -> None:
    cfg = SessionSection(malformed_max=3)
    async with Harness(cfg) as h:
        before = msgspec.msgpack.encode(h.exchange.engine.state()[2:])
        raw = await Raw.open(h.port)
        await raw.logon()
        bad = [b"\x00\x00\x00\x01\xc1",  # not msgpack
               encode_frame([999, 1, 2]),  # unknown tag
               encode_frame([1, "M1", "c", SYMBOL, "one", 1])]  # wrong type
        for i, frame in enumerate(bad):
            raw.send(frame)
            rej = await raw.recv()
            assert isinstance(rej, SessionReject) and rej.reason == GatewayReason.MALFORMED and rej.index == i + 2
        raw.send(encode_frame(QueryInstruments(7)))  # the session still works
        assert (await raw.recv()).req_id == 7  # type: ignore[attr-defined]
        raw.send(bad[0])
        msgs = await raw.until_closed()
        assert isinstance(msgs[-1], SessionClosed) and msgs[-1].reason == GatewayReason.TOO_MANY_MALFORMED
        # An oversized length closes at once, before the body is read.
        raw = await Raw.open(h.port)
        await raw.logon()
        raw.send((10**7).to_bytes(4, "big") + b"x" * 100)
        msgs = await raw.until_closed()
        assert isinstance(msgs[-1], SessionClosed) and msgs[-1].reason == GatewayReason.FRAME_TOO_LARGE
        assert msgspec.msgpack.encode(h.exchange.engine.state()[2:]) == before


@run
async def test_heartbeats_both_ways_and_a_silent_peer_is_disconnected() -> None:
    async with Harness() as h:
        raw = await Raw.open(h.port)
        ack = await raw.logon(heartbeat_ms=100)
        assert ack.heartbeat_ms == 100
        for _ in range(12):  # keeps the session alive past the timeout (0.3 s)
            raw.send(encode_frame(Heartbeat()))
            await asyncio.sleep(0.05)
        msgs = await raw.until_closed()  # then silence: closed after 3 intervals
        assert isinstance(msgs[-1], SessionClosed) and msgs[-1].reason == GatewayReason.HEARTBEAT_TIMEOUT
        assert sum(isinstance(m, ServerHeartbeat) for m in msgs) >= 2
        # The client library heartbeats on its own and stays connected.
        m1 = await h.client("M1", "t1", heartbeat_ms=100)
        await asyncio.sleep(0.6)
        assert m1.connected and m1.closed_by_server is None


@run
async def test_concurrent_logons_cannot_outrun_the_lockout() -> None:
    """Guesses sent at once all pass the lock check before any of them fails; each is
    checked again when its turn to hash comes and before it succeeds, so no more than
    the allowed failures are ever verified and the right secret behind them is refused."""
    users = [User(member="M1", user="t1", role=Role.TRADER, secret_hash=hash_secret(SECRET, n=1 << 10))]
    auth = Authenticator(users, concurrent_max=4)
    tries = [auth.check("M1", "t1", f"guess-{i}") for i in range(12)] + [auth.check("M1", "t1", SECRET)]
    answers = await asyncio.gather(*tries)
    reasons = [reason for _, reason, _ in answers]
    assert reasons.count(GatewayReason.BAD_CREDENTIALS) == 4
    assert reasons[-1] == GatewayReason.LOCKED and answers[-1][0] is None
    assert reasons.count(GatewayReason.LOCKED) == len(reasons) - 4


@run
async def test_lockouts_of_unknown_users_are_bounded() -> None:
    auth = Authenticator([], failures_max=1, tracked_max=5)
    for i in range(12):
        await auth.check("M9", f"ghost{i}", "x")
    assert len(auth._locked_until) <= 5 and len(auth._failures) <= 5


@run
async def test_a_logon_must_complete_within_the_deadline_of_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that trickles a logon one byte at a time is closed when the deadline from
    its connection passes, however recently it sent a byte."""
    caplog.set_level(logging.INFO, "etx.session")
    async with Harness() as h:
        h.server.logon_deadline_s = 0.3
        raw = await Raw.open(h.port)
        here = raw.writer.get_extra_info("sockname")
        peer = f"{here[0]}:{here[1]}"
        frame = encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1", "x" * 200))
        for i in range(len(frame) - 1):  # about 10 s of trickle if nothing stops it
            if not any(s.peer == peer for s in h.server.sessions):
                break
            with contextlib.suppress(ConnectionError):
                raw.send(frame[i:i + 1])
            await asyncio.sleep(0.05)
        assert not any(s.peer == peer for s in h.server.sessions), "still open after the deadline"
        assert f"peer={peer} reason={int(GatewayReason.NOT_LOGGED_ON)} no logon within 0.3s" in caplog.text


@run
async def test_logged_on_sessions_beyond_the_limit_are_refused_at_logon() -> None:
    """``sessions_max`` counts logged-on sessions; connections that never log on have a
    budget of their own (tests/gateway/test_strangers.py) and take none of these places."""
    async with Harness(SessionSection(sessions_max=2)) as h:
        first = await h.client("M1", "t1")
        idle = [await Raw.open(h.port) for _ in range(5)]  # connected, never logged on
        await h.client("M2", "t2")
        with pytest.raises(LogonError) as refused:
            await h.client("M3", "t3")
        assert refused.value.reason == GatewayReason.SESSION_LIMIT
        await first.close()
        for _ in range(100):
            if h.server.logged_on < 2:
                break
            await asyncio.sleep(0.01)
        await h.client("M3", "t3")  # room again
        for r in idle:
            r.writer.close()


@run
async def test_logon_with_an_unknown_cancel_on_disconnect_mode_is_refused() -> None:
    async with Harness() as h:
        raw = await Raw.open(h.port)
        raw.send(encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1", SECRET, cod=7)))
        rej = await raw.recv()
        assert isinstance(rej, LogonReject) and rej.reason == GatewayReason.INVALID_FIELD


@run
async def test_queries_have_their_own_smaller_rate() -> None:
    """Queries cost the exchange far more than an order; they have a bucket of their own
    (``queries_per_second``), and using it up does not stop orders."""
    async with Harness(SessionSection(queries_per_second=5)) as h:
        raw = await Raw.open(h.port)
        await raw.logon()
        raw.send(b"".join(encode_frame(QueryInstruments(i)) for i in range(1, 11))
                 + encode_frame(NewOrder("M1", "q-1", SYMBOL, 1, 1, 9_900)))
        got = [await raw.recv() for _ in range(11)]
        answered = [m for m in got if type(m).__name__ == "InstrumentsReply"]
        refused = [m for m in got if type(m).__name__ == "QueryRejected"]
        assert len(answered) == 5 and {m.reason for m in refused} == {GatewayReason.THROTTLED}  # type: ignore[attr-defined]
        assert any(isinstance(m, Report) and isinstance(m.body, Accepted) for m in got)


def test_secrets_and_their_hashes_stay_out_of_reprs() -> None:
    logon = Logon(PROTOCOL_VERSION, "M1", "t1", "pa55-word-xyzzy")
    assert "pa55-word-xyzzy" not in repr(logon) and "M1" in repr(logon)
    h = hash_secret("pa55-word-xyzzy", n=1 << 10)
    user = User(member="M1", user="t1", role=Role.TRADER, secret_hash=h)
    cfg = loads(f"""
[[member]]
id = "M1"
[[user]]
member = "M1"
user = "t1"
role = "trader"
secret_hash = "{h}"
""")
    salt_and_hash = h.split("$", 4)[4]
    for thing in (user, cfg, cfg.user[0], cfg.users()[0]):
        assert salt_and_hash not in repr(thing) and salt_and_hash not in str(thing), type(thing)
    assert "t1" in repr(user)


def test_hash_secret_prints_a_hash_and_never_the_secret() -> None:
    out = subprocess.run([sys.executable, "-m", "tools.cli", "serve", "--hash-secret"], input="pa55-word-xyzzy\n",
                         capture_output=True, text=True, timeout=60, check=True)
    assert "pa55-word-xyzzy" not in out.stdout + out.stderr
    assert verify_secret("pa55-word-xyzzy", out.stdout.strip())
    long = subprocess.run([sys.executable, "-m", "tools.cli", "serve", "--hash-secret"], input="x" * 300 + "\n",
                          capture_output=True, text=True, timeout=60)
    assert long.returncode == 2 and "at most" in long.stdout


@run
async def test_logons_with_oversized_names_are_refused_without_being_kept(caplog: pytest.LogCaptureFixture) -> None:
    """Names longer than any configured one cannot belong to a user: they are refused
    at once, neither tracked for lockout (which would keep them in memory) nor logged."""
    caplog.set_level(logging.WARNING, "etx.auth")
    auth = Authenticator([], tracked_max=10)
    long = "u" * 10_000
    for i in range(20):
        user, reason, _ = await auth.check("M1", f"{i}{long}", "x" * 300)
        assert user is None and reason == GatewayReason.BAD_CREDENTIALS
    assert auth._failures == {} and auth._locked_until == {}
    assert long not in caplog.text and max(len(r.getMessage()) for r in caplog.records) < 300
    with pytest.raises(ConfigError, match="at most 64"):
        loads(f'[[member]]\nid = "{"M" * 65}"\n')

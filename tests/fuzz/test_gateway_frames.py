"""Fuzz the gateway with random and mutated frames over real TCP.

Frames: random bytes, truncated bodies, flipped bytes, fields of the wrong type, wrong
or unknown tags, missing and extra fields, outbound messages sent inbound, valid frames
out of session order (before the logon, a second logon, staff commands from a trader),
and oversized length prefixes. The fuzzing sessions belong to a member with no cash and
no allowances (and to a read-only user), so no frame may change the exchange.

Each frame is followed by a probe query; the test reads up to the probe's reply and
checks that the frame was answered as its class requires (a SessionReject for what
does not decode, a report for a command, a reply for a query), or that the session was
closed with a SessionClosed. At the end the server still serves a normal logon, its
invariants hold, and the exchange's state (all but the sequence number and clock,
which every command advances) is exactly what it was.

Then the same fuzz runs through the exchange's staff (operator, clerk, authority), whose
well-formed commands may change the exchange: there every frame must still be answered
as its class requires, and the server must keep serving with its invariants intact.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import msgspec

from engine import Amend, Cancel, EndOfDay, Halt, HitOrder, MassCancel, NewOrder, Resume, Side
from gateway.framing import encode_frame
from gateway.protocol import (
    PROTOCOL_VERSION,
    QUERIES,
    GatewayReason,
    Heartbeat,
    Logon,
    LogonAck,
    Logout,
    QueryBalances,
    QueryBook,
    QueryInstruments,
    QueryOrders,
    QueryRejected,
    QuerySessions,
    Report,
    Resent,
    SessionClosed,
    SessionReject,
    Unlock,
    Watch,
    inbound_decoder,
)
from settlement import Allocate, Deposit
from tests.gateway.harness import SECRET, SYMBOL, Harness, make_exchange, run
from tests.gateway.test_session import Raw

FRAMES = int(os.environ.get("ETX_FUZZ_FRAMES", "3000"))
MAX_FRAME = 4096
SEED = int(os.environ.get("ETX_FUZZ_SEED", "20240716"))
PROBE_BASE = 1 << 40  # probe req_ids, far from any fuzzed one

DECODE = inbound_decoder().decode


def samples(rng: random.Random) -> list[Any]:
    oid = rng.randint(0, 12)
    return [
        NewOrder("M1", f"c{rng.randint(0, 50)}", SYMBOL, rng.choice([1, 2, 3]), rng.randint(-5, 10**6),
                 rng.randint(-5, 20_000), rng.randint(0, 3), rng.randint(0, 4), rng.randint(0, 5)),
        Cancel("M1", oid), Amend("M1", oid, rng.randint(8_000, 12_000), rng.randint(0, 100)),
        MassCancel("M1", rng.choice(["", SYMBOL, "X"]), rng.choice([5, 6, 9])),
        HitOrder("M1", f"h{rng.randint(0, 50)}", SYMBOL, oid, rng.randint(1, 100)),
        Halt(SYMBOL, True), Resume(SYMBOL), EndOfDay(),
        Deposit("x", "M3", 10**6), Allocate("x", "AUTHORITY", "M3", SYMBOL, 100),
        QueryOrders(rng.randint(0, 9)), QueryBalances(rng.randint(0, 9), rng.choice(["", "M1"])),
        QueryBook(rng.randint(0, 9), rng.choice([SYMBOL, "NOPE"])), QueryInstruments(rng.randint(0, 9)),
        Heartbeat(), Logon(PROTOCOL_VERSION, "M3", "t3", SECRET),
        LogonAck(1, "M3", "t3", 1, 0, 1000, True, 1),  # outbound, sent inbound
    ]


def junk(rng: random.Random) -> Any:
    return rng.choice([None, True, -1, 2**64 - 1, 2**63, 1.5, "", "x" * rng.randint(1, 100), b"\x00\xff",
                       [], [1, [2, [3]]], {"a": 1}, rng.randint(-(2**31), 2**31)])


def mutate(rng: random.Random, body: bytes) -> bytes:
    how = rng.randrange(8)
    if how == 0:
        return body
    if how == 1:
        return body[: rng.randrange(len(body))] if body else body
    if how == 2:
        b = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if how == 3:
        return os.urandom(rng.randint(0, 64)) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(8))
    items = msgspec.msgpack.decode(body)
    if not isinstance(items, list) or not items:
        return body
    if how == 4:  # a field of the wrong type
        items[rng.randrange(len(items))] = junk(rng)
    elif how == 5:  # a wrong or unknown tag
        items[0] = rng.choice([0, 8, 10, 19, 49, 57, 99, 101, 103, 150, 160, 200, 255, -1, "1", None])
    elif how == 6:  # a missing field
        if len(items) > 1:
            del items[rng.randrange(1, len(items))]
    else:  # extra fields
        items += [junk(rng) for _ in range(rng.randint(1, 3))]
    return msgspec.msgpack.encode(items)


def expected(body: bytes, user: str = "") -> str:
    """What must answer a frame with this body in a logged-on session of ``user``."""
    if len(body) > MAX_FRAME:
        return "close"
    try:
        msg = DECODE(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "reject"
    t = type(msg)
    if t is Heartbeat:
        return "nothing"
    if t is Logout:
        return "close"
    if t is Logon:
        return "reject"
    if t in QUERIES:
        return "reply"
    if t is Unlock:  # an operator's request to the gateway; anyone else is refused
        return "reply" if user == "op" else "reject"
    if t in (Watch, QuerySessions):  # the staff's feed (or a refusal): answered with its req_id
        return "reply"
    if t is MassCancel:
        return "nothing"  # answered by one Cancelled per order cancelled; these members have none
    return "report"


def state_of(h: Harness) -> bytes:
    return msgspec.msgpack.encode([h.exchange.engine.state()[2:], h.exchange.ledger.full_state()])


async def fuzz_session(h: Harness, rng: random.Random, user: tuple[str, str], frames: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    raw: Raw | None = None
    i = 0
    while i < frames:
        if raw is None:
            raw = await Raw.open(h.port)
            await raw.logon(*user)
        i += 1
        sample = rng.choice(samples(rng))
        body = mutate(rng, msgspec.msgpack.encode(sample))
        if rng.random() < 0.01:
            body = b"z" * (MAX_FRAME + rng.randint(1, 1000))
        want = expected(body, user[1])
        counts[want] = counts.get(want, 0) + 1
        probe = PROBE_BASE + i
        raw.send(len(body).to_bytes(4, "big") + body + encode_frame(QueryInstruments(probe)))
        got: list[Any] = []
        while True:
            msg = await raw.recv()
            if msg is None or getattr(msg, "req_id", None) == probe:
                break
            got.append(msg)
        where = f"seed={SEED} frame={i} body={body[:80]!r} want={want} got={got[:4]}"
        if msg is None:  # closed: it must say why
            assert got and isinstance(got[-1], SessionClosed), where
            if want != "close":
                assert got[-1].reason in (GatewayReason.TOO_MANY_MALFORMED, GatewayReason.LOGOUT), where
            raw = None
            continue
        assert want != "close", where
        if want == "reject":
            assert any(isinstance(m, SessionReject) for m in got), where
        elif want == "report":
            assert any(isinstance(m, Report | Resent) for m in got), where
        elif want == "reply":
            assert any(hasattr(m, "req_id") or isinstance(m, QueryRejected) for m in got), where
    if raw is not None:
        raw.writer.close()
    return counts


async def before_logon(h: Harness, rng: random.Random, n: int) -> None:
    """Anything but a valid Logon as the first frame closes the connection, unanswered
    by the exchange."""
    for k in range(n):
        body = mutate(rng, msgspec.msgpack.encode(rng.choice(samples(rng))))
        try:
            first = DECODE(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            first = None
        raw = await Raw.open(h.port)
        raw.send(len(body).to_bytes(4, "big") + body)
        if type(first) is Logon:
            reply = await raw.recv()
            assert reply is not None and type(reply).__name__ in ("LogonAck", "LogonReject"), (SEED, k, body)
            raw.writer.close()
            continue
        msgs = await raw.until_closed()
        assert msgs and isinstance(msgs[-1], SessionClosed), (SEED, k, body, msgs)


@run
async def test_fuzzed_frames_are_answered_and_change_nothing() -> None:
    print(f"fuzz seed={SEED} frames={FRAMES}")
    from gateway.config import SessionSection
    cfg = SessionSection(max_frame=MAX_FRAME, malformed_max=10)
    exchange = make_exchange(unfunded=("M3",))
    async with Harness(cfg, exchange=exchange) as h:
        m1 = await h.client("M1", "t1", cod=2)
        for i in range(10):  # resting orders of another member for the fuzz to aim at
            m1.new_order(SYMBOL, Side.BUY if i % 2 else Side.SELL, 10, 9_500 if i % 2 else 10_500)
        await h.settle()
        await m1.close()
        await asyncio.sleep(0.05)
        before = state_of(h)
        rng = random.Random(SEED)
        counts = await fuzz_session(h, rng, ("M3", "t3"), FRAMES)
        counts_ro = await fuzz_session(h, rng, ("M1", "ro"), FRAMES // 5)
        await before_logon(h, rng, 60)
        await h.settle()
        assert state_of(h) == before, f"seed={SEED}: the exchange changed"
        h.check()
        for staff in ("op", "clerk", "auth"):
            await fuzz_session(h, rng, ("EXCH", staff), FRAMES // 10)
            await h.settle()
            h.check()
        # Every class of frame was exercised.
        assert all(counts.get(k, 0) > 0 for k in ("reject", "report", "reply", "nothing", "close")), counts
        assert counts_ro.get("report", 0) > 0
        # The server still serves.
        m2 = await h.client("M2", "t2")
        assert (await m2.query_book(SYMBOL)).instrument == SYMBOL

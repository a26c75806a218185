"""A socket read holding many frames: the session takes a read of nothing but valid new
orders in one step (``Session._orders_only``) and anything else frame by frame
(``Session._each``). These tests hold the two to the same answers.

The differential test sends the same seeded reads (fresh orders mixed with
retransmitted client order ids, ids repeated inside one read, empty and over-long ids,
orders naming another member, hit orders, cancels, malformed frames, queries,
heartbeats) to two exchanges in lockstep, one with the one-step path and one without,
and requires identical replies (timestamps aside) and identical exchange state.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import msgspec

from engine import Cancel, HitOrder, NewOrder, Side
from gateway.config import SessionSection
from gateway.framing import encode_frame
from gateway.protocol import (
    GatewayReason,
    Heartbeat,
    InstrumentsReply,
    QueryInstruments,
    Report,
    Resent,
    SessionReject,
)
from tests.gateway.harness import REF, SYMBOL, Harness, run
from tests.gateway.test_session import Raw

SEED = int(os.environ.get("ETX_BATCH_SEED", "20241130"))
READS = int(os.environ.get("ETX_BATCH_READS", "60"))
PROBE = 1 << 40


def _plain(msg: Any) -> Any:
    """A message with its timestamps zeroed (the two exchanges stamp different times)."""
    if isinstance(msg, Report | Resent):
        body = msg.body
        if hasattr(body, "ts"):
            body = msgspec.structs.replace(body, ts=0)
        return msgspec.structs.replace(msg, body=body)
    return msg


async def _until_probe(raw: Raw, req_id: int) -> list[Any]:
    out = []
    while True:
        msg = await raw.recv()
        assert msg is not None, "the server closed the session"
        if isinstance(msg, InstrumentsReply) and msg.req_id == req_id:
            return out
        out.append(_plain(msg))


ODD = ("retransmission", "twice", "empty", "long", "member", "hit", "cancel", "malformed", "query", "heartbeat",
       "only heartbeats")


def _read(rng: random.Random, k: int, used: list[str]) -> list[bytes]:
    """One read's frames: fresh orders, and in every other read one or two frames of
    a kind the one-step path must leave to the frame-by-frame path (one kind per read,
    so that the read is decided by it; the kinds take turns)."""
    odd = ODD[k // 2 % len(ODD)] if k % 2 else ""  # every kind in turn
    n = rng.randint(1, 60)
    odd_at = {rng.randrange(n) for _ in range(rng.randint(1, 2))} if odd else set()
    if odd == "only heartbeats":
        return [encode_frame(Heartbeat())] * n
    frames = []
    for i in range(n):
        side = rng.choice((Side.BUY, Side.SELL))
        price = REF + rng.randint(-30, 30)
        coid, member = f"r{k}-{i}", "M1"
        kind = odd if i in odd_at else ""
        if kind == "retransmission" and used:
            coid = rng.choice(used)  # an id of an earlier read
        elif kind == "twice" and i:
            coid = f"r{k}-{i - 1}"  # the same id twice in one read
        elif kind == "empty":
            coid = ""
        elif kind == "long":
            coid = "x" * 37
        elif kind == "member":
            member = "M2"  # entered as the session's member all the same
        if kind == "hit":
            frames.append(encode_frame(HitOrder(member, coid, SYMBOL, rng.randint(1, 50), 5)))
        elif kind == "cancel":
            frames.append(encode_frame(Cancel(member, rng.randint(1, 50))))
        elif kind == "malformed":
            frames.append(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # never valid msgpack
        elif kind == "query":
            frames.append(encode_frame(QueryInstruments(rng.randint(0, 9), SYMBOL)))
        elif kind == "heartbeat":
            frames.append(encode_frame(Heartbeat()))
        else:
            frames.append(encode_frame(NewOrder(member, coid, SYMBOL, int(side), rng.randint(1, 20), price)))
            used.append(coid)
    return frames


async def _send_read(raw: Raw, session: Any, frames: list[bytes], req_id: int) -> list[Any]:
    """Send the frames in one write, wait until the session has taken them (so the
    probe query that follows is not part of the same read), then probe."""
    index = session.index + len(frames)
    raw.send(b"".join(frames))
    while session.index < index:
        await asyncio.sleep(0.001)
    raw.send(encode_frame(QueryInstruments(req_id, SYMBOL)))
    return await _until_probe(raw, req_id)


@run
async def test_reads_of_many_frames_are_answered_as_frame_by_frame() -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    cfg = SessionSection(malformed_max=1_000, queries_per_second=1_000)
    async with Harness(cfg) as one_step, Harness(cfg) as each:
        raws, sessions = [], []
        for h in (one_step, each):
            raw = await Raw.open(h.port)
            await raw.logon("M1", "t1")
            raws.append(raw)
            (session,) = [s for s in h.server.sessions if s.joined]
            sessions.append(session)
        sessions[1]._orders_only = lambda frames: False  # type: ignore[method-assign]
        taken_whole = 0
        orders_only = sessions[0]._orders_only

        def counted(frames: list[bytes]) -> bool:
            nonlocal taken_whole
            whole = orders_only(frames)
            taken_whole += whole
            return whole

        sessions[0]._orders_only = counted  # type: ignore[method-assign]
        used: list[str] = []
        reports = 0
        for k in range(READS):
            frames = _read(rng, k, used)
            got = [await _send_read(raw, session, frames, PROBE + k) for raw, session in zip(raws, sessions, strict=True)]
            assert got[0] == got[1], (k, frames)
            reports += sum(isinstance(m, Report) for m in got[0])
        assert reports > READS * 10 and READS // 4 < taken_whole < READS  # both paths ran
        for h in (one_step, each):
            h.check()
        orders = [{oid: (o.member, o.coid, o.side, o.price, o.qty, o.filled) for oid, o in h.exchange.engine.orders.items()}
                  for h in (one_step, each)]
        assert orders[0] == orders[1] and orders[0]
        assert one_step.exchange.ledger.state() == each.exchange.ledger.state()
        assert one_step.server.track == {oid: (*t[:3], one_step.server.streams["M1"])
                                         for oid, t in each.server.track.items()}


@run
async def test_a_read_over_the_throttle_enters_what_the_tokens_cover() -> None:
    async with Harness(SessionSection(orders_per_second=1, burst=10, flood_factor=100)) as h:
        raw = await Raw.open(h.port)
        await raw.logon("M1", "t1")
        (session,) = [s for s in h.server.sessions if s.joined]
        orders = [encode_frame(NewOrder("M1", f"t{i}", SYMBOL, int(Side.BUY), 1, REF - 5)) for i in range(15)]
        msgs = await _send_read(raw, session, orders, PROBE)
        reasons = [m.body.reason if type(m.body).__name__ == "Rejected" else 0 for m in msgs]
        assert reasons == [0] * 10 + [GatewayReason.THROTTLED] * 5, msgs
        assert [m.seq_out for m in msgs] == list(range(1, 11)) + [0] * 5
        h.check()


@run
async def test_a_malformed_frame_in_a_read_of_orders_is_rejected_by_its_index() -> None:
    async with Harness() as h:
        raw = await Raw.open(h.port)
        await raw.logon("M1", "t1")  # frame 1
        (session,) = [s for s in h.server.sessions if s.joined]
        orders = [encode_frame(NewOrder("M1", f"m{i}", SYMBOL, int(Side.SELL), 1, REF + 5)) for i in range(6)]
        msgs = await _send_read(raw, session, orders[:3] + [b"\x00\x00\x00\x01\xc1"] + orders[3:], PROBE)
        rejects = [m for m in msgs if isinstance(m, SessionReject)]
        assert [(r.index, r.reason) for r in rejects] == [(5, GatewayReason.MALFORMED)]
        assert [m.body.coid for m in msgs if isinstance(m, Report)] == [f"m{i}" for i in range(6)]
        h.check()

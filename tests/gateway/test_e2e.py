"""End-to-end over real TCP: members trade through the gateway, reports arrive in
sequence, balances settle, replay loses and duplicates nothing, a retransmitted order is
not entered twice, members are isolated, operators halt and resume, and
cancel-on-disconnect releases holds."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from engine import Accepted, Cancelled, Halt, MassCancel, Phase, Rejected, Resume, Side, StatusChanged
from engine.messages import CancelReason, Reason
from gateway.client import Client, QueryError
from gateway.config import SessionSection
from gateway.framing import encode_frame
from gateway.protocol import (
    PROTOCOL_VERSION,
    CodMode,
    Fill,
    GatewayReason,
    Liquidity,
    Logon,
    Notice,
    QueryOrders,
    Report,
    Resent,
)
from gateway.server import Server
from settlement import Deposit, RegistryDone, RegistryRejected
from tests.gateway.harness import (
    ALLOWANCES,
    CASH,
    MEMBERS,
    OPERATOR_MEMBER,
    SECRET,
    SYMBOL,
    Harness,
    body_of,
    drain,
    run,
)
from tests.gateway.test_session import Raw

BUY, SELL = Side.BUY, Side.SELL


def balance(h: Harness, member: str, asset: str) -> tuple[int, int]:
    e = h.exchange.ledger.entry(member, asset)
    return e[0], e[1]


@run
async def test_members_trade_and_balances_settle() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1")
        m2 = await h.client("M2", "t2")
        buy = m1.new_order(SYMBOL, BUY, 300, 10_050)
        acc = await body_of(m1, Accepted)
        assert (acc.coid, acc.member, acc.qty, acc.price) == (buy, "M1", 300, 10_050)
        sell = m2.new_order(SYMBOL, SELL, 200, 10_000)
        acc2 = await body_of(m2, Accepted)
        fill2 = await body_of(m2, Fill)
        fill1 = await body_of(m1, Fill)
        # Each side sees its own order, at the resting order's price, never the other member.
        assert (fill1.order_id, fill1.coid, fill1.side, fill1.liquidity, fill1.leaves) == (
            acc.order_id, buy, BUY, Liquidity.MAKER, 100)
        assert (fill2.order_id, fill2.coid, fill2.side, fill2.liquidity, fill2.leaves) == (
            acc2.order_id, sell, SELL, Liquidity.TAKER, 0)
        assert fill1.trade_id == fill2.trade_id and fill1.price == fill2.price == 10_050 and fill1.qty == 200
        assert "M2" not in repr(fill1) and "M1" not in repr(fill2)
        # Balances: 200 t moved at 100.50 (no fees here); M1's rest still holds cash.
        bal = {(b.account, b.asset): b for b in (await m1.query_balances()).balances}
        assert bal["M1", "CNY"].balance == CASH - 200 * 10_050
        assert bal["M1", "CNY"].held == 100 * 10_050
        assert bal["M1", SYMBOL].balance == ALLOWANCES + 200
        assert bal["M1", SYMBOL].available == ALLOWANCES  # bought today: sellable tomorrow (T+1)
        assert all(b.account == "M1" for b in bal.values())
        assert balance(h, "M2", "CNY") == (CASH + 200 * 10_050, 0)
        assert balance(h, "M2", SYMBOL) == (ALLOWANCES - 200, 0)
        book = await m2.query_book(SYMBOL)
        assert [(lv.price, lv.qty, lv.orders) for lv in book.bids] == [(10_050, 100, 1)] and book.asks == []
        # Reports are numbered 1, 2, ... per member without a gap.
        assert m1.last_seq == 2 and m2.last_seq == 2 and not m1.anomalies and not m2.anomalies
        h.check()


@run
async def test_reconnect_with_replay_loses_and_duplicates_nothing() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1", cod=CodMode.OFF)
        m2 = await h.client("M2", "t2")
        for i in range(20):
            m1.new_order(SYMBOL, SELL, 10, 10_000 + i)
        for _ in range(20):
            await body_of(m1, Accepted)
        seen = m1.last_seq
        assert seen == 20
        m1.abort()  # the connection drops; the orders stay (cancel-on-disconnect off)
        await asyncio.sleep(0.05)
        m2.new_order(SYMBOL, BUY, 150, 10_020)  # fills against M1's resting orders meanwhile
        await body_of(m2, Accepted)
        await h.settle()
        missed = h.server.streams["M1"].seq - seen
        assert missed > 0
        # A second M1 session sees the live stream while the first is away.
        other = await h.client("M1", "t1b", last_seq=h.server.streams["M1"].seq)
        ack = await m1.reconnect()
        assert ack.next_seq == seen + missed
        got = [msg for msg in await drain(m1) if isinstance(msg, Report)]
        assert [r.seq_out for r in got] == list(range(seen + 1, seen + missed + 1))
        assert all(isinstance(r.body, Fill) for r in got)
        assert sum(r.body.qty for r in got) == 150
        # After the replay the stream continues live, exactly once, on both sessions.
        m1.new_order(SYMBOL, SELL, 5, 10_100)
        live = await m1.wait_for(lambda m: isinstance(m, Report))
        assert live.seq_out == seen + missed + 1
        live2 = await other.wait_for(lambda m: isinstance(m, Report))
        assert live2.seq_out == live.seq_out
        assert not m1.anomalies and not other.anomalies
        # Replaying from 0 gives the whole history again, in order.
        m1.last_seq = 0
        await m1.reconnect()
        everything = [msg for msg in await drain(m1) if isinstance(msg, Report)]
        assert [r.seq_out for r in everything] == list(range(1, live.seq_out + 1))
        h.check()


@run
async def test_retransmitted_client_order_id_is_not_entered_twice() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1")
        # Twice in one write (the same batch), then again later, then from another session.
        m1.new_order(SYMBOL, BUY, 10, 9_900, coid="dup-1")
        m1.new_order(SYMBOL, BUY, 10, 9_900, coid="dup-1")
        first = await m1.wait_for(lambda m: isinstance(m, Report))
        again = await m1.wait_for(lambda m: isinstance(m, Resent))
        assert isinstance(first.body, Accepted) and again.seq_out == first.seq_out and again.body == first.body
        m1.new_order(SYMBOL, BUY, 99, 9_800, coid="dup-1")  # different content, same id: still the original
        again2 = await m1.wait_for(lambda m: isinstance(m, Resent))
        assert again2.body == first.body
        m1b = await h.client("M1", "t1b", last_seq=m1.last_seq)
        m1b.new_order(SYMBOL, BUY, 10, 9_900, coid="dup-1")
        assert (await m1b.wait_for(lambda m: isinstance(m, Resent))).body == first.body
        # A rejected order's id is used too: its retransmission gets the rejection.
        m1.new_order(SYMBOL, BUY, 10, 1, coid="bad-1")
        rej = await body_of(m1, Rejected)
        assert rej.reason == Reason.PRICE_OUTSIDE_BAND and rej.coid == "bad-1"
        m1.new_order(SYMBOL, BUY, 10, 9_900, coid="bad-1")
        assert (await m1.wait_for(lambda m: isinstance(m, Resent))).body == rej
        # Another member may use the same id.
        m2 = await h.client("M2", "t2")
        m2.new_order(SYMBOL, SELL, 10, 10_100, coid="dup-1")
        assert (await body_of(m2, Accepted)).coid == "dup-1"
        orders = await m1.query_orders()
        assert [o.coid for o in orders] == ["dup-1"] and orders[0].qty == 10
        assert len(h.exchange.engine.orders) == 2
        h.check()


@run
async def test_a_member_cannot_see_or_cancel_another_members_orders() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1")
        m2 = await h.client("M2", "t2")
        m1.new_order(SYMBOL, BUY, 10, 9_900)
        oid = (await body_of(m1, Accepted)).order_id
        m2.cancel(oid)
        rej = await body_of(m2, Rejected)
        # Answered as for an order that does not exist: M2 learns nothing of M1's order.
        assert (rej.reason, rej.order_id, rej.text) == (Reason.UNKNOWN_ORDER, oid, f"no open order {oid}")
        m2.amend(oid, 9_800, 10)
        rej = await body_of(m2, Rejected)
        assert (rej.reason, rej.text) == (Reason.UNKNOWN_ORDER, f"no open order {oid}")
        m2.cancel(oid + 1000)
        none = await body_of(m2, Rejected)
        assert (none.reason, none.text) == (Reason.UNKNOWN_ORDER, f"no open order {oid + 1000}")
        m2.mass_cancel(member="M1")  # the gateway puts M2's own member in
        await h.settle()
        assert await m2.query_orders() == []
        assert [o.order_id for o in await m1.query_orders()] == [oid]
        for ask in (lambda: m2.query_orders(member="M1"), lambda: m2.query_balances(member="M1")):
            try:
                await ask()
                raise AssertionError("query of another member answered")
            except QueryError as e:
                assert e.reason == GatewayReason.NOT_PERMITTED
        # M1 heard nothing of it; its order is untouched.
        assert [m for m in await drain(m1) if isinstance(m, Report)] == []
        # A read-only user of M1 sees M1's orders but may not trade or cancel.
        ro = await h.client("M1", "ro")
        assert [o.order_id for o in await ro.query_orders()] == [oid]
        ro.cancel(oid)
        ro.new_order(SYMBOL, BUY, 1, 9_900)
        rejs = [await body_of(ro, Rejected), await body_of(ro, Rejected)]
        assert {r.reason for r in rejs} == {GatewayReason.NOT_PERMITTED}
        assert oid in h.exchange.engine.orders
        h.check()


@run
async def test_operator_halt_stops_trading_and_resume_restarts_it() -> None:
    async with Harness() as h:
        op = await h.client("EXCH", "op")
        m1 = await h.client("M1", "t1")
        m2 = await h.client("M2", "t2")
        m1.new_order(SYMBOL, BUY, 10, 10_000)
        await body_of(m1, Accepted)
        op.new_order(SYMBOL, BUY, 10, 10_000)  # operators never trade
        assert (await body_of(op, Rejected)).reason == GatewayReason.NOT_PERMITTED
        m1.send(__import__("engine").Halt(SYMBOL))  # nor do traders halt
        assert (await body_of(m1, Rejected)).reason == GatewayReason.NOT_PERMITTED
        op.send(__import__("engine").Halt(SYMBOL))
        for c in (op, m1, m2):
            st = await body_of(c, StatusChanged)
            assert (st.instrument, st.phase) == (SYMBOL, Phase.HALTED)
        m2.new_order(SYMBOL, SELL, 10, 10_000)
        assert (await body_of(m2, Rejected)).reason == Reason.INSTRUMENT_HALTED
        assert h.exchange.engine.markets[SYMBOL].volume == 0
        op.send(__import__("engine").Resume(SYMBOL))
        assert (await body_of(m2, StatusChanged)).phase == Phase.CONTINUOUS
        m2.new_order(SYMBOL, SELL, 10, 10_000)
        assert (await body_of(m2, Fill)).qty == 10
        # The operator sees every member's orders and may mass cancel any of them.
        m1.new_order(SYMBOL, BUY, 5, 9_000)
        await body_of(m1, Accepted)
        assert {o.member for o in await op.query_orders()} == {"M1"}
        op.mass_cancel(member="M1")
        c = await body_of(m1, Cancelled)
        assert c.reason == CancelReason.MASS_CANCEL
        assert h.exchange.engine.orders == {}
        h.check()


@run
async def test_cancel_on_disconnect_releases_the_holds() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1")  # a trader: on by default
        m2 = await h.client("M2", "t2", cod=CodMode.OFF)
        m1.new_order(SYMBOL, BUY, 100, 10_000)
        m1.new_order(SYMBOL, SELL, 50, 10_500)
        m2.new_order(SYMBOL, SELL, 70, 10_900)
        await body_of(m1, Accepted)
        await body_of(m1, Accepted)
        await body_of(m2, Accepted)
        assert balance(h, "M1", "CNY")[1] == 100 * 10_000 and balance(h, "M1", SYMBOL)[1] == 50
        m1.abort()
        m2.abort()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not any(o.member == "M1" for o in h.exchange.engine.orders.values()):
                break
        assert balance(h, "M1", "CNY") == (CASH, 0) and balance(h, "M1", SYMBOL) == (ALLOWANCES, 0)
        assert [o.member for o in h.exchange.engine.orders.values()] == ["M2"]  # M2 chose to keep its orders
        back = await h.client("M1", "t1", last_seq=m1.last_seq)
        cancels = [m.body for m in await drain(back) if isinstance(m, Report)]
        assert sorted(c.reason for c in cancels) == [CancelReason.DISCONNECT] * 2
        h.check()


@run
async def test_registry_staff_roles() -> None:
    async with Harness() as h:
        clerk = await h.client("EXCH", "clerk")
        auth = await h.client("EXCH", "auth")
        clerk.send(Deposit("spoofed", "M3", 5_000))
        done = await body_of(clerk, RegistryDone)
        assert done.kind == "deposit" and done.actor == "EXCH/clerk"
        assert balance(h, "M3", "CNY")[0] == CASH + 5_000
        from settlement import Allocate
        clerk.send(Allocate("x", "AUTHORITY", "M3", SYMBOL, 10))
        assert (await body_of(clerk, Rejected)).reason == GatewayReason.NOT_PERMITTED
        auth.send(Allocate("x", "AUTHORITY", "M3", SYMBOL, 10))
        # Each staff user has a stream of its own: the authority sees its allocation,
        # not the clerk's deposit, and the clerk never sees the authority's answers.
        first = await auth.wait_for(lambda m: isinstance(m, Report) and m.seq_out)
        assert type(first.body) is RegistryDone and first.body.kind == "allocate" and first.seq_out == 1
        auth.send(Allocate("x", "AUTHORITY", "NOBODY", SYMBOL, 10))
        assert (await body_of(auth, RegistryRejected)).kind == "allocate"
        await h.settle()
        seen = [m for m in await drain(clerk) if isinstance(m, Report)]
        assert not any(isinstance(m.body, (RegistryDone, RegistryRejected)) and m.body.actor != "EXCH/clerk"
                       for m in seen), seen
        assert h.server.streams["EXCH/clerk"].seq == 1 and h.server.streams["EXCH/auth"].seq == 2
        m1 = await h.client("M1", "t1")
        m1.send(Deposit("M1", "M1", 10**9))
        assert (await body_of(m1, Rejected)).reason == GatewayReason.NOT_PERMITTED
        assert balance(h, "M1", "CNY")[0] == CASH
        h.check()


async def refusal(c: Client, reason: int) -> Rejected:
    """The next refusal by the gateway with this reason (a Report outside the sequence)."""
    rep = await c.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Rejected) and m.body.reason == reason)
    assert rep.seq_out == 0, rep
    return rep.body  # type: ignore[no-any-return]


@run
async def test_gateway_refusals_are_unsequenced_and_histories_rebuild_exactly() -> None:
    """The gateway's own refusals (throttle, role, field checks) never reach the core or
    the journal, so they are not numbered in the member's sequence (seq_out 0) and do
    not use up the client order id. Every sequenced report can therefore be rebuilt from
    the core's events alone, as a restart rebuilds them from the journal."""
    cfg = SessionSection(orders_per_second=20, burst=3)
    async with Harness(cfg) as h:
        events: list[list[Any]] = []
        batches: list[list[Any]] = []

        async def journal(cmds: list[Any]) -> None:  # what a journal would hold, batch by batch
            batches.append(list(cmds))

        h.server._journal = journal
        h.server.on_events.append(lambda out: events.append(list(out)))
        m1 = await h.client("M1", "t1", cod=CodMode.OFF)
        ro = await h.client("M1", "ro")
        op = await h.client("EXCH", "op")
        coids = [m1.new_order(SYMBOL, BUY, 1, 9_900 + i) for i in range(5)]
        got = {}
        for _ in range(5):
            rep = await m1.wait_for(lambda m: isinstance(m, Report))
            got[rep.body.coid] = rep
        accepted = [c for c in coids if isinstance(got[c].body, Accepted)]
        refused = [c for c in coids if isinstance(got[c].body, Rejected)]
        assert len(accepted) == 3 and len(refused) == 2, got
        assert sorted(got[c].seq_out for c in accepted) == [1, 2, 3]
        assert {(got[c].seq_out, got[c].body.reason) for c in refused} == {(0, GatewayReason.THROTTLED)}
        assert m1.last_seq == 3 and not m1.anomalies
        await asyncio.sleep(0.25)  # the bucket refills
        # A refused order was never entered: its client order id is still free.
        m1.new_order(SYMBOL, BUY, 1, 9_800, coid=refused[0])
        again = await m1.wait_for(lambda m: isinstance(m, Report | Resent))
        assert type(again) is Report and isinstance(again.body, Accepted) and again.seq_out == 4
        # A read-only user's cancel and an operator's malformed mass cancels: refused, unsequenced.
        ro.cancel(again.body.order_id)  # (the member's sessions all see its refusals, the throttled ones too)
        await refusal(ro, GatewayReason.NOT_PERMITTED)
        op.mass_cancel(instrument="NOPE", member="M1")
        await refusal(op, GatewayReason.UNKNOWN_INSTRUMENT)
        op.send(MassCancel("M1", SYMBOL, 9))
        await refusal(op, GatewayReason.INVALID_FIELD)
        m1.send(MassCancel("M1", "", int(CancelReason.DISCONNECT)))  # reserved for the gateway
        await refusal(m1, GatewayReason.INVALID_FIELD)
        # The exchange's own rejections are sequenced.
        m1.new_order(SYMBOL, BUY, 1, 1)
        rej = await m1.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Rejected))
        assert (rej.seq_out, rej.body.reason) == (5, Reason.PRICE_OUTSIDE_BAND)
        op.send(Halt(SYMBOL))
        op.send(Halt(SYMBOL))
        op.send(Resume(SYMBOL))
        await h.settle()
        assert len(h.exchange.engine.orders) == 4
        # A server rebuilt from the core's events alone holds exactly the same streams.
        rebuilt = Server(h.exchange, h.auth, MEMBERS, cfg, operator_member=OPERATOR_MEMBER, tick_s=0)
        assert len(batches) == len(events)
        for batch, batch_events in zip(batches, events, strict=True):
            rebuilt.rebuild(batch, batch_events)
        for member, live in h.server.streams.items():
            again_ = rebuilt.streams[member]
            assert (again_.seq, again_.base) == (live.seq, live.base), member
            assert [(r.seq_out, r.body) for r in again_.history] == [(r.seq_out, r.body) for r in live.history], member
            assert again_.coids == live.coids, member
        h.check()


@run
async def test_cancel_on_disconnect_refused_by_the_journal_is_retried_once_it_writes() -> None:
    """A session ends while the journal refuses writes: its cancel-on-disconnect cannot be
    entered then, so the gateway enters it after the journal writes again (the member
    still being away), and the holds are released."""
    async with Harness() as h:
        down = [False]
        tried: list[Any] = []

        async def journal(batch: list[Any]) -> None:
            if down[0]:
                tried.extend(batch)
                raise OSError("no space left on device")

        h.server._journal = journal
        m1 = await h.client("M1", "t1")  # cancel-on-disconnect on (a trader's default)
        m2 = await h.client("M2", "t2", cod=CodMode.OFF)
        m1.new_order(SYMBOL, BUY, 100, 10_000)
        await body_of(m1, Accepted)
        down[0] = True
        m1.abort()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if any(type(c) is MassCancel for c in tried):
                break
        assert any(type(c) is MassCancel and c.reason == CancelReason.DISCONNECT for c in tried)
        assert [o.member for o in h.exchange.engine.orders.values()] == ["M1"]  # not entered: not durable
        down[0] = False
        m2.new_order(SYMBOL, SELL, 10, 10_500)  # the journal writes again
        await body_of(m2, Accepted)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not any(o.member == "M1" for o in h.exchange.engine.orders.values()):
                break
        assert [o.member for o in h.exchange.engine.orders.values()] == ["M2"]
        assert balance(h, "M1", "CNY") == (CASH, 0)
        back = await h.client("M1", "t1", last_seq=m1.last_seq)
        cancels = [m.body for m in await drain(back) if isinstance(m, Report)]
        assert [(type(c), c.reason) for c in cancels] == [(Cancelled, CancelReason.DISCONNECT)]
        h.check()


@run
async def test_a_full_core_queue_pauses_reading_and_loses_nothing() -> None:
    async with Harness() as h:
        h.server.pending_max = 10
        paused: list[int] = []
        h.server.on_events.append(lambda out: paused.append(len(h.server._paused)))
        m1 = await h.client("M1", "t1")
        coids = [m1.new_order(SYMBOL, SELL, 1, 10_000 + i) for i in range(300)]
        got = [await body_of(m1, Accepted) for _ in range(300)]
        assert [a.coid for a in got] == coids
        assert max(paused) >= 1  # reading stopped while the queue was over its limit ...
        assert h.server._paused == [] and all(not s.paused for s in h.server.sessions)  # ... and resumed
        h.check()


@run
async def test_history_beyond_its_limit_is_trimmed_and_replay_says_so() -> None:
    async with Harness(SessionSection(history_max=100)) as h:
        m1 = await h.client("M1", "t1", cod=CodMode.OFF)
        for i in range(150):
            m1.new_order(SYMBOL, SELL, 1, 10_000 + i)
        for _ in range(150):
            await body_of(m1, Accepted)
        stream = h.server.streams["M1"]
        assert stream.seq == 150 and 0 < stream.base and len(stream.history) <= 100
        fresh = await h.client("M1", "t1b")
        msgs = await drain(fresh)
        assert isinstance(msgs[0], Notice) and msgs[0].code == GatewayReason.REPLAY_TRIMMED
        assert [r.seq_out for r in msgs[1:]] == list(range(stream.base + 1, 151))
        h.check()


async def _sell_many(c: Client, n: int, price: int = 10_000) -> None:
    for i in range(n):
        c.new_order(SYMBOL, SELL, 1, price + i % 1000)
    for _ in range(n):
        await c.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Accepted), 30)


def _session_of(h: Harness, user: str) -> Any:
    return next(s for s in h.server.sessions if s.user == user)


async def _slow_reader(h: Harness) -> Raw:
    """A connection that reads through small socket buffers on both ends (the server's
    kernel would otherwise take megabytes off the gateway's own write buffer)."""
    raw = await Raw.open(h.port, rcvbuf=4096)
    here = raw.writer.get_extra_info("sockname")
    for _ in range(100):
        mine = [s for s in h.server.sessions if s.peer == f"{here[0]}:{here[1]}"]
        if mine:
            break
        await asyncio.sleep(0.01)
    assert mine[0].transport is not None
    mine[0].transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return raw


@run
async def test_replay_to_a_slow_reader_keeps_its_buffer_bounded_and_survives_a_trim() -> None:
    """The replay at logon waits for the client to read (a bounded write buffer, not the
    whole history at once); if the history is trimmed meanwhile the replay says so and
    goes on from the oldest report kept, never sending a report twice or out of order."""
    async with Harness(SessionSection(history_max=30_000)) as h:
        h.server.replay_chunk = 500
        m1 = await h.client("M1", "t1", cod=CodMode.OFF)
        await _sell_many(m1, 20_000)
        raw = await _slow_reader(h)
        await raw.logon("M1", "t1b", heartbeat_ms=5000)  # and then does not read for a while
        s = _session_of(h, "t1b")
        sizes = []
        for _ in range(30):
            await asyncio.sleep(0.01)
            assert s.transport is not None
            sizes.append(s.transport.get_write_buffer_size())
        assert max(sizes) < 400_000, max(sizes)  # the 20,000 reports are about 1.8 MB
        await _sell_many(m1, 11_000)  # the history passes its limit and is trimmed
        stream = h.server.streams["M1"]
        assert stream.base > 0
        seqs: list[int] = []
        notices = []
        while not seqs or seqs[-1] < stream.seq:
            msg = await raw.recv()
            if isinstance(msg, Notice):
                notices.append((len(seqs), msg))
            elif isinstance(msg, Report):
                seqs.append(msg.seq_out)
        assert len(notices) == 1 and notices[0][1].code == GatewayReason.REPLAY_TRIMMED
        cut = notices[0][0]
        assert seqs[:cut] == list(range(1, cut + 1))
        assert seqs[cut:] == list(range(seqs[cut], stream.seq + 1)) and seqs[cut] == stream.base + 1
        h.check()


@run
async def test_a_replay_the_client_does_not_read_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "etx.session")
    async with Harness() as h:
        h.server.replay_chunk = 500
        m1 = await h.client("M1", "t1", cod=CodMode.OFF)
        await _sell_many(m1, 5_000)
        raw = await _slow_reader(h)
        await raw.logon("M1", "t1b", heartbeat_ms=100)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if not any(s.user == "t1b" for s in h.server.sessions):
                break
        assert not any(s.user == "t1b" for s in h.server.sessions)
        assert f"user=t1b peer={raw.writer.get_extra_info('sockname')[0]}" in caplog.text
        assert f"reason={int(GatewayReason.SLOW_CONSUMER)}" in caplog.text
        h.check()


@run
async def test_a_peer_that_does_not_read_its_replies_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "etx.session")
    async with Harness(SessionSection(write_buffer_max=100_000)) as h:
        m1 = await h.client("M1", "t1", cod=CodMode.OFF)
        await _sell_many(m1, 500)
        raw = await _slow_reader(h)
        await raw.logon("M1", "t1b")
        raw.send(b"".join(encode_frame(QueryOrders(i)) for i in range(300)))  # about 7 MB of replies, unread
        for _ in range(300):
            await asyncio.sleep(0.01)
            if not any(s.user == "t1b" for s in h.server.sessions):
                break
        assert not any(s.user == "t1b" for s in h.server.sessions)
        assert "session dropped: member=M1 user=t1b" in caplog.text
        assert f"reason={int(GatewayReason.SLOW_CONSUMER)}" in caplog.text
        assert (await m1.query_book(SYMBOL)).instrument == SYMBOL  # the others go on
        h.check()


@run
async def test_a_peer_that_does_not_read_its_session_replies_is_dropped() -> None:
    """Answers the session writes at once (session rejects, refused queries, heartbeats)
    count against the write buffer limit as much as reports do."""
    async with Harness(SessionSection(write_buffer_max=20_000)) as h:
        raw = await _slow_reader(h)
        await raw.logon("M1", "t1b")
        logon = encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1b", SECRET))
        raw.send(logon * 3_000)  # each answered by a SessionReject(ALREADY_LOGGED_ON), never read
        for _ in range(300):
            await asyncio.sleep(0.01)
            if not any(s.user == "t1b" for s in h.server.sessions):
                break
        assert not any(s.user == "t1b" for s in h.server.sessions)
        h.check()


@run
async def test_a_retransmission_over_the_throttle_still_gets_the_original_outcome() -> None:
    """A refusal says the order was not entered; a retransmission of an order that was
    entered must never get one, even when the session is out of tokens."""
    async with Harness(SessionSection(orders_per_second=1, burst=1)) as h:
        m1 = await h.client("M1", "t1")
        m1.new_order(SYMBOL, BUY, 1, 9_900, coid="once")
        m1.new_order(SYMBOL, BUY, 1, 9_900, coid="once")
        first = await m1.wait_for(lambda m: isinstance(m, Report | Resent))
        again = await m1.wait_for(lambda m: isinstance(m, Report | Resent))
        assert type(first) is Report and isinstance(first.body, Accepted) and first.seq_out == 1
        assert type(again) is Resent and again.body == first.body
        h.check()


@run
async def test_orders_at_the_best_levels() -> None:
    """``QueryOrders.best_levels``: the orders resting at the best levels of each side,
    bids then asks, best first and in time priority within a level; a member sees them
    all (the orders it may hit), other members' without member or client order id, staff
    everyone's; the query names an instrument that exists."""
    async with Harness() as h:
        op = await h.client("EXCH", "op")
        m1 = await h.client("M1", "t1")
        m2 = await h.client("M2", "t2")
        for c, side, qty, price in ((m1, BUY, 1, 9_900), (m2, BUY, 2, 9_900), (m1, BUY, 3, 9_950),
                                    (m1, BUY, 4, 9_800), (m2, SELL, 5, 10_100), (m1, SELL, 6, 10_050)):
            c.new_order(SYMBOL, side, qty, price)
            await body_of(c, Accepted)
        top = await op.query_top_orders(SYMBOL, 2)
        assert [(o.member, o.side, o.price, o.qty) for o in top.orders] == [
            ("M1", BUY, 9_950, 3), ("M1", BUY, 9_900, 1), ("M2", BUY, 9_900, 2),
            ("M1", SELL, 10_050, 6), ("M2", SELL, 10_100, 5)]
        assert not top.more
        assert [o.qty for o in (await op.query_top_orders(SYMBOL, 1)).orders] == [3, 6]
        assert [o.qty for o in (await op.query_top_orders(SYMBOL, 2, member="M2")).orders] == [2, 5]
        # A member sees every order there (it may hit any of them), the others' anonymous ...
        seen = (await m2.query_top_orders(SYMBOL, 2)).orders
        assert [(o.member, o.coid != "", o.qty) for o in seen] == [
            ("", False, 3), ("", False, 1), ("M2", True, 2), ("", False, 6), ("M2", True, 5)]
        assert [o.order_id for o in seen] == [o.order_id for o in top.orders]
        # ... and naming itself, only its own.
        assert [o.qty for o in (await m2.query_top_orders(SYMBOL, 2, member="M2")).orders] == [2, 5]
        with pytest.raises(QueryError) as e:
            await m2.query_top_orders(SYMBOL, 2, member="M1")
        assert e.value.reason == GatewayReason.NOT_PERMITTED
        for instrument, levels, reason in (("NOPE", 2, GatewayReason.UNKNOWN_INSTRUMENT),
                                           ("", 2, GatewayReason.INVALID_FIELD),
                                           (SYMBOL, -1, GatewayReason.INVALID_FIELD)):
            with pytest.raises(QueryError) as e:
                await op.query_top_orders(instrument, levels)
            assert e.value.reason == reason
        h.check()

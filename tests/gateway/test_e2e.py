"""End-to-end over real TCP: members trade through the gateway, reports arrive in
sequence, balances settle, replay loses and duplicates nothing, a retransmitted order is
not entered twice, members are isolated, operators halt and resume, and
cancel-on-disconnect releases holds."""

from __future__ import annotations

import asyncio

from engine import Accepted, Cancelled, Phase, Rejected, Side, StatusChanged
from engine.messages import CancelReason, Reason
from gateway.client import QueryError
from gateway.protocol import CodMode, Fill, GatewayReason, Liquidity, Report, Resent
from settlement import Deposit, RegistryDone, RegistryRejected
from tests.gateway.harness import ALLOWANCES, CASH, SYMBOL, Harness, body_of, drain, run

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
        assert rej.reason == Reason.NOT_YOUR_ORDER and rej.order_id == oid
        m2.amend(oid, 9_800, 10)
        assert (await body_of(m2, Rejected)).reason == Reason.NOT_YOUR_ORDER
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
        # Staff of the exchange share its member stream: the clerk's deposit comes first.
        assert (await body_of(auth, RegistryDone)).kind == "deposit"
        assert (await body_of(auth, RegistryDone)).kind == "allocate"
        auth.send(Allocate("x", "AUTHORITY", "NOBODY", SYMBOL, 10))
        assert (await body_of(auth, RegistryRejected)).kind == "allocate"
        m1 = await h.client("M1", "t1")
        m1.send(Deposit("M1", "M1", 10**9))
        assert (await body_of(m1, Rejected)).reason == GatewayReason.NOT_PERMITTED
        assert balance(h, "M1", "CNY")[0] == CASH
        h.check()

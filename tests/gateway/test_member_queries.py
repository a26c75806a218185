"""What a member can ask about its own trading day: the state of any of its orders,
finished ones too (by order id or client order id), the day's orders page by page, its
fills with their fees; the end-of-replay marker; a gateway refusal naming its frame.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from engine.messages import (
    Accepted,
    CancelReason,
    EndOfDay,
    Expired,
    MassCancel,
    OrdType,
    Reason,
    Side,
    TimeInForce,
)
from gateway.client import QueryError
from gateway.framing import encode_frame
from gateway.protocol import (
    ORDERS_PER_REPLY,
    PROTOCOL_VERSION,
    TRADES_PER_REPLY,
    GatewayReason,
    Heartbeat,
    Logon,
    OrderState,
    QueryInstruments,
    ReplayDone,
    Report,
)
from gateway.streams import GatewayState, Router
from settlement import Fees
from tests.gateway.harness import MEMBERS, SECRET, SYMBOL, Harness, body_of, drain, make_exchange, run
from tests.gateway.test_session import Raw


@run
async def test_every_order_of_the_day_can_be_asked_for_open_or_finished() -> None:
    async with Harness() as h:
        m1, m2 = await h.client("M1", "t1"), await h.client("M2", "t2")
        resting = m1.new_order(SYMBOL, Side.BUY, 100, 10_000, coid="rest")
        acc = await body_of(m1, Accepted)
        m2.new_order(SYMBOL, Side.SELL, 60, 10_000)  # fills 60 of it
        await m2.query_instruments()
        status = await m1.query_order_status(acc.order_id)
        assert status is not None and (status.coid, status.state, status.qty, status.filled, status.leaves) == (
            resting, OrderState.OPEN, 100, 60, 40)
        assert await m1.query_order_status(coid=resting) == status  # by client order id: the same row

        m1.amend(acc.order_id, 9_990, 30)  # a new price and open quantity
        m1.cancel(acc.order_id)
        m1.new_order(SYMBOL, Side.BUY, 5, 9_000, coid="ioc", tif=TimeInForce.IOC)  # nothing to meet: cancelled
        m1.new_order(SYMBOL, Side.BUY, 5, 10_001 * 10, coid="off-band")  # rejected: outside the band
        m1.new_order(SYMBOL, Side.SELL, 7, 0, coid="mkt", ord_type=OrdType.MARKET)  # no bid left: its rest cancelled
        await m1.query_instruments()

        done = await m1.query_order_status(acc.order_id)
        assert done is not None
        assert (done.state, done.reason, done.price, done.qty, done.filled, done.leaves) == (
            OrderState.CANCELLED, CancelReason.USER, 9_990, 90, 60, 0)
        assert done.last_ts >= done.ts
        ioc = await m1.query_order_status(coid="ioc")
        assert ioc is not None and (ioc.state, ioc.reason, ioc.tif) == (OrderState.CANCELLED, CancelReason.IOC_REST,
                                                                        TimeInForce.IOC)
        rejected = await m1.query_order_status(coid="off-band")
        assert rejected is not None and (rejected.order_id, rejected.state, rejected.reason) == (
            0, OrderState.REJECTED, Reason.PRICE_OUTSIDE_BAND)
        market = await m1.query_order_status(coid="mkt")
        assert market is not None and market.ord_type == OrdType.MARKET and market.state == OrderState.CANCELLED

        day = await m1.query_day_orders()
        assert [o.coid for o in day] == ["rest", "ioc", "mkt"]  # accepted orders, in order id order
        assert await m1.query_day_orders(instrument=SYMBOL) == day
        assert await m1.query_order_status(coid="never-sent") is None
        assert await m1.query_order_status(acc.order_id, coid="another") is None  # both named, disagreeing

        # No member learns of another's orders: M2 asking for M1's order gets nothing.
        assert await m2.query_order_status(acc.order_id) is None
        assert await m2.query_order_status(coid="rest") is None
        with pytest.raises(QueryError) as e:
            await m2.query_order_status(acc.order_id, member="M1")
        assert e.value.reason == GatewayReason.NOT_PERMITTED
        # Staff name the member.
        op = await h.client("EXCH", "op")
        assert await op.query_order_status(acc.order_id, member="M1") == done
        with pytest.raises(QueryError) as e:
            await op.query_order_status(acc.order_id)
        assert e.value.reason == GatewayReason.UNKNOWN_MEMBER
        h.check()


@run
async def test_the_days_orders_come_in_pages_and_a_new_day_starts_empty() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1")
        for i in range(ORDERS_PER_REPLY + 3):
            m1.new_order(SYMBOL, Side.BUY, 1, 9_000 + i % 100, coid=f"o-{i}")
        await m1.query_instruments(timeout=30)
        day = await m1.query_day_orders()  # two pages
        assert [o.coid for o in day] == [f"o-{i}" for i in range(ORDERS_PER_REPLY + 3)]
        assert {o.state for o in day} == {OrderState.OPEN}

        op = await h.client("EXCH", "op")
        op.send(EndOfDay())
        await op.query_instruments()
        await body_of(m1, Expired)
        await m1.query_instruments()
        assert await m1.query_day_orders() == []  # a new trading day
        assert await m1.query_order_status(day[0].order_id) is None
        assert (await m1.query_trades()).trades == []
        h.check()


@run
async def test_a_members_fills_of_the_day_with_their_fees_in_pages() -> None:
    fees = Fees(trading_ppm=300, settlement_ppm=50)
    async with Harness(exchange=make_exchange(fees=fees)) as h:
        m1, m2, m3 = await h.client("M1", "t1"), await h.client("M2", "t2"), await h.client("M3", "t3")
        n = TRADES_PER_REPLY + 2
        for i in range(n):
            m2.new_order(SYMBOL, Side.SELL, 3, 10_000 + i % 7, coid=f"s-{i}")
        await m2.query_instruments(timeout=30)
        m1.new_order(SYMBOL, Side.BUY, 3 * n, 10_006, coid="big")  # takes them all: n fills
        m3.new_order(SYMBOL, Side.BUY, 1, 9_000, coid="alone")  # no fill
        await m1.query_instruments(timeout=30)
        await m3.query_instruments()

        first = await m1.query_trades()
        assert len(first.trades) == TRADES_PER_REPLY and first.more
        trades = await m1.query_all_trades()
        assert len(trades) == n and [t.trade_id for t in trades] == sorted({t.trade_id for t in trades})
        assert {t.coid for t in trades} == {"big"} and sum(t.qty for t in trades) == 3 * n
        for t in trades:
            notional = t.price * t.qty
            assert t.fee == notional * 300 // 1_000_000 + notional * 50 // 1_000_000
            assert t.side == Side.BUY and t.liquidity == 2  # the taker
        sold = await m2.query_all_trades()
        assert sorted(t.trade_id for t in sold) == [t.trade_id for t in trades]
        assert {t.liquidity for t in sold} == {1}
        assert await m1.query_all_trades(instrument=SYMBOL) == trades
        after = await m1.query_trades(after_trade_id=trades[-2].trade_id)
        assert after.trades == trades[-1:] and not after.more
        assert (await m3.query_trades()).trades == []
        with pytest.raises(QueryError) as e:
            await m3.query_trades(member="M1")
        assert e.value.reason == GatewayReason.NOT_PERMITTED
        with pytest.raises(QueryError) as e:
            await m1.query_trades(instrument="NOPE")
        assert e.value.reason == GatewayReason.UNKNOWN_INSTRUMENT
        clerk = await h.client("EXCH", "clerk")
        assert await clerk.query_all_trades(member="M2") == sold
        h.check()


@run
async def test_the_replay_ends_with_a_marker_before_anything_live() -> None:
    async with Harness() as h:
        m1 = await h.client("M1", "t1", cod=2)
        await asyncio.wait_for(m1.replay_done.wait(), 5)
        assert m1.replayed_to == 0
        for i in range(5):
            m1.new_order(SYMBOL, Side.BUY, 1, 9_900 + i)
        await m1.query_instruments()
        await drain(m1)
        await m1.close()

        raw = await Raw.open(h.port)
        raw.send(encode_frame(Logon(PROTOCOL_VERSION, "M1", "t1", SECRET, 2, 2)))
        ack = await raw.recv()
        assert type(ack).__name__ == "LogonAck" and ack.next_seq == 5  # type: ignore[attr-defined]
        replayed = [await raw.recv(), await raw.recv(), await raw.recv()]
        assert [r.seq_out for r in replayed] == [3, 4, 5]  # type: ignore[attr-defined]
        # The marker came right after the last replayed report (Raw keeps markers aside).
        await _settle(raw)
        assert raw.replay_done == [ReplayDone(5)]
        assert raw.buf == b""  # nothing followed it: nothing live has happened


async def _settle(raw: Raw) -> None:
    """Read everything the server has sent so far (a query round trip)."""
    raw.send(encode_frame(QueryInstruments(99)))
    reply = await raw.recv()
    assert type(reply).__name__ == "InstrumentsReply", reply


@run
async def test_a_gateway_refusal_names_the_frame_it_answers() -> None:
    async with Harness() as h:
        raw = await Raw.open(h.port)
        await raw.logon()  # frame 1
        raw.send(encode_frame(Heartbeat())  # 2
                 + encode_frame(MassCancel("M1", "", 3))  # 3: a member's mass cancel must have reason 5
                 + encode_frame(MassCancel("M1", "", 4)))  # 4
        refusals = [await raw.recv(), await raw.recv()]
        assert all(type(r) is Report and r.seq_out == 0 for r in refusals)
        assert [(r.index, r.body.reason) for r in refusals] == [  # type: ignore[attr-defined]
            (3, GatewayReason.INVALID_FIELD), (4, GatewayReason.INVALID_FIELD)]


def test_a_snapshot_keeps_the_days_orders_and_fills() -> None:
    """The streams' part of a snapshot holds the day's orders and fills; restored, they
    answer the same queries (an open order's record is the one the fills update)."""
    async def scenario() -> tuple[Router, Harness]:
        h = Harness()
        async with h:
            m1, m2 = await h.client("M1", "t1", cod=2), await h.client("M2", "t2")  # orders stay when it leaves
            m1.new_order(SYMBOL, Side.BUY, 10, 10_000, coid="a")
            m1.new_order(SYMBOL, Side.BUY, 10, 9_990, coid="b")
            m1.new_order(SYMBOL, Side.BUY, 1, 1, coid="bad")  # rejected
            await m1.query_instruments()
            m2.new_order(SYMBOL, Side.SELL, 14, 9_990)
            await m2.query_instruments()
            await m1.query_instruments()
            return h.server.router, h

    router, h = asyncio.run(scenario())
    encoded = router.capture(100).encode()
    state = msgspec.msgpack.decode(encoded, type=GatewayState)
    fresh = Router(h.exchange.engine, MEMBERS, [])
    fresh.restore(state, [(o.order_id, o.member, o.coid, o.side, o.qty) for o in h.exchange.engine.orders.values()])
    before, after = router.streams["M1"], fresh.streams["M1"]
    assert after.day == before.day and after.fills == before.fills and len(after.fills) == 2
    assert set(after.open) == set(before.open) and len(after.open) == 1
    (oid,) = after.open
    assert after.open[oid] is after.day[oid]  # one record: what a later fill updates is what a query reads
    assert after.day[oid].filled == 4 and after.day[oid].qty == 6
    after._check()
    assert {rep.body.coid for rep in after.coids.values()} == {"a", "b", "bad"}  # type: ignore[union-attr]


@run
async def test_the_last_trades_of_an_instrument_are_public_and_anonymous() -> None:
    async with Harness() as h:
        m1, m2, m3 = await h.client("M1", "t1"), await h.client("M2", "t2"), await h.client("M3", "t3")
        assert (await m3.query_market_trades(SYMBOL)).trades == []
        for i in range(3):
            m1.new_order(SYMBOL, Side.BUY, 5 + i, 10_000 + i)
            await m1.query_instruments()
            m2.new_order(SYMBOL, Side.SELL, 5 + i, 10_000 + i)  # the aggressor: a sell
            await m2.query_instruments()
        reply = await m3.query_market_trades(SYMBOL)  # a member that took no part sees them
        assert [(t.price, t.qty, t.aggressor) for t in reply.trades] == [
            (10_002, 7, Side.SELL), (10_001, 6, Side.SELL), (10_000, 5, Side.SELL)]  # newest first
        assert [t.trade_id for t in reply.trades] == sorted((t.trade_id for t in reply.trades), reverse=True)
        assert not any(hasattr(t, "buyer") or hasattr(t, "member") for t in reply.trades)
        assert len((await m3.query_market_trades(SYMBOL, count=2)).trades) == 2
        for instrument, count, reason in (("NOPE", 5, GatewayReason.UNKNOWN_INSTRUMENT),
                                          (SYMBOL, 0, GatewayReason.INVALID_FIELD),
                                          (SYMBOL, 51, GatewayReason.INVALID_FIELD)):
            with pytest.raises(QueryError) as e:
                await m3.query_market_trades(instrument, count)
            assert e.value.reason == reason

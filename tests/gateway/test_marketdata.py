"""The market data publisher against a real Mosquitto broker: retained snapshots, trade
messages (anonymous), conflation, limits, a broker restart, and an unreachable broker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from engine import ALWAYS_OPEN, EndOfDay, Engine, Halt, Instrument, NewOrder, Resume, Schedule, Sequencer, Side, Tick
from engine.messages import AuctionAnnounce, AuctionBid, BlockAccept, BlockOffer, Command
from gateway.marketdata import (
    AlertMsg,
    AuctionMsg,
    BlockMsg,
    BookMsg,
    ExchangeStatusMsg,
    HealthMsg,
    MarketDataPublisher,
    RefMsg,
    StatsMsg,
    StatusMsg,
    TradeMsg,
    yuan,
)
from tests.mosquitto import Mosquitto, Subscriber, free_port, mosquitto_broker

broker = mosquitto_broker  # the shared fixture, under the name these tests use

EXCHANGE = "etx/v1/etx"  # the default root: the payload version, then the exchange id
ROOT = f"{EXCHANGE}/md/CEA24"
SECRETS = (b"MEMBER-", b"COID-")  # member ids and client order ids must never be published
WAIT_S = 5.0


class Exchange:
    """An engine on a frozen clock (``clock``: one of your own), feeding the publisher
    after every batch as the core does."""

    def __init__(self, schedule: Schedule = ALWAYS_OPEN, clock: Callable[[], int] = lambda: 0) -> None:
        self.engine = Engine([Instrument(symbol="CEA24", ref_price=10000, holds=False)], schedule=schedule)
        self.sequencer = Sequencer(clock)
        self.md: MarketDataPublisher | None = None
        self.n = 0

    def publisher(self, port: int, **kw: Any) -> MarketDataPublisher:
        kw.setdefault("interval_ms", 20)
        kw.setdefault("backoff_min_ms", 20)
        kw.setdefault("backoff_max_ms", 100)
        self.md = MarketDataPublisher(self.engine, "127.0.0.1", port, **kw)
        return self.md

    def batch(self, *cmds: Command) -> None:
        for cmd in cmds:
            self.engine.apply(self.sequencer.stamp(cmd))
        assert self.md is not None
        self.md.on_events(self.engine.out)
        self.engine.out.clear()
        self.md._check()

    def order(self, member: str, side: Side, qty: int, price: int) -> NewOrder:
        self.n += 1
        return NewOrder(f"MEMBER-{member}", f"COID-{self.n}", "CEA24", int(side), qty, price)


def level(price: int, qty: int, orders: int) -> dict[str, Any]:
    return {"price": price, "price_yuan": yuan(price), "qty": qty, "orders": orders}


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not cond():
            await asyncio.sleep(0.005)


def test_yuan_is_exact() -> None:
    assert [yuan(v) for v in (0, 1, 10, 100, 10025, 1_000_000_07, -5)] == [
        "0.00", "0.01", "0.10", "1.00", "100.25", "1000000.07", "-0.05"
    ]


def test_rejects_bad_configuration() -> None:
    engine = Exchange().engine
    with pytest.raises(ValueError, match="root"):
        MarketDataPublisher(engine, "127.0.0.1", 1883, root="etx/#")
    with pytest.raises(ValueError, match="depth"):
        MarketDataPublisher(engine, "127.0.0.1", 1883, depth=0)
    with pytest.raises(ValueError, match="payload_max"):
        MarketDataPublisher(engine, "127.0.0.1", 1883, payload_max=100)
    slash = Engine([Instrument(symbol="CEA/24", ref_price=10000, holds=False)])
    with pytest.raises(ValueError, match="topic level"):
        MarketDataPublisher(slash, "127.0.0.1", 1883)


def test_book_trades_stats_status_and_anonymity(broker: Mosquitto) -> None:
    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port, health_interval_ms=50)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await live.wait(f"{ROOT}/status")
            x.batch(
                x.order("A", Side.BUY, 10, 9900),
                x.order("B", Side.BUY, 5, 9900),
                x.order("A", Side.BUY, 7, 9850),
                x.order("C", Side.SELL, 3, 10100),
            )
            x.batch(x.order("C", Side.SELL, 12, 9900))  # takes A's 10, then 2 of B's 5
            last = x.engine.last_seq
            book = await live.wait(f"{ROOT}/book", lambda m: m["seq"] == last)
            assert book == {
                "instrument": "CEA24", "seq": last, "ts": 0, "phase": "continuous",
                "bids": [level(9900, 3, 1), level(9850, 7, 1)],
                "asks": [level(10100, 3, 1)],
            }
            await until(lambda: sum(len(t) for t in live.on(f"{ROOT}/trades")) >= 2)
            trades = [t for msg in live.on(f"{ROOT}/trades") for t in msg]
            assert trades == [
                {"trade_id": 1, "price": 9900, "price_yuan": "99.00", "qty": 10, "aggressor": "sell", "ts": 0, "seq": last},
                {"trade_id": 2, "price": 9900, "price_yuan": "99.00", "qty": 2, "aggressor": "sell", "ts": 0, "seq": last},
            ]
            stats = await live.wait(f"{ROOT}/stats", lambda m: m["seq"] == last)
            assert stats == {
                "instrument": "CEA24", "seq": last, "ts": 0,
                "open": 9900, "open_yuan": "99.00", "high": 9900, "high_yuan": "99.00",
                "low": 9900, "low_yuan": "99.00", "last": 9900, "last_yuan": "99.00",
                "volume": 12, "value": 118800, "value_yuan": "1188.00", "trades": 2,
                "ref_price": 10000, "ref_price_yuan": "100.00",
                "band_low": 9000, "band_low_yuan": "90.00", "band_high": 11000, "band_high_yuan": "110.00",
                "close": None, "close_yuan": None, "closed_day": None,
                "block_volume": 0, "block_value": 0, "block_value_yuan": "0.00", "block_trades": 0,
            }

            x.batch(Halt(instrument="CEA24"))
            halted = x.engine.last_seq
            status = await live.wait(f"{ROOT}/status", lambda m: m["seq"] == halted)
            assert status == {"instrument": "CEA24", "seq": halted, "ts": 0, "phase": "halted", "halted": True}
            x.batch(Resume(instrument="CEA24"), EndOfDay())
            closed = x.engine.last_seq
            stats = await live.wait(f"{ROOT}/stats", lambda m: m["seq"] == closed)
            assert stats["close"] == 9900 and stats["close_yuan"] == "99.00"
            assert stats["closed_day"] == {"open": 9900, "open_yuan": "99.00", "volume": 12, "value": 118800,
                                           "value_yuan": "1188.00", "seq": closed, "ts": 0}
            # The engine rolled the day: today's figures start again around the new reference.
            assert (stats["volume"], stats["open"], stats["ref_price"]) == (0, None, 9900)
            assert (stats["band_low"], stats["band_high"]) == (8910, 10890)
            book = await live.wait(f"{ROOT}/book", lambda m: m["seq"] == closed)
            assert book["bids"] == [] and book["asks"] == []  # the day's orders expired

            # Retained: a late subscriber gets the snapshots at once, and no old trades.
            async with Subscriber(broker.port) as late:
                for topic in ("book", "stats", "status"):
                    await late.wait(f"{ROOT}/{topic}", lambda m: m["seq"] == closed)
                health = await late.wait(f"{EXCHANGE}/ops/health")
                await asyncio.sleep(0.05)
                assert health["status"] == "online"
                assert all(retain for t, _, retain in late.messages if "/md/" in t)
                assert late.on(f"{ROOT}/trades") == []

            md.stop()
            await asyncio.wait_for(task, WAIT_S)
            health = await live.wait(f"{EXCHANGE}/ops/health", lambda m: m["status"] == "offline")
            assert health["last_seq"] == closed and health["trades_dropped"] == 0
            for topic, payload, _ in live.messages:
                assert not any(s in payload for s in SECRETS), (topic, payload)
                assert_yuan_pairs(msgspec.json.decode(payload))
            md._check()

    asyncio.run(scenario())


def test_block_trades_are_published_apart_and_counted_apart(broker: Mosquitto) -> None:
    """A block agreement trade goes to {root}/md/{instrument}/blocks without members, and
    into the day's statistics as block figures; the listing's open, last, volume and
    VWAP do not move."""
    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await live.wait(f"{ROOT}/status")
            x.batch(BlockOffer("MEMBER-A", "COID-b1", "CEA24", int(Side.SELL), 150_000, 10_200, partial=True))
            x.batch(BlockAccept("MEMBER-B", "COID-b2", 1, 100_000))
            last = x.engine.last_seq
            blocks = await live.wait(f"{ROOT}/blocks")
            assert blocks == [{"trade_id": 1, "price": 10200, "price_yuan": "102.00", "qty": 100_000, "ts": 0,
                               "seq": last}]
            stats = await live.wait(f"{ROOT}/stats", lambda m: m["seq"] == last)
            assert (stats["block_volume"], stats["block_value"], stats["block_value_yuan"], stats["block_trades"]) == (
                100_000, 1_020_000_000, "10200000.00", 1)
            assert (stats["volume"], stats["trades"], stats["last"], stats["open"]) == (0, 0, None, None)
            assert live.on(f"{ROOT}/trades") == []
            md.stop()
            await asyncio.wait_for(task, WAIT_S)
            for topic, payload, _ in live.messages:
                assert not any(secret in payload for secret in SECRETS), (topic, payload)

    asyncio.run(scenario())


def test_auction_announcements_and_results_are_published_without_bidders(broker: Mosquitto) -> None:
    async def scenario() -> None:
        now = [0]
        x = Exchange(clock=lambda: now[0])
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await live.wait(f"{ROOT}/status")
            x.batch(AuctionAnnounce("MEMBER-S", "CEA24", 100_000, 9_500, 0, 1_000))
            x.batch(AuctionBid("MEMBER-A", "COID-1", 1, 80_000, 10_200), AuctionBid("MEMBER-B", "COID-2", 1, 60_000, 9_900))
            now[0] = 1_000  # the window closes with the next command
            x.batch(Tick())
            announced = await live.wait(f"{ROOT}/auctions", lambda m: m["kind"] == "announced")
            assert (announced["seller"], announced["qty"], announced["floor_yuan"], announced["ceiling_yuan"],
                    announced["pricing"]) == ("MEMBER-S", 100_000, "95.00", "110.00", "uniform")
            result = await live.wait(f"{ROOT}/auctions", lambda m: m["kind"] == "result")
            assert (result["clearing_price_yuan"], result["qty_sold"], result["bids"], result["winners"],
                    result["bid_qty"], result["fill_ratio"], result["cancelled"]) == (
                "99.00", 100_000, 2, 2, 140_000, "0.7143", False)
            md.stop()
            await asyncio.wait_for(task, WAIT_S)
            for topic, payload, _ in live.messages:
                assert b"MEMBER-A" not in payload and b"MEMBER-B" not in payload and b"COID-" not in payload, topic

    asyncio.run(scenario())


def test_conflation_many_changes_few_book_messages(broker: Mosquitto) -> None:
    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port, interval_ms=200)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await live.wait(f"{ROOT}/book")
            before = len(live.on(f"{ROOT}/book"))
            for i in range(300):  # 300 batches within one interval: the core never waits
                x.batch(x.order("A", Side.BUY, 1 + i % 7, 9000 + (i % 50) * 10))
            last = x.engine.last_seq
            book = await live.wait(f"{ROOT}/book", lambda m: m["seq"] == last)
            await asyncio.sleep(0.3)  # a further interval: nothing more may come
            books = live.on(f"{ROOT}/book")[before:]
            print(f"300 changes -> {len(books)} book messages")
            assert 1 <= len(books) <= 2 and books[-1] == book
            assert len(book["bids"]) == 5 and book["bids"][0]["price"] == 9490
            md.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


def test_buffered_trades_and_alerts_are_bounded(broker: Mosquitto) -> None:
    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port, trades_max=4, alerts_max=2)
        x.batch(*[x.order("S", Side.SELL, 1, 10000) for _ in range(10)])
        x.batch(x.order("B", Side.BUY, 10, 10000))  # ten trades; only the last four fit
        assert (len(md._trades), md.trades_dropped) == (4, 6)
        for i in range(5):
            md.alert("surveillance", f"alert {i}")
        md.alert("k" * 500, "x" * 10_000)  # long fields are cut, not refused
        assert md.alerts_dropped == 4
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await until(lambda: sum(len(t) for t in live.on(f"{ROOT}/trades")) >= 4)
            await live.wait(f"{EXCHANGE}/ops/health")
            trades = [t["trade_id"] for msg in live.on(f"{ROOT}/trades") for t in msg]
            assert trades == [7, 8, 9, 10]
            alerts = live.on(f"{EXCHANGE}/ops/alerts")
            assert [a["text"] for a in alerts] == ["alert 4", "x" * 2000]
            assert len(alerts[1]["kind"]) == 64 and alerts[0]["last_seq"] == x.engine.last_seq
            health = live.on(f"{EXCHANGE}/ops/health")[-1]
            assert (health["trades_dropped"], health["alerts_dropped"]) == (6, 4)
            md.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


def test_large_trade_bursts_split_under_payload_max(broker: Mosquitto) -> None:
    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port, payload_max=4096)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await live.wait(f"{ROOT}/book")
            x.batch(*[x.order("S", Side.SELL, 1, 10000 + i % 3) for i in range(150)])
            x.batch(x.order("B", Side.BUY, 150, 10002))
            await until(lambda: sum(len(t) for t in live.on(f"{ROOT}/trades")) >= 150)
            sizes = [len(p) for t, p, _ in live.messages if t == f"{ROOT}/trades"]
            assert len(sizes) >= 4 and max(sizes) <= 4096, sizes
            ids = [t["trade_id"] for msg in live.on(f"{ROOT}/trades") for t in msg]
            assert ids == list(range(1, 151))
            assert md.oversize_dropped == 0
            md.alert("test", "\x01€" * 2000)  # 2000 characters, far more than 4096 bytes of JSON
            alert = await live.wait(f"{EXCHANGE}/ops/alerts")
            size = max(len(p) for t, p, _ in live.messages if t == f"{EXCHANGE}/ops/alerts")
            assert size <= 4096 and 0 < len(alert["text"]) < 2000 and alert["text"].startswith("\x01€")
            md.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


def test_reconnects_after_broker_restart(broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="etx.marketdata")

    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            await live.wait(f"{ROOT}/book")
        broker.stop()
        await until(lambda: not md.connected)
        x.batch(x.order("A", Side.SELL, 4, 10000), x.order("B", Side.BUY, 5, 10000))
        await asyncio.sleep(0.3)  # several reconnect attempts, all failing
        assert not task.done() and len(md._trades) == 1
        broker.start()
        last = x.engine.last_seq
        async with Subscriber(broker.port) as fresh:
            book = await fresh.wait(f"{ROOT}/book", lambda m: m["seq"] == last)
            assert book["bids"] == [level(10000, 1, 1)] and book["asks"] == []
            stats = await fresh.wait(f"{ROOT}/stats", lambda m: m["seq"] == last)
            assert (stats["volume"], stats["last"]) == (4, 10000)
            await fresh.wait(f"{ROOT}/status")
        await until(lambda: not md._trades)  # the outage's trade went out after reconnecting
        assert md.reconnects == 1
        md.stop()
        await asyncio.wait_for(task, WAIT_S)
        md._check()

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "etx.marketdata"]
    assert len(lines) == 2, lines  # one line for the outage, one for the recovery
    assert "lost MQTT broker" in lines[0] and "connected to" in lines[1]


def test_unreachable_broker_never_raises_and_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="etx.marketdata")

    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(free_port(), trades_max=3, backoff_max_ms=40)
        task = asyncio.create_task(md.run())
        for i in range(20):
            x.batch(x.order("S", Side.SELL, 1, 10000), x.order("B", Side.BUY, 1, 10000))
            md.alert("test", f"alert {i}")
            await asyncio.sleep(0.01)
        assert not task.done() and not md.connected
        with pytest.raises(RuntimeError, match="already running"):
            await md.run()
        assert (len(md._trades), md.trades_dropped) == (3, 17)
        assert list(md._dirty) == ["CEA24"]
        md.stop()
        await asyncio.wait_for(task, WAIT_S)
        assert task.exception() is None

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "etx.marketdata"]
    assert len(lines) == 1 and "cannot reach MQTT broker" in lines[0], lines


def test_probe(broker: Mosquitto) -> None:
    async def scenario() -> None:
        assert await MarketDataPublisher.probe("127.0.0.1", broker.port, 2.0) is True
        assert await MarketDataPublisher.probe("127.0.0.1", free_port(), 2.0) is False
        broker.stop()
        assert await MarketDataPublisher.probe("127.0.0.1", broker.port, 2.0) is False

    asyncio.run(scenario())


# --- findings of "tried as a new user would" ----------------------------------------

T0 = 1_732_759_200_000_000_000  # 2024-11-28 02:00 UTC, 10:00 in Beijing: inside the morning window


def test_first_snapshots_carry_the_engines_seq_and_ts(broker: Mosquitto) -> None:
    # A publisher started on an engine that has already run (a restarted exchange)
    # used to send its first stats and status with seq 0, ts 0.
    async def scenario() -> None:
        ticks = itertools.count(T0, 1000)
        x = Exchange(clock=lambda: next(ticks))
        for cmd in (x.order("A", Side.BUY, 10, 9900), x.order("B", Side.SELL, 4, 9900), x.order("B", Side.SELL, 2, 10100)):
            x.engine.apply(x.sequencer.stamp(cmd))
        x.engine.out.clear()  # what a recovery replays is not handed to the publisher
        seq, ts = x.engine.last_seq, x.engine.last_ts
        assert seq == 3 and ts > 0
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            for topic in ("book", "stats", "status", "ref"):
                msg = await live.wait(f"{ROOT}/{topic}")
                assert (msg["seq"], msg["ts"]) == (seq, ts), (topic, msg)
            stats = await live.wait(f"{ROOT}/stats")
            assert (stats["volume"], stats["last"]) == (4, 9900)
            md.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


def test_reference_data_topic(broker: Mosquitto) -> None:
    # Tick, lot, order sizes, band and schedule were nowhere on the feed.
    async def scenario() -> None:
        national = Schedule(windows=[(570, 690), (780, 900)], utc_offset_minutes=480)
        ticks = itertools.count(T0, 1000)
        x = Exchange(schedule=national, clock=lambda: next(ticks))
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            ref = await live.wait(f"{ROOT}/ref")
            assert ref == {
                "instrument": "CEA24", "seq": 0, "ts": 0, "tick": 1, "tick_yuan": "0.01", "lot": 1,
                "qty_min": 1, "qty_max": 99_999, "ref_price": 10000, "ref_price_yuan": "100.00", "band_bps": 1000,
                "band_low": 9000, "band_low_yuan": "90.00", "band_high": 11000, "band_high_yuan": "110.00",
                "windows": [{"open": "09:30", "close": "11:30"}, {"open": "13:00", "close": "15:00"}],
                "utc_offset_minutes": 480, "utc_offset": "+08:00",
            }
            async with Subscriber(broker.port) as late:
                assert await late.wait(f"{ROOT}/ref") == ref
                assert all(retain for t, _, retain in late.messages if t == f"{ROOT}/ref")
            x.batch(x.order("A", Side.BUY, 10, 9500), x.order("B", Side.SELL, 10, 9500))
            x.batch(EndOfDay())  # the close moves the reference price and the band
            closed = x.engine.last_seq
            ref = await live.wait(f"{ROOT}/ref", lambda m: m["seq"] == closed)
            assert (ref["ref_price"], ref["band_low"], ref["band_high"]) == (9500, 8550, 10450)
            assert ref["band_low_yuan"] == "85.50" and ref["ts"] == x.engine.last_ts
            count = len(live.on(f"{ROOT}/ref"))
            x.batch(x.order("A", Side.BUY, 1, 9400))
            await live.wait(f"{ROOT}/book", lambda m: m["seq"] == x.engine.last_seq)
            assert len(live.on(f"{ROOT}/ref")) == count  # an order does not move the rules
            md.stop()
            await asyncio.wait_for(task, WAIT_S)
        assert_yuan_pairs(ref)

    asyncio.run(scenario())


def test_reference_data_republished_on_reconnect(broker: Mosquitto) -> None:
    async def scenario() -> None:
        x = Exchange()
        md = x.publisher(broker.port)
        task = asyncio.create_task(md.run())
        async with Subscriber(broker.port) as live:
            await live.wait(f"{ROOT}/ref")
        broker.stop()  # no persistence: the restarted broker has lost every retained message
        await until(lambda: not md.connected)
        broker.start()
        async with Subscriber(broker.port) as fresh:
            ref = await fresh.wait(f"{ROOT}/ref")
            assert ref["band_high"] == 11000
            status = await fresh.wait(f"{EXCHANGE}/status")
            assert status["state"] == "online" and status["instance"] == md.instance
        md.stop()
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


def test_exchange_status_online_then_closed_on_a_clean_stop(broker: Mosquitto) -> None:
    # After a stop the retained topics still said "continuous" and a new subscriber got
    # the last run's book as if it were live.
    async def scenario() -> None:
        ticks = itertools.count(T0, 1000)
        x = Exchange(clock=lambda: next(ticks))
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            online = await live.wait(f"{EXCHANGE}/status")
            assert online["state"] == "online" and online["instance"] == md.instance
            assert set(online) == {"state", "instance", "ts", "seq"} and online["ts"] > 0
            x.batch(x.order("A", Side.BUY, 10, 9900), x.order("B", Side.SELL, 3, 10100))
            await live.wait(f"{ROOT}/book", lambda m: m["seq"] == x.engine.last_seq)
            x.batch(x.order("C", Side.BUY, 1, 9800))  # pending when the stop comes: still published
            md.stop()
            await asyncio.wait_for(task, WAIT_S)
            last = x.engine.last_seq
            closed = await live.wait(f"{EXCHANGE}/status", lambda m: m["state"] == "closed")
            assert closed["instance"] == md.instance and closed["seq"] == last
            health = await live.wait(f"{EXCHANGE}/ops/health", lambda m: m["status"] == "offline")
            assert health["last_seq"] == last
        async with Subscriber(broker.port) as late:  # what a subscriber finds afterwards
            assert (await late.wait(f"{EXCHANGE}/status"))["state"] == "closed"
            status = await late.wait(f"{ROOT}/status")
            assert (status["phase"], status["halted"], status["seq"]) == ("closed", False, last)
            book = await late.wait(f"{ROOT}/book")
            assert book["phase"] == "closed" and book["seq"] == last
            assert book["bids"] == [level(9900, 10, 1), level(9800, 1, 1)] and book["asks"] == [level(10100, 3, 1)]
            assert (await late.wait(f"{ROOT}/stats"))["seq"] == last
            assert (await late.wait(f"{EXCHANGE}/ops/health"))["status"] == "offline"

    asyncio.run(scenario())


def test_a_second_publisher_on_the_same_root_publishes_nothing(broker: Mosquitto,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # Two exchanges under one root overwrote each other's topics.
    caplog.set_level(logging.WARNING, logger="etx.marketdata")

    async def scenario() -> None:
        first, second = Exchange(), Exchange()
        md1 = first.publisher(broker.port, health_interval_ms=50)
        md2 = second.publisher(broker.port, health_interval_ms=50)
        async with Subscriber(broker.port) as live:
            task1 = asyncio.create_task(md1.run())
            await live.wait(f"{EXCHANGE}/status")
            second.batch(second.order("A", Side.BUY, 77, 9123))
            task2 = asyncio.create_task(md2.run())
            await asyncio.wait_for(task2, WAIT_S)  # it gives up, without an exception
            assert md2.refused_by == md1.instance and not md2.connected
            first.batch(first.order("A", Side.BUY, 5, 9900))
            await live.wait(f"{ROOT}/book", lambda m: m["seq"] == first.engine.last_seq)
            statuses = live.on(f"{EXCHANGE}/status")
            assert {m["instance"] for m in statuses} == {md1.instance}
            assert not any(b"9123" in p for _, p, _ in live.messages)  # the second's book never went out
            md1.stop()
            await asyncio.wait_for(task1, WAIT_S)
        refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
        line = refusals[0].getMessage()
        assert f"instance {md1.instance}" in line and f"online under {EXCHANGE};" in line, line
        assert "publishes nothing" in line and "trading goes on" in line, line

    asyncio.run(scenario())


def test_an_online_status_nobody_keeps_alive_is_not_overwritten(broker: Mosquitto,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # A retained "online" that no will can ever turn "lost" (a persistent broker restarted
    # while that exchange was down) is believed for the keepalive grace and then still
    # not overwritten: the operator clears it, and the next start publishes.
    caplog.set_level(logging.WARNING, logger="etx.marketdata")

    async def scenario() -> None:
        stale = ExchangeStatusMsg("online", "0123456789abcdef", T0, 42)
        async with aiomqtt.Client("127.0.0.1", broker.port) as other:
            await other.publish(f"{EXCHANGE}/status", msgspec.json.encode(stale), qos=1, retain=True)
        x = Exchange()
        md = x.publisher(broker.port, keepalive_s=1)
        await asyncio.wait_for(md.run(), WAIT_S)
        assert md.refused_by == stale.instance
        async with aiomqtt.Client("127.0.0.1", broker.port) as operator:  # mosquitto_pub -r -n -t etx/v1/etx/status
            await operator.publish(f"{EXCHANGE}/status", b"", qos=1, retain=True)
        again = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(again.run())
            status = await live.wait(f"{EXCHANGE}/status", lambda m: m["state"] == "online")
            assert status["instance"] == again.instance
            again.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert any("waiting up to 2.5 s" in line for line in lines), lines
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 1, lines


def test_a_lost_instance_is_taken_over_at_once(broker: Mosquitto) -> None:
    # The status a crashed exchange leaves (its will) does not keep the next one out.
    async def scenario() -> None:
        gone = ExchangeStatusMsg("lost", "0123456789abcdef", T0, 42)
        async with aiomqtt.Client("127.0.0.1", broker.port) as other:
            await other.publish(f"{EXCHANGE}/status", msgspec.json.encode(gone), qos=1, retain=True)
        x = Exchange()
        md = x.publisher(broker.port)
        async with Subscriber(broker.port) as live:
            task = asyncio.create_task(md.run())
            status = await live.wait(f"{EXCHANGE}/status", lambda m: m["state"] == "online")
            assert status["instance"] == md.instance and md.refused_by is None
            md.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


DOCS = Path(__file__).resolve().parents[2] / "docs" / "marketdata.md"
DOC_TYPES: dict[str, Any] = {
    "book": BookMsg, "trades": list[TradeMsg], "blocks": list[BlockMsg], "stats": StatsMsg, "status": StatusMsg,
    "ref": RefMsg, "auction": AuctionMsg,
    "exchange_status": ExchangeStatusMsg, "alert": AlertMsg, "health": HealthMsg,
}


def assert_yuan_pairs(obj: Any) -> None:
    """Every integer price or value next to its yuan string says the same amount."""
    if isinstance(obj, list):
        for item in obj:
            assert_yuan_pairs(item)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if f"{key}_yuan" in obj:
                assert obj[f"{key}_yuan"] == (None if value is None else yuan(value)), (key, obj)
            assert_yuan_pairs(value)


def test_docs_examples_are_exact_payloads() -> None:
    blocks = re.findall(r"```json (\w+)\n(.*?)```", DOCS.read_text(), re.S)
    assert sorted({kind for kind, _ in blocks}) == sorted(DOC_TYPES)
    for kind, text in blocks:
        typed = msgspec.json.decode(text, type=DOC_TYPES[kind])  # every field present, right types
        untyped = msgspec.json.decode(text)
        # Re-encoding gives the same fields in the same order: nothing missing, nothing extra.
        assert msgspec.json.encode(typed) == msgspec.json.encode(untyped), kind
        assert_yuan_pairs(untyped)
    snippet = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(snippet) == 1
    compile("async def integration():\n" + textwrap.indent(snippet[0], "    "), str(DOCS), "exec")
    for name in ("probe", "run", "on_events", "alert", "stop"):
        assert f".{name}(" in snippet[0] and hasattr(MarketDataPublisher, name)

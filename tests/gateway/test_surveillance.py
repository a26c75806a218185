"""Each surveillance alert, provoked: over real TCP against a server with the exchange
core, the alerts collected where the operators get them (``Server.alert``, which also
feeds the watchers and the ops topic). The service-level ones (lockouts, settlement
lagging behind, a dropped session) through a real ``Service``; the journal refusing
writes is provoked in tests/crash/test_unwritable.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from engine import ALWAYS_OPEN, Instrument, Side
from engine.messages import Halt, Reason, Rejected, Resume
from gateway.client import Client, LogonError
from gateway.config import load
from gateway.protocol import AlertView, CodMode, Report
from gateway.serve import Service
from gateway.surveillance import Surveillance
from settlement import Exchange, Fees, Ledger
from tests.gateway.harness import ALLOWANCES, SYMBOL, Harness, make_exchange, run

Alerts = list[tuple[str, str, str, str]]


def watched(h: Harness, **kw: Any) -> Alerts:
    alerts: Alerts = []
    h.server.alert = lambda kind, text, instrument="", member="": alerts.append((kind, text, instrument, member))  # type: ignore[method-assign]
    surveillance = Surveillance(h.exchange, h.server.alert, repeat_s=0, **kw)
    h.server.on_batches.append(surveillance.on_batch)
    return alerts


def kinds(alerts: Alerts) -> list[str]:
    return [a[0] for a in alerts]


@run
async def test_a_trade_at_the_band_limit() -> None:
    async with Harness() as h:
        alerts = watched(h)
        m1, m2 = await h.client("M1", "t1"), await h.client("M2", "t2")
        m2.new_order(SYMBOL, Side.SELL, 5, 11_000)  # the upper limit of the +-10 % band around 100.00
        m1.new_order(SYMBOL, Side.BUY, 5, 11_000)
        await h.settle()
        (kind, text, instrument, member), = alerts
        assert (kind, instrument, member) == ("price-limit", SYMBOL, "M1")
        assert "110.00, the upper limit" in text and "buyer M1, seller M2" in text


@run
async def test_halts_and_resumes_with_who_and_why() -> None:
    async with Harness() as h:
        alerts = watched(h)
        op = await h.client("EXCH", "op")
        op.send(Halt(SYMBOL, False, "", "a fat finger"))
        op.send(Resume(SYMBOL, "", "corrected"))
        await h.settle()
        assert [(a[0], a[1]) for a in alerts] == [("halt", f"{SYMBOL} halted by EXCH/op: a fat finger"),
                                                  ("resume", f"{SYMBOL} resumed by EXCH/op")]


@run
async def test_self_trade_prevention_is_an_attempted_wash_trade() -> None:
    async with Harness() as h:
        alerts = watched(h)
        m1 = await h.client("M1", "t1")
        m1.new_order(SYMBOL, Side.SELL, 5, 10_000)
        m1.new_order(SYMBOL, Side.BUY, 5, 10_000)  # meets its own order: cancel resting (the default)
        await h.settle()
        (kind, text, instrument, member), = alerts
        assert (kind, instrument, member) == ("self-trade", SYMBOL, "M1") and "(5 t)" in text


@run
async def test_a_holding_reaching_the_large_holder_threshold() -> None:
    async with Harness() as h:
        alerts = watched(h, large_holder={SYMBOL: ALLOWANCES + 100})
        m1, m2 = await h.client("M1", "t1"), await h.client("M2", "t2")
        for qty in (60, 60, 60):  # the second crosses the threshold; once a day per holder
            m2.new_order(SYMBOL, Side.SELL, qty, 10_000)
            m1.new_order(SYMBOL, Side.BUY, qty, 10_000)
            await h.settle()  # a batch each: the holding is read after its batch
        (kind, text, instrument, member), = alerts
        assert (kind, instrument, member) == ("large-holder", SYMBOL, "M1")
        assert f"{ALLOWANCES + 120:,} t" in text and f"{ALLOWANCES + 100:,} t" in text


@run
async def test_an_order_refused_by_the_position_limit() -> None:
    exchange = Exchange([Instrument(symbol=SYMBOL, ref_price=10_000, position_max=ALLOWANCES + 50)], Ledger(Fees()),
                        schedule=ALWAYS_OPEN)
    funded = make_exchange()  # the same accounts, funded, moved into this exchange's ledger
    exchange.ledger.restore(funded.ledger.snapshot())
    async with Harness(exchange=exchange) as h:
        alerts = watched(h)
        m1 = await h.client("M1", "t1")
        m1.new_order(SYMBOL, Side.BUY, 60, 9_900)  # holds 50,000 t: 50,060 > 50,050
        rej = await m1.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Rejected))
        assert rej.body.reason == Reason.POSITION_LIMIT
        await h.settle()
        (kind, text, instrument, member), = alerts
        assert (kind, instrument, member) == ("position-limit", SYMBOL, "M1") and rej.body.text in text


@run
async def test_a_members_cancel_to_trade_ratio() -> None:
    async with Harness() as h:
        alerts = watched(h, cancel_ratio_max=2, cancel_ratio_min=5)
        m1 = await h.client("M1", "t1")
        for i in range(12):
            m1.new_order(SYMBOL, Side.BUY, 1, 9_000 + i)
        await h.settle()
        for order in await m1.query_orders():
            m1.cancel(order.order_id)
        await h.settle()
        # At 5 cancels and no trade: the first alert; again at 10 (doubled).
        assert [(a[0], a[3]) for a in alerts] == [("cancel-ratio", "M1"), ("cancel-ratio", "M1")]
        assert "cancelled 5 orders today against 0 trades" in alerts[0][1]


def test_service_alerts_lockouts_dropped_sessions_and_settlement_lag(tmp_path: Path) -> None:
    """Through a real Service, seen by a watching operator: a lockout, a session
    dropped by its heartbeat timeout, and settlement held up behind a locked store."""
    from benchmarks.crash_soak import SECRET, write_config

    text = write_config(tmp_path, 0).read_text() + "\n[surveillance]\nsettlement_lag_max = 5\n"
    text = text.replace("[fees]", "[session]\nheartbeat_ms = 200\n\n[fees]")
    (tmp_path / "etx.toml").write_text(text)
    cfg = load(tmp_path / "etx.toml")

    async def main() -> None:
        service = Service(cfg, tmp_path / "data", market_data=False)
        await service.start("127.0.0.1", 0)
        port = service.address[1]
        try:
            op = Client("127.0.0.1", port, "EXCH", "ops", SECRET, cod=CodMode.OFF)
            await op.connect()
            op.watch(1, 100)
            for _ in range(5):
                try:
                    await Client("127.0.0.1", port, "M1", "tM1", "wrong").connect()
                except LogonError:
                    pass
            alert = await op.wait_for(lambda m: isinstance(m, AlertView) and m.kind == "lockout", 10)
            assert "M1/tM1" in alert.text and "127.0.0.1" in alert.text
            silent = Client("127.0.0.1", port, "M2", "tM2", SECRET, cod=CodMode.OFF, heartbeat_ms=200)
            await silent.connect()
            for task in silent._tasks:
                task.cancel()  # it stops sending heartbeats (and reading): the exchange drops it
            alert = await op.wait_for(lambda m: isinstance(m, AlertView) and m.kind == "session-dropped", 10)
            assert "M2/tM2" in alert.text and "timed out" in alert.text and alert.member == "M2"
            # Settlement held up: another process holds the store's write lock.
            blocker = sqlite3.connect(tmp_path / "data" / "registry.sqlite", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                clerk = Client("127.0.0.1", port, "EXCH", "clerk", SECRET, cod=CodMode.OFF)
                await clerk.connect()
                from settlement import OpenAccount
                from settlement.messages import HolderType

                for i in range(20):
                    clerk.send(OpenAccount("", f"X{i}", int(HolderType.INSTITUTION), "x"))
                await clerk.query_instruments()
                alert = await op.wait_for(lambda m: isinstance(m, AlertView) and m.kind == "settlement-lag", 20)
                assert "commands behind the core (more than 5)" in alert.text
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            alert = await op.wait_for(lambda m: isinstance(m, AlertView) and m.kind == "settlement-lag", 60)
            assert "caught up" in alert.text
            await clerk.close()
            await op.close()
            await silent.close()
        finally:
            await service.stop()

    asyncio.run(asyncio.wait_for(main(), 180))

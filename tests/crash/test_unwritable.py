"""An unwritable journal in the running exchange (``gateway.serve.Service`` over real
TCP): orders are refused with JOURNAL_UNAVAILABLE and operators alerted while the disk
refuses, trading resumes by itself once it writes again, and a restart shows that
nothing refused was entered and nothing accepted was lost. The full disk is the
kernel's ENOSPC from /dev/full, duplicated onto the journal's descriptor.

Nothing here depends on timing: the schedule ticks are off, so the journal is idle
when its descriptor is swapped (a tick being synced at that moment would fail with
the swap's EINVAL instead of ENOSPC); the operator is alerted before any submitter
hears of the failure; and the test waits for the "available again" line itself,
which the committer writes once it takes submissions again."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.crash_soak import SECRET, SYMBOL, TRADERS, write_config
from engine.messages import Accepted, Rejected, Side
from gateway.client import Client
from gateway.config import load
from gateway.protocol import CodMode, GatewayReason, Report
from gateway.serve import Service
from settlement.messages import Allocate, Deposit, HolderType, OpenAccount


async def outcome(c: Client, coid: str) -> Any:
    msg = await c.wait_for(lambda m: type(m) is Report and getattr(m.body, "coid", None) == coid, 10)
    return msg.body


async def start(cfg: Any, data: Path) -> Service:
    service = Service(cfg, data, market_data=False)
    service.server.tick_s = 0  # nothing journaled but what the test sends (see the docstring)
    await service.start("127.0.0.1", 0)
    return service


def run_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture, check_outbound: bool) -> None:
    caplog.set_level(logging.INFO)
    cfg = load(write_config(tmp_path, 0))
    data = tmp_path / "data"

    async def main() -> None:
        service = await start(cfg, data)
        port = service.address[1]
        staff = [Client("127.0.0.1", port, "EXCH", u, SECRET, cod=CodMode.OFF) for u in ("clerk", "auth")]
        trader = Client("127.0.0.1", port, TRADERS[0], f"t{TRADERS[0]}", SECRET, cod=CodMode.OFF)
        for c in [*staff, trader]:
            await c.connect()
        staff[0].send(OpenAccount("", TRADERS[0], int(HolderType.COMPLIANCE), "x"))
        staff[0].send(Deposit("", TRADERS[0], 10**9))
        await staff[0].query_instruments()
        staff[1].send(Allocate("", "AUTHORITY", TRADERS[0], SYMBOL, 1000))
        await staff[1].query_instruments()

        first = await outcome(trader, trader.new_order(SYMBOL, Side.BUY, 10, 9_990))
        assert type(first) is Accepted
        alerts: list[tuple[str, str]] = []
        service.server.alerts.append(lambda kind, text: alerts.append((kind, text)))
        journal = service.recovery.journal
        saved = os.dup(journal._fd)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, journal._fd)
        os.close(full)
        try:
            refused = [await outcome(trader, trader.new_order(SYMBOL, Side.SELL, 5, 10_050)) for _ in range(3)]
            for body in refused:
                assert type(body) is Rejected and body.reason == GatewayReason.JOURNAL_UNAVAILABLE, body
                assert "journal" in body.text
            assert not service.committer.available
            assert any("journal unavailable" in r.getMessage() and "ENOSPC" in r.getMessage() for r in caplog.records)
        finally:
            os.dup2(saved, journal._fd)
            os.close(saved)
        for _ in range(400):
            if any("journal available again" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        assert any("journal available again" in r.getMessage() for r in caplog.records)
        assert service.committer.available
        await asyncio.sleep(0.1)  # the alerts come from the journal's thread through the loop
        kinds = [(k, t.split(":")[0]) for k, t in alerts]
        assert kinds == [("journal", "the journal refuses writes, so every order is refused"),
                         ("journal", "the journal writes again")], alerts
        last = await outcome(trader, trader.new_order(SYMBOL, Side.BUY, 7, 9_980))
        assert type(last) is Accepted
        seen = trader.last_seq
        for c in [*staff, trader]:
            await c.close()
        await service.stop()

        # A restart: the accepted orders are there, the refused ones never were.
        service = await start(cfg, data)
        try:
            assert set(service.exchange.engine.orders) == {first.order_id, last.order_id}
            if check_outbound:
                again = Client("127.0.0.1", service.address[1], TRADERS[0], f"t{TRADERS[0]}", SECRET,
                               cod=CodMode.OFF, last_seq=seen)
                await again.connect()
                await again.query_instruments()
                assert not again.anomalies
                await again.close()
        finally:
            await service.stop()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_disk_full_refuses_alerts_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_outage(tmp_path, caplog, check_outbound=False)


def test_outbound_sequence_survives_refusals_and_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A JOURNAL_UNAVAILABLE rejection is not journaled, so it must not take a place in
    the member's outbound sequence: after a restart the rebuilt history must be what
    the member saw, and its logon with its last seq must be accepted."""
    run_outage(tmp_path, caplog, check_outbound=True)

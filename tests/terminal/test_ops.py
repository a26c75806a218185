"""``etx ops`` against a real ``etx serve``: every operator action and view, as the
operator's own session (credentials from an owner-only file), each answered by the
exchange and journaled with the operator's name and reason."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import Side
from engine.messages import Cancelled, CancelReason, MemberStatus, Reason, Rejected
from gateway.client import Client, LogonError
from gateway.protocol import GatewayReason, Report, SessionClosed
from settlement import Allocate, Deposit, OpenAccount
from settlement.messages import HolderType
from tests.integration.exchange import ROOT, Exchange, staff_command

SYMBOL = "CEA24"


def ops(ex: Exchange, *argv: str, user: str = "ops") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", "ops", "--data", str(ex.data), "--credentials",
                           str(ex.creds[user]), *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


def done(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def funded(ex: Exchange) -> None:
    clerk, auth = ex.client("EXCH", "clerk"), ex.client("EXCH", "auth")
    await clerk.connect()
    await auth.connect()
    for m in ("M1", "M2"):
        await staff_command(clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), m))
        await staff_command(clerk, Deposit("", m, 10**10))
        await staff_command(auth, Allocate("", "AUTHORITY", m, SYMBOL, 10**5))
    await clerk.close()
    await auth.close()


async def next_body(client: Any, kind: type) -> Any:
    rep = await client.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, kind), 20)
    return rep.body


def test_every_operator_action(tmp_path: Path) -> None:
    async def main() -> None:
        ex = Exchange(tmp_path)
        await ex.start()
        try:
            await funded(ex)
            m1 = ex.client("M1")
            await m1.connect()
            # halt and resume
            assert done(ops(ex, "halt", SYMBOL, "--reason", "test halt")) == "done: halt\n"
            m1.new_order(SYMBOL, Side.BUY, 1, 10_000)
            assert (await next_body(m1, Rejected)).reason == Reason.INSTRUMENT_HALTED
            refused = ops(ex, "halt", SYMBOL, "--reason", "again")
            assert refused.returncode == 1 and "ALREADY_HALTED" in refused.stderr, refused.stderr
            done(ops(ex, "resume", SYMBOL, "--reason", "all clear"))
            # cancel one order, then all of a member's
            for i in range(3):
                m1.new_order(SYMBOL, Side.BUY, 2, 9_900 - i)
            await m1.query_instruments()
            orders = sorted(o.order_id for o in await m1.query_orders())
            assert len(orders) == 3
            listed = done(ops(ex, "orders", "--member", "M1"))
            assert all(str(i) in listed for i in orders) and "M1" in listed
            top = done(ops(ex, "orders", "--instrument", SYMBOL, "--levels", "1"))
            assert [int(line.split()[0]) for line in top.splitlines()[1:]] == [orders[0]], top
            unnamed = ops(ex, "orders")
            assert unnamed.returncode == 2 and "--member" in unnamed.stderr, unnamed.stderr
            done(ops(ex, "cancel", str(orders[0]), "--member", "M1", "--reason", "the member asked"))
            assert (await next_body(m1, Cancelled)).order_id == orders[0]
            wrong = ops(ex, "cancel", str(orders[1]), "--member", "M2", "--reason", "wrong member")
            assert wrong.returncode == 1 and "UNKNOWN_ORDER" in wrong.stderr, wrong.stderr
            done(ops(ex, "cancel-all", "M1", "--reason", "end of the test"))
            for _ in range(2):
                assert (await next_body(m1, Cancelled)).reason == CancelReason.MASS_CANCEL
            # suspend and reinstate a member's trading
            m1.new_order(SYMBOL, Side.BUY, 2, 9_800)
            await m1.query_instruments()
            done(ops(ex, "suspend", "M1", "--cancel-orders", "--reason", "unpaid fees"))
            assert (await next_body(m1, MemberStatus)).suspended
            m1.new_order(SYMBOL, Side.BUY, 1, 9_800)
            assert (await next_body(m1, Rejected)).reason == Reason.MEMBER_SUSPENDED
            assert await m1.query_orders() == []
            done(ops(ex, "reinstate", "M1", "--reason", "paid"))
            assert not (await next_body(m1, MemberStatus)).suspended
            # unlock a user locked out by bad guesses
            for _ in range(5):
                with pytest.raises(LogonError):
                    await Client("127.0.0.1", ex.port, "M2", "tM2", "wrong").connect()
            with pytest.raises(LogonError) as locked:
                await ex.client("M2").connect()
            assert locked.value.reason == GatewayReason.LOCKED
            alerts = done(ops(ex, "alerts"))
            assert "lockout" in alerts and "M2/tM2" in alerts, alerts
            assert "1 lockouts lifted" in done(ops(ex, "unlock", "M2/tM2", "--reason", "the member called"))
            m2 = ex.client("M2")
            await m2.connect()
            # views, and disconnecting a session
            sessions = done(ops(ex, "sessions"))
            line = next(line for line in sessions.splitlines() if " M2 " in f" {line} ")
            session_id = line.split()[0]
            assert "health" not in sessions and "seq" in done(ops(ex, "health"))
            done(ops(ex, "disconnect", session_id, "--reason", "misbehaving"))
            closed = await m2.wait_for(lambda m: isinstance(m, SessionClosed), 20)
            assert closed.reason == GatewayReason.DISCONNECTED and "misbehaving" in closed.text
            # the end of the day
            done(ops(ex, "end-of-day", "--reason", "15:00"))
            await m1.close()
        finally:
            assert ex.stop() == 0
        journal = subprocess.run([sys.executable, "-m", "tools.cli", "journal", "inspect", str(ex.data)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60).stdout
        for reason in ("test halt", "all clear", "the member asked", "end of the test", "unpaid fees", "paid",
                       "the member called", "misbehaving", "15:00"):
            assert reason in journal, reason
        assert journal.count("EXCH/ops") >= 9

    asyncio.run(main())


def test_operator_commands_need_an_operator_and_a_reason(tmp_path: Path) -> None:
    async def main() -> None:
        ex = Exchange(tmp_path)
        await ex.start()
        try:
            no_reason = ops(ex, "halt", SYMBOL)
            assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
            blank = ops(ex, "halt", SYMBOL, "--reason", "  ")
            assert blank.returncode == 2 and "say why" in blank.stderr
            clerk = ops(ex, "halt", SYMBOL, "--reason", "x", user="clerk")
            assert clerk.returncode == 1 and "NOT_PERMITTED" in clerk.stderr, clerk.stderr
            elsewhere = subprocess.run([sys.executable, "-m", "tools.cli", "ops", "--data", str(tmp_path / "nowhere"),
                                        "--credentials", str(ex.creds["ops"]), "sessions"], cwd=ROOT,
                                       capture_output=True, text=True, timeout=60)
            assert elsewhere.returncode == 2 and "no exchange is running" in elsewhere.stderr
        finally:
            assert ex.stop() == 0

    asyncio.run(main())

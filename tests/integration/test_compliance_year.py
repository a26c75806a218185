"""A compliance year end to end on a real ``etx serve`` over TCP, with a SQLite and a
PostgreSQL registry (issue 14): entities in four industries pre-allocated by benchmark,
listing trading, two block trades, an auction of the authority's own allowances,
verification submitted by a verifier and approved by the authority (the true-up),
surrender, the deadline with one entity short (its penalty at a multiple of the
cycle's average price) and one over its banking cap, and the next year's allocation
reduced by the shortfall; then the registry's audit is clean, a replay of the journal
gives the same state hash, and ``etx registry compliance`` reports the year."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest

from engine.messages import AuctionAnnounce, AuctionBid, AuctionResult, BlockOffered, BlockTraded, EndOfDay, Side
from gateway.client import QueryError
from gateway.protocol import Fill, Report
from settlement import (
    ApproveVerification,
    CloseCompliance,
    Deposit,
    HolderType,
    OpenAccount,
    PreAllocate,
    RegistryDone,
    SubmitVerification,
    Surrender,
)
from tests.gateway.harness import body_of
from tests.integration.exchange import Exchange, run, staff_command

COMPLIANCE = """
[compliance]
industries = ["power", "cement", "steel", "aluminium"]
penalty_multiple = 3
[[compliance.benchmark]]
industry = "power"
year = 2024
intensity = 0.8
[[compliance.benchmark]]
industry = "cement"
year = 2024
intensity = 0.5
[[compliance.benchmark]]
industry = "steel"
year = 2024
intensity = 1.6
factors = [0.9375]
[[compliance.benchmark]]
industry = "aluminium"
year = 2024
intensity = 2
[[compliance.benchmark]]
industry = "cement"
year = 2025
intensity = 0.5
"""
# entity: industry, output, verified emissions. Entitlements: M1 800,000 t, M2 200,000 t,
# M3 450,000 t (300,000 x 1.6 x 0.9375), M4 200,000 t; 70 % of each pre-allocated.
ENTITIES = {"M1": ("power", 1_000_000, 650_000), "M2": ("cement", 400_000, 500_000),
            "M3": ("steel", 300_000, 250_000), "M4": ("aluminium", 100_000, 300_000)}


def test_a_compliance_year_over_tcp(tmp_path: Path, store_url: str) -> None:
    async def main() -> None:
        ex = Exchange(tmp_path, registry=store_url, extra=COMPLIANCE, staff={"ver": "verifier"})
        await ex.start()
        clerk, auth, ver, ops = (ex.client("EXCH", u) for u in ("clerk", "auth", "ver", "ops"))
        members = {m: ex.client(m) for m in ENTITIES}
        for c in (clerk, auth, ver, ops, *members.values()):
            await c.connect()

        async def ok(who: Any, cmd: Any) -> RegistryDone:
            answer = await staff_command(who, cmd)
            assert type(answer) is RegistryDone, answer
            return answer

        for m, (industry, output, _) in ENTITIES.items():
            await ok(clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), f"{m} {industry}"))
            await ok(clerk, Deposit("", m, 5_000_000_000))
            await ok(auth, PreAllocate("", "AUTHORITY", m, 2024, industry, output))
        balances = {b.asset: b for b in (await members["M1"].query_balances()).balances}
        assert balances["CEA24"].balance == 560_000

        # Listing trading: M1 sells 20,000 t to M2.
        m1, m2, m3, m4 = members.values()
        m1.new_order("CEA24", Side.SELL, 20_000, 10_000)
        m2.new_order("CEA24", Side.BUY, 20_000, 10_000)
        await body_of(m2, Fill)
        # Two block trades: M3 to anyone (M4 takes it), M1 to M2 by name.
        m3.block_offer("CEA24", Side.SELL, 150_000, 10_100)
        offer = await body_of(m3, BlockOffered)
        m4.block_accept(offer.offer_id, 150_000)
        await body_of(m4, BlockTraded)
        m1.block_offer("CEA24", Side.SELL, 100_000, 9_900, counterparty="M2")
        offer = await body_of(m1, BlockOffered)
        m2.block_accept(offer.offer_id, 100_000)
        await body_of(m2, BlockTraded)
        # The authority's own allowances sold by auction: issued into its account first.
        from settlement import Allocate

        await ok(auth, Allocate("", "AUTHORITY", "AUTHORITY", "CEA24", 200_000))
        now = time.time_ns()
        ops.send(AuctionAnnounce("AUTHORITY", "CEA24", 200_000, 9_500, now, now + 4_000_000_000))
        announced = await m2.wait_for(lambda r: type(getattr(r, "body", None)).__name__ == "AuctionAnnounced")
        auction = announced.body.auction_id
        m2.send(AuctionBid("M2", "bid-m2", auction, 120_000, 10_200))
        m4.send(AuctionBid("M4", "bid-m4", auction, 100_000, 10_000))
        result = await body_of(m2, AuctionResult, timeout=15)
        assert (result.qty_sold, result.clearing_price) == (200_000, 10_000)  # M4's bid is the marginal one
        ops.send(EndOfDay())  # what was bought today becomes free to surrender
        await ops.wait_for(lambda r: isinstance(r, Report) and type(r.body).__name__ == "DayClosed", 10)

        # Verification: the verifier submits, the authority approves (the true-up).
        for m, (_, output, emissions) in ENTITIES.items():
            await ok(ver, SubmitVerification("", m, 2024, output, emissions))
            await ok(auth, ApproveVerification("", "AUTHORITY", m, 2024))
        holdings = {m: {b.asset: b.balance for b in (await c.query_balances()).balances}["CEA24"]
                    for m, c in members.items()}
        # M1 800,000 - 120,000 sold; M2 200,000 + 240,000 bought; M3 450,000 - 150,000;
        # M4 200,000 + 230,000 bought.
        assert holdings == {"M1": 680_000, "M2": 440_000, "M3": 300_000, "M4": 430_000}
        for m, (_, _, emissions) in ENTITIES.items():
            await ok(clerk, Surrender("", m, "CEA24", min(emissions, holdings[m]), 2024))
        # The deadline of 2024 (2025-12-31) has passed on the exchange's clock.
        closed = await ok(auth, CloseCompliance("", "AUTHORITY", 2024))
        assert "60000 t short" in closed.text, closed.text
        # 2025: M2's pre-allocation is 70 % of 200,000 t less its 60,000 t shortfall
        # (through the command line, as the authority's staff would).
        done = ex.registry("auth", "preallocate", "M2", "2025", "cement", "400000")
        assert done.returncode == 0 and "pre-allocate 80000 t CEA25" in done.stdout, done.stdout + done.stderr
        refused = ex.registry("ver", "approve", "M2", "2025")  # a verifier may not approve
        assert refused.returncode == 1 and "may not" in refused.stderr, refused.stdout + refused.stderr
        balances = {b.asset: b for b in (await m2.query_balances()).balances}
        assert balances["CEA25"].balance == 80_000
        # A member sees its own compliance year through the gateway; staff see all.
        mine = (await m2.query_compliance(2024)).rows
        assert [(r.account, r.shortfall, r.closed) for r in mine] == [("M2", 60_000, True)]
        with pytest.raises(QueryError, match="your own member only"):
            await m2.query_compliance(2024, "M1")
        assert [r.account for r in (await auth.query_compliance(2024)).rows] == list(ENTITIES)
        for c in (clerk, auth, ver, ops, *members.values()):
            await c.close()
        assert ex.stop() == 0

        report = ex.etx("registry", "--data", str(ex.data), "compliance", "2024", "--csv")
        assert report.returncode == 0, report.stdout + report.stderr
        rows = {r["entity"]: r for r in csv.DictReader(io.StringIO(report.stdout))}
        # The cycle's average price: (20,000 x 100.00 + 150,000 x 101.00 + 100,000 x 99.00
        # + 200,000 x 100.00) / 470,000 t = 100.10 yuan (rounded down to the fen); the
        # penalty is 3 times it per missing tonne.
        assert (rows["M2"]["shortfall"], rows["M2"]["penalty_cny"]) == ("60000", "18018000.00")
        assert rows["M2"]["status"] == "closed" and rows["M1"]["shortfall"] == "0"
        # M4 carries 130,000 t having bought 230,000 t net: its cap is 10,000 t.
        assert rows["M4"]["expired"] == "120000"
        assert rows["industry cement"]["shortfall"] == "60000" and rows["all"]["allocated"] == "1650000"
        table = ex.etx("registry", "--data", str(ex.data), "compliance", "2024")
        assert "industry aluminium" in table.stdout and "PENALTY_CNY" in table.stdout, table.stdout

        audit = ex.etx("registry", "--data", str(ex.data), "audit")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        verify = ex.etx("journal", "verify", str(ex.data), "--config", str(ex.config))
        assert verify.returncode == 0 and "state hash matches the replay" in verify.stdout, verify.stdout + verify.stderr

    run(main())

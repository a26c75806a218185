"""Block trades on a real ``etx serve`` (journal, settlement into SQLite): two block
trades between members, settled with fees; after a restart the open offer is still
there (snapshot and journal); the registry's audit is clean and a replay of the journal
gives the same state hash."""

from __future__ import annotations

from pathlib import Path

from engine.messages import BlockOffered, BlockTraded, Side
from tests.gateway.harness import body_of
from tests.integration.exchange import Exchange, run

SYMBOL = "CEA24"


def test_block_trades_settle_survive_a_restart_and_replay_to_the_same_state(tmp_path: Path) -> None:
    async def main() -> None:
        ex = Exchange(tmp_path)
        await ex.start()
        await ex.fund(("M1", "M2"), 5_000_000_000, 400_000)
        m1, m2 = ex.client("M1"), ex.client("M2")
        await m1.connect()
        await m2.connect()
        m1.block_offer(SYMBOL, Side.SELL, 200_000, 10_200, partial=True)
        offer = await body_of(m1, BlockOffered)
        m2.block_accept(offer.offer_id, 100_000)
        first = await body_of(m2, BlockTraded)
        m2.block_offer(SYMBOL, Side.BUY, 100_000, 9_800, counterparty="M1")
        second_offer = await body_of(m2, BlockOffered)
        m1.block_accept(second_offer.offer_id, 100_000)
        second = await body_of(m1, BlockTraded)
        assert (first.buyer, second.buyer) == ("M2", "M2")
        await m1.close()
        await m2.close()
        assert ex.stop() == 0

        await ex.start()  # the rest of the first offer is still open after the restart
        m2 = ex.client("M2")
        await m2.connect()
        offers = (await m2.query_block_offers()).offers
        assert [(o.offer_id, o.qty) for o in offers] == [(offer.offer_id, 100_000)]
        await m2.close()
        assert ex.stop() == 0

        audit = ex.etx("registry", "--data", str(ex.data), "audit")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        verify = ex.etx("journal", "verify", str(ex.data), "--config", str(ex.config))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        balances = ex.etx("registry", "--data", str(ex.data), "balances", "M2")
        row = next(line.split() for line in balances.stdout.splitlines() if SYMBOL in line)
        assert row[2] == "600000", balances.stdout  # 400,000 allocated + two blocks of 100,000
        # The snapshot taken at the stop holds the open offer; replaying the journal
        # (block offers, acceptances and their settlement included) gives its state hash.
        assert "state hash matches the replay" in verify.stdout and verify.stdout.rstrip().endswith("verified"), \
            verify.stdout

    run(main())


def test_an_auction_clears_by_the_exchanges_clock_and_replays_to_the_same_state(tmp_path: Path) -> None:
    """A member's auction on a real ``etx serve``: announced by the operator, two bids, the
    window closed by the exchange's own ticks; settled into SQLite, audit clean, and the
    journal's replay gives the snapshot's state hash."""
    import time

    from engine.messages import AuctionAnnounce, AuctionFill, AuctionResult

    async def main() -> None:
        ex = Exchange(tmp_path)
        await ex.start()
        await ex.fund(("M1", "M2", "M3"), 5_000_000_000, 150_000)
        ops = ex.client("EXCH", "ops")
        m1, m2 = ex.client("M1"), ex.client("M2")
        for c in (ops, m1, m2):
            await c.connect()
        now = time.time_ns()
        ops.send(AuctionAnnounce("M3", SYMBOL, 120_000, 9_600, now, now + 4_000_000_000))
        announced = await m1.wait_for(lambda m: type(getattr(m, "body", None)).__name__ == "AuctionAnnounced")
        auction = announced.body.auction_id
        m1.bid(auction, 100_000, 10_300)
        m2.bid(auction, 50_000, 10_000)
        fill = await body_of(m2, AuctionFill, timeout=15)  # the exchange's clock closes the window
        result = await body_of(m1, AuctionResult)
        assert (fill.qty, fill.price, result.qty_sold, result.clearing_price) == (20_000, 10_000, 120_000, 10_000)
        for c in (ops, m1, m2):
            await c.close()
        assert ex.stop() == 0
        audit = ex.etx("registry", "--data", str(ex.data), "audit")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        verify = ex.etx("journal", "verify", str(ex.data), "--config", str(ex.config))
        assert verify.returncode == 0 and "state hash matches the replay" in verify.stdout, verify.stdout + verify.stderr

    run(main())

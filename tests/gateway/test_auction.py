"""An auction through the gateway over TCP: an operator announces a member's auction
(every member is told), other members bid (each told of its own bid only; a query lists the terms, never the
bids), the exchange's clock closes the window, the winners get their fills, everyone the
result naming no bidder, and the registry's ledger has settled it."""

from __future__ import annotations

import asyncio
import time

from engine.messages import AuctionAnnounce, AuctionAnnounced, AuctionFill, AuctionResult, BidPlaced, Reason, Rejected
from gateway.protocol import GatewayReason, Report
from settlement import Fees
from tests.gateway.harness import SYMBOL, Harness, body_of, make_exchange, run


def exchange() -> object:
    return make_exchange(cash=30_000_000_000, allowances=200_000, fees=Fees(trading_ppm=300, settlement_ppm=50))


@run
async def test_an_auction_announced_bid_cleared_and_settled() -> None:
    async with Harness(exchange=exchange()) as h:  # type: ignore[arg-type]
        h.server.tick_s = 0.1  # the exchange's clock closes the window
        op = await h.client("EXCH", "op")
        m1, m2, m3 = await h.client("M1", "t1"), await h.client("M2", "t2"), await h.client("M3", "t3")
        now = time.time_ns()
        end = now + 4_000_000_000  # room for a loaded machine to take every bid inside the window
        op.send(AuctionAnnounce("M3", SYMBOL, 200_000, 9_500, now, end))  # M3 sells 200,000 t
        announced = await body_of(m2, AuctionAnnounced)  # to every member
        assert (announced.seller, announced.qty, announced.floor, announced.ceiling) == ("M3", 200_000, 9_500, 11_000)
        auction = announced.auction_id
        assert [a.auction_id for a in (await m3.query_auctions()).auctions] == [auction]

        m1.bid(auction, 150_000, 10_400)
        m2.bid(auction, 100_000, 10_100)
        first = await body_of(m1, BidPlaced)
        second = await body_of(m2, BidPlaced)
        m3.bid(auction, 10_000, 10_000)  # the seller
        assert (await body_of(m3, Rejected)).reason == Reason.SELLER_CANNOT_BID
        m2.bid(auction, 10_000, 11_100)  # above the ceiling
        assert (await body_of(m2, Rejected)).reason == Reason.BID_PRICE_OUT_OF_RANGE
        m2.amend_bid(auction, first.bid_id, 1, 10_100)  # not its bid: to M2 there is no such bid
        assert (await body_of(m2, Rejected)).reason == Reason.UNKNOWN_BID
        op.send(AuctionAnnounce("M3", SYMBOL, 100_000, 8_000, now, end))  # a floor below the previous close -10 %
        assert (await body_of(op, Rejected)).reason == Reason.INVALID_FIELD
        m1.send(AuctionAnnounce("M1", SYMBOL, 100_000, 9_500, now, end))  # a member may not announce
        refused = await m1.wait_for(lambda m: isinstance(m, Report) and m.seq_out == 0)
        assert refused.body.reason == GatewayReason.NOT_PERMITTED

        fill1 = await body_of(m1, AuctionFill, timeout=10)
        fill2 = await body_of(m2, AuctionFill, timeout=10)
        assert (fill1.qty, fill1.price, fill2.qty, fill2.price) == (150_000, 10_100, 50_000, 10_100)  # uniform
        assert fill1.bid_id == first.bid_id and fill2.bid_id == second.bid_id
        result = await body_of(m3, AuctionResult)  # everyone, though it did not win
        assert (result.clearing_price, result.qty_sold, result.bids, result.winners) == (10_100, 200_000, 2, 2)
        await m1.query_instruments()
        balances = {(b.account, b.asset): b for b in (await m1.query_balances()).balances}
        notional = 150_000 * 10_100
        fees = notional * 300 // 1_000_000 + notional * 50 // 1_000_000
        assert balances[("M1", "CNY")].balance == 30_000_000_000 - notional - fees
        assert balances[("M1", "CNY")].held == 0 and balances[("M1", SYMBOL)].balance == 200_000 + 150_000
        seller = {(b.account, b.asset): b for b in (await m3.query_balances()).balances}
        assert ("M3", SYMBOL) not in seller or seller[("M3", SYMBOL)].balance == 0  # all 200,000 t sold
        assert seller[("M3", "CNY")].balance > 30_000_000_000  # paid, less its fees
        assert (await m3.query_auctions()).auctions == []
        await asyncio.sleep(0)
        h.check()

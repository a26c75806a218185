"""Block agreement trading through the gateway over TCP: a member posts an offer, another
finds it with a query (the offerer unnamed) and accepts it; both get the trade, the
registry's ledger settles it with fees; retransmissions get the original outcome; an
offer naming a counterparty is invisible to the others; a withdrawal releases the hold."""

from __future__ import annotations

from engine.messages import BlockOffered, BlockTraded, BlockWithdrawn, Reason, Rejected, Side
from gateway.protocol import Report, Resent
from settlement import Fees
from tests.gateway.harness import SYMBOL, Harness, body_of, make_exchange, run

CASH = 30_000_000_000  # fen: CNY 300 million
ALLOWANCES = 500_000


def exchange() -> object:
    return make_exchange(cash=CASH, allowances=ALLOWANCES, fees=Fees(trading_ppm=300, settlement_ppm=50))


@run
async def test_an_offer_found_accepted_and_settled() -> None:
    async with Harness(exchange=exchange()) as h:  # type: ignore[arg-type]
        seller, buyer, other = await h.client("M1", "t1"), await h.client("M2", "t2"), await h.client("M3", "t3")
        coid = seller.block_offer(SYMBOL, Side.SELL, 150_000, 10_500, partial=True)
        offered = await body_of(seller, BlockOffered)
        assert (offered.coid, offered.qty, offered.price, offered.partial) == (coid, 150_000, 10_500, True)
        assert h.exchange.ledger.held.get(("M1", SYMBOL)) == 150_000  # type: ignore[attr-defined]

        seen = (await buyer.query_block_offers()).offers
        assert [(o.offer_id, o.member, o.qty, o.price, o.partial, o.named) for o in seen] == [
            (offered.offer_id, "", 150_000, 10_500, True, False)]  # the offerer is not named to others
        assert (await seller.query_block_offers()).offers[0].member == "M1"  # its own

        accept = buyer.block_accept(offered.offer_id, 100_000)
        traded = await body_of(buyer, BlockTraded)
        assert (traded.buyer, traded.seller, traded.qty, traded.left, traded.coid) == ("M2", "M1", 100_000, 50_000, accept)
        assert (await body_of(seller, BlockTraded)).trade_id == traded.trade_id  # both parties are told
        await buyer.query_instruments()
        notional = 100_000 * 10_500
        fees = notional * 300 // 1_000_000 + notional * 50 // 1_000_000
        balances = {(b.account, b.asset): b for b in (await buyer.query_balances()).balances}
        assert balances[("M2", "CNY")].balance == CASH - notional - fees
        assert balances[("M2", SYMBOL)].balance == ALLOWANCES + 100_000
        assert balances[("M2", SYMBOL)].available == ALLOWANCES  # bought today: sellable tomorrow (T+1)
        # The listing book's statistics are untouched.
        info = (await other.query_instruments(SYMBOL)).instruments[0]
        assert (info.last_price, info.volume) == (0, 0)

        # A retransmitted acceptance is answered with its original outcome, never taken twice.
        buyer.block_accept(offered.offer_id, 50_000, coid=accept)
        again = await buyer.wait_for(lambda m: type(m) is Resent)
        assert type(again.body) is BlockTraded and again.body.trade_id == traded.trade_id
        # The offerer withdraws the rest: its hold is released.
        seller.block_withdraw(offered.offer_id)
        gone = await body_of(seller, BlockWithdrawn)
        assert (gone.qty, gone.reason) == (50_000, 1)
        await seller.query_instruments()
        assert h.exchange.ledger.held.get(("M1", SYMBOL), 0) == 0  # type: ignore[attr-defined]
        assert (await buyer.query_block_offers()).offers == []
        h.check()


@run
async def test_an_offer_naming_a_counterparty_and_the_reasons_given() -> None:
    async with Harness(exchange=exchange()) as h:  # type: ignore[arg-type]
        m1, m2, m3 = await h.client("M1", "t1"), await h.client("M2", "t2"), await h.client("M3", "t3")
        m1.block_offer(SYMBOL, Side.BUY, 100_000, 9_000, counterparty="M3")
        offered = await body_of(m1, BlockOffered)
        assert (await m2.query_block_offers()).offers == []  # named to M3: M2 does not see it
        assert [(o.offer_id, o.named) for o in (await m3.query_block_offers()).offers] == [(offered.offer_id, True)]
        m2.block_accept(offered.offer_id, 100_000)
        rej = await body_of(m2, Rejected)
        assert rej.reason == Reason.UNKNOWN_OFFER
        for qty, price, reason in ((99_999, 10_000, Reason.BLOCK_TOO_SMALL),
                                   (100_000, 13_100, Reason.BLOCK_PRICE_OUT_OF_RANGE)):
            m2.block_offer(SYMBOL, Side.SELL, qty, price)
            assert (await body_of(m2, Rejected)).reason == reason
        m3.block_accept(offered.offer_id, 100_000)
        assert (await body_of(m3, BlockTraded)).seller == "M3"
        staff = await h.client("EXCH", "op")
        assert (await staff.query_block_offers()).offers == []
        reports = [m for m in await _all(m1) if isinstance(m, Report)]
        assert [type(r.body).__name__ for r in reports] == ["BlockTraded"]  # the offerer is told of the trade
        h.check()


async def _all(client: object) -> list[object]:
    from tests.gateway.harness import drain

    await client.query_instruments()  # type: ignore[attr-defined]
    return await drain(client)  # type: ignore[arg-type]

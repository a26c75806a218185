"""One-way bidding, rule by rule from issue 14: the exchange announces an auction for a
seller (the authority, or a member selling at least 100,000 t) with a quantity, a floor
(at least the previous close -10 %), the ceiling (the previous close +10 %), a window, a
pricing rule and bid sizes; members bid, amend and withdraw sealed bids during the
window, each bid's cash held; at the close bids rank by price then time, the quantity is
allocated with the marginal bid filled in part, every fill settles by delivery versus
payment, losing bids are released and the result names no bidder; too little demand
clears what it can, or cancels the auction when the announcement says so."""

from __future__ import annotations

import copy

import msgspec

from engine import Engine, Reason, Tick
from engine.messages import (
    AuctionAnnounce,
    AuctionAnnounced,
    AuctionBid,
    AuctionBidAmend,
    AuctionBidWithdraw,
    AuctionFill,
    AuctionResult,
    BidPlaced,
    Pricing,
    Rejected,
)
from engine.structs import EngineSnapshot
from tests.engine.harness import Venue, cx, kinds

REF = 10_000  # the previous close: the floor may go down to 9,000, the ceiling is 11,000
SEC = 1_000_000_000
START, END = 10 * SEC, 70 * SEC  # the window: 10 s to 70 s on the venue's clock


def venue() -> Venue:
    v = Venue([cx("CEA24", REF)])
    v.fund("AUTHORITY", CEA24=1_000_000)
    v.fund("SELLER", CEA24=500_000)
    for m in ("A", "B", "C", "D"):
        v.fund(m, cash=10_000_000_000)  # CNY 100 million each
    return v


def announce(v: Venue, qty: int = 300_000, floor: int = 9_500, seller: str = "AUTHORITY", **kw: object) -> int:
    out = v.send(AuctionAnnounce(seller, "CEA24", qty, floor, START, END, **kw))  # type: ignore[arg-type]
    (a,) = [e for e in out if isinstance(e, AuctionAnnounced)]
    return a.auction_id


def reason(out: list[object]) -> int:
    assert isinstance(out[-1], Rejected), out
    return out[-1].reason


def bid(v: Venue, member: str, qty: int, price: int, auction: int = 1) -> int:
    v.coids += 1
    out = v.send(AuctionBid(member, f"bid{v.coids}", auction, qty, price))
    placed = [e for e in out if isinstance(e, BidPlaced)]
    assert placed, out
    return placed[0].bid_id


def close(v: Venue) -> list[object]:
    v.at(END)
    return v.send(Tick())


def test_the_terms_of_an_announcement() -> None:
    v = venue()
    bad = [
        (dict(seller="SELLER", qty=99_999), "at least 100000 t"),  # a member sells at least the block minimum
        (dict(floor=8_999), "within [9000, 11000]"),  # the floor at least the previous close -10 %
        (dict(floor=11_001), "within [9000, 11000]"),
        (dict(pricing=3), "pricing must be 1"),
        (dict(bid_min=0), "bid sizes"),
        (dict(bid_min=10, bid_max=5), "bid sizes"),
    ]
    for kw, words in bad:
        args = {"qty": 300_000, "floor": 9_500, "seller": "AUTHORITY", **kw}
        out = v.send(AuctionAnnounce(args.pop("seller"), "CEA24", args.pop("qty"), args.pop("floor"), START, END,
                                     **args))  # type: ignore[arg-type]
        assert reason(out) == Reason.INVALID_FIELD and words in out[-1].text, (kw, out[-1].text)  # type: ignore[attr-defined]
    out = v.send(AuctionAnnounce("AUTHORITY", "CEA24", 300_000, 9_500, END, START))
    assert reason(out) == Reason.INVALID_FIELD  # a window that ends before it starts
    assert reason(v.send(AuctionAnnounce("A", "CEA24", 100_000, 9_500, START, END))) == Reason.INSUFFICIENT_HOLDINGS
    auction = announce(v, seller="SELLER", qty=100_000)
    assert v.held("SELLER", "CEA24") == 100_000  # the seller's allowances are held from the announcement
    a = v.engine.auctions[auction]
    assert (a.floor, a.ceiling, a.bid_max) == (9_500, 11_000, 100_000)


def test_bids_only_in_the_window_within_the_prices_and_sizes() -> None:
    v = venue()
    announce(v, bid_min=1_000, bid_max=200_000)
    assert reason(v.send(AuctionBid("A", "early", 1, 5_000, 10_000))) == Reason.AUCTION_NOT_OPEN
    v.at(START)
    assert reason(v.send(AuctionBid("A", "low", 1, 5_000, 9_499))) == Reason.BID_PRICE_OUT_OF_RANGE
    assert reason(v.send(AuctionBid("A", "high", 1, 5_000, 11_001))) == Reason.BID_PRICE_OUT_OF_RANGE
    assert reason(v.send(AuctionBid("A", "small", 1, 999, 10_000))) == Reason.BID_SIZE_OUT_OF_RANGE
    assert reason(v.send(AuctionBid("A", "big", 1, 200_001, 10_000))) == Reason.BID_SIZE_OUT_OF_RANGE
    assert reason(v.send(AuctionBid("AUTHORITY", "own", 1, 5_000, 10_000))) == Reason.SELLER_CANNOT_BID
    assert reason(v.send(AuctionBid("A", "x", 9, 5_000, 10_000))) == Reason.UNKNOWN_AUCTION
    v.fund("POOR", cash=1_000)
    assert reason(v.send(AuctionBid("POOR", "p", 1, 5_000, 10_000))) == Reason.INSUFFICIENT_FUNDS
    bid(v, "A", 5_000, 10_000)
    assert v.held("A") == v.ledger.cash_required(5_000 * 10_000)  # type: ignore[union-attr]
    v.at(END - 1)
    bid(v, "B", 1_000, 9_500)  # the last nanosecond of the window
    v.at(END)  # the window has closed: the auction clears before the late bid, which finds none
    out = v.send(AuctionBid("C", "late", 1, 5_000, 10_000))
    assert reason(out) == Reason.UNKNOWN_AUCTION and [type(e).__name__ for e in out][-2] == "AuctionResult"


def test_uniform_price_ranking_the_marginal_bid_and_delivery_versus_payment() -> None:
    v = venue()
    announce(v, qty=300_000, floor=9_500)
    v.at(START)
    a = bid(v, "A", 100_000, 10_500)
    b = bid(v, "B", 150_000, 10_200)
    c = bid(v, "C", 100_000, 10_200)  # same price as B, later: behind it
    d = bid(v, "D", 50_000, 9_800)  # below the marginal price: loses
    out = close(v)
    fills = {e.bid_id: e for e in out if isinstance(e, AuctionFill)}
    assert {k: (f.qty, f.price) for k, f in fills.items()} == {
        a: (100_000, 10_200), b: (150_000, 10_200), c: (50_000, 10_200)}  # C filled in part, all at the lowest accepted
    (result,) = [e for e in out if isinstance(e, AuctionResult)]
    assert (result.clearing_price, result.qty_sold, result.qty, result.bids, result.winners, result.bid_qty,
            result.cancelled) == (10_200, 300_000, 300_000, 4, 3, 400_000, False)
    assert not hasattr(result, "member")  # the result names no bidder
    assert d not in fills and v.held("D") == 0 and v.held("C") == 0  # holds of losers and the rest released
    assert v.available("A") == 10_000_000_000 - 100_000 * 10_200  # paid the clearing price, not its bid
    assert v.ledger.balance[("A", "CEA24")] == 100_000  # type: ignore[union-attr]
    assert v.ledger.balance[("AUTHORITY", "CEA24")] == 700_000 and v.held("AUTHORITY", "CEA24") == 0  # type: ignore[union-attr]
    assert v.ledger.balance[("AUTHORITY", "CNY")] == 300_000 * 10_200  # type: ignore[union-attr]
    assert not v.engine.auctions
    m = v.engine.markets["CEA24"]
    assert (m.volume, m.last_price) == (0, 0)  # the listing statistics do not move


def test_each_at_its_own_bid() -> None:
    v = venue()
    announce(v, qty=200_000, pricing=int(Pricing.OWN_BID))
    v.at(START)
    a = bid(v, "A", 100_000, 10_500)
    b = bid(v, "B", 150_000, 10_000)
    fills = {e.bid_id: (e.qty, e.price) for e in close(v) if isinstance(e, AuctionFill)}
    assert fills == {a: (100_000, 10_500), b: (100_000, 10_000)}


def test_too_little_demand_clears_what_it_can_or_cancels() -> None:
    v = venue()
    announce(v, qty=300_000)
    v.at(START)
    bid(v, "A", 100_000, 10_000)
    out = close(v)
    (r,) = [e for e in out if isinstance(e, AuctionResult)]
    assert (r.qty_sold, r.clearing_price, r.cancelled) == (100_000, 10_000, False)
    assert v.held("AUTHORITY", "CEA24") == 0 and v.ledger.balance[("AUTHORITY", "CEA24")] == 900_000  # type: ignore[union-attr]
    v2 = venue()
    announce(v2, qty=300_000, cancel_if_short=True)
    v2.at(START)
    bid(v2, "A", 100_000, 10_000)
    out = close(v2)
    (r,) = [e for e in out if isinstance(e, AuctionResult)]
    assert (r.qty_sold, r.cancelled) == (0, True) and not [e for e in out if isinstance(e, AuctionFill)]
    assert v2.held("A") == 0 and v2.held("AUTHORITY", "CEA24") == 0


def test_amend_loses_priority_and_withdraw_releases() -> None:
    v = venue()
    announce(v, qty=100_000)
    v.at(START)
    a = bid(v, "A", 100_000, 10_000)
    b = bid(v, "B", 100_000, 10_000)
    v.at(START + SEC)
    out = v.send(AuctionBidAmend("A", 1, a, 100_000, 10_000))  # the same terms, a new time: now behind B
    assert kinds(out) == ["BidPlaced"] and out[0].amended  # type: ignore[attr-defined]
    assert reason(v.send(AuctionBidAmend("B", 1, a, 1, 10_000))) == Reason.UNKNOWN_BID  # not B's
    c = bid(v, "C", 50_000, 10_100)
    assert reason(v.send(AuctionBidWithdraw("A", 1, c))) == Reason.UNKNOWN_BID
    out = v.send(AuctionBidWithdraw("C", 1, c))
    assert out[0].qty == 0 and v.held("C") == 0  # type: ignore[attr-defined]
    fills = {e.bid_id: e.qty for e in close(v) if isinstance(e, AuctionFill)}
    assert fills == {b: 100_000}


def test_auctions_are_in_snapshots_and_a_restored_engine_clears_alike() -> None:
    v = venue()
    announce(v)
    v.at(START)
    bid(v, "A", 100_000, 10_500)
    bid(v, "B", 250_000, 10_100)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(v.engine.snapshot()), type=EngineSnapshot)
    assert [len(a.bids) for a in snap.auctions] == [2] and snap.next_bid_id == 3
    ledger = copy.deepcopy(v.ledger)
    fresh = Engine([cx("CEA24", REF)], ledger)
    fresh.restore(snap)
    assert fresh.state_hash() == v.engine.state_hash()
    # The window closes on both: the same fills, the same result, the same state.
    v.at(END)
    tick = v.sequencer.stamp(Tick())
    v.engine.apply(tick)
    fresh.apply(tick)
    assert [type(e).__name__ for e in v.engine.out] == ["AuctionFill", "AuctionFill", "AuctionResult"]
    assert fresh.out == v.engine.out
    assert fresh.state_hash() == v.engine.state_hash() and ledger.state() == v.ledger.state()  # type: ignore[union-attr]

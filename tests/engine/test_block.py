"""Block agreement trading, rule by rule from issue 14: at least 100,000 t, priced within
+-30 % of the previous close, in the afternoon session only (the schedule's last window),
open to all members or naming one counterparty, accepted whole or (when the offer allows)
in part, both sides held like listing orders and settled by delivery versus payment,
withdrawn until accepted, expired at the session's end; the listing book's open, close
and VWAP are not moved; every reject names its reason."""

from __future__ import annotations

import msgspec

from engine import Engine, Halt, Instrument, Reason, Schedule, Side, SuspendMember
from engine.messages import (
    BlockAccept,
    BlockEnd,
    BlockOffer,
    BlockOffered,
    BlockTraded,
    BlockWithdraw,
    BlockWithdrawn,
    EndOfDay,
    Rejected,
)
from engine.structs import EngineSnapshot
from tests.engine.harness import Venue, cx, kinds, local_ns

BUY, SELL = int(Side.BUY), int(Side.SELL)
REF = 10_000  # the previous close: CNY 100.00
BIG = 100_000  # the block minimum
NATIONAL = Schedule()


def venue(**kw: object) -> Venue:
    v = Venue([cx("CEA24", REF)], **kw)  # type: ignore[arg-type]
    for m in ("A", "B", "C"):
        v.fund(m, cash=5_000_000_000, CEA24=500_000)  # CNY 50 million, 500,000 t
    return v


def rejected(out: list[object]) -> tuple[int, str]:
    assert kinds(out)[-1] == "Rejected", out  # type: ignore[arg-type]
    rej = out[-1]
    assert isinstance(rej, Rejected)
    return rej.reason, rej.text


def offer(v: Venue, member: str = "A", side: int = SELL, qty: int = BIG, price: int = REF, coid: str = "",
          **kw: object) -> list[object]:
    v.coids += 1
    return v.send(BlockOffer(member, coid or f"b{v.coids}", "CEA24", side, qty, price, **kw))  # type: ignore[arg-type]


def offered(out: list[object]) -> BlockOffered:
    (ev,) = [e for e in out if isinstance(e, BlockOffered)]
    return ev


def test_an_offer_is_at_least_the_block_minimum() -> None:
    v = venue()
    assert rejected(offer(v, qty=BIG - 1))[0] == Reason.BLOCK_TOO_SMALL
    o = offered(offer(v, qty=BIG))
    assert (o.member, o.side, o.qty, o.price, o.offer_id) == ("A", SELL, BIG, REF, 1)
    assert v.held("A", "CEA24") == BIG  # the seller's allowances are held like a listing order's


def test_the_minimum_and_the_band_are_configuration() -> None:
    v = Venue([cx("CEA24", REF, block_min=50_000, block_band_bps=1000)])
    v.fund("A", cash=5_000_000_000, CEA24=500_000)
    assert offered(offer(v, qty=50_000, price=11_000)).qty == 50_000
    assert rejected(offer(v, qty=50_000, price=11_001))[0] == Reason.BLOCK_PRICE_OUT_OF_RANGE


def test_the_price_is_within_thirty_percent_of_the_previous_close() -> None:
    v = venue()
    for price in (6_999, 13_001):
        reason, text = rejected(offer(v, price=price))
        assert reason == Reason.BLOCK_PRICE_OUT_OF_RANGE and "[7000, 13000]" in text, text
    assert offered(offer(v, price=7_000)).price == 7_000
    assert offered(offer(v, price=13_000)).price == 13_000  # outside the listing band (+-10 %), inside the block band
    v2 = Venue([cx("CEA24", REF, tick=5)])
    v2.fund("A", CEA24=500_000)
    assert rejected(offer(v2, price=10_003))[0] == Reason.OFF_TICK


def test_block_trading_is_open_in_the_afternoon_session_only() -> None:
    v = venue(schedule=NATIONAL, start_ns=local_ns(10, 0))
    reason, text = rejected(offer(v))
    assert reason == Reason.BLOCK_SESSION_CLOSED and "13:00-15:00" in text
    v.at(local_ns(12, 0))  # the lunch break
    assert rejected(offer(v))[0] == Reason.BLOCK_SESSION_CLOSED
    v.at(local_ns(13, 0))
    o = offered(offer(v, side=BUY, qty=BIG, price=REF))
    assert v.held("A") == v.ledger.cash_required(REF * BIG)  # type: ignore[union-attr]
    # The offer expires at the session's end, with its hold released.
    v.at(local_ns(15, 0))
    out = offer(v, member="B")
    gone = [e for e in out if isinstance(e, BlockWithdrawn)]
    assert [(g.offer_id, g.qty, g.reason) for g in gone] == [(o.offer_id, BIG, BlockEnd.EXPIRED)]
    assert rejected(out)[0] == Reason.BLOCK_SESSION_CLOSED
    assert v.held("A") == 0 and not v.engine.offers
    v.at(local_ns(13, 30, day=1))
    assert rejected(v.send(BlockAccept("B", "x", o.offer_id, BIG)))[0] == Reason.UNKNOWN_OFFER


def test_an_offer_taken_whole_settles_by_delivery_versus_payment() -> None:
    v = venue()
    o = offered(offer(v, "A", SELL, 120_000, 10_500))
    cash_b, cea_a, cea_b = v.available("B"), v.ledger.balance[("A", "CEA24")], v.ledger.balance[("B", "CEA24")]  # type: ignore[union-attr]
    out = v.send(BlockAccept("B", "acc-1", o.offer_id, 120_000))
    (t,) = [e for e in out if isinstance(e, BlockTraded)]
    assert (t.buyer, t.seller, t.offerer, t.acceptor, t.qty, t.price, t.left, t.coid, t.offer_coid) == (
        "B", "A", "A", "B", 120_000, 10_500, 0, "acc-1", o.coid)
    assert not v.engine.offers
    assert v.ledger.balance[("A", "CEA24")] == cea_a - 120_000  # type: ignore[union-attr]
    assert v.ledger.balance[("B", "CEA24")] == cea_b + 120_000  # type: ignore[union-attr]
    assert v.available("B") == cash_b - 120_000 * 10_500  # SimpleLedger: no fees
    assert v.held("A", "CEA24") == 0 and v.held("B") == 0
    # The listing book's statistics are not moved: no last price, no volume.
    m = v.engine.markets["CEA24"]
    assert (m.last_price, m.volume, m.trades, m.open_price) == (0, 0, 0, 0)
    assert (m.block_volume, m.block_value, m.block_trades) == (120_000, 120_000 * 10_500, 1)  # counted apart
    assert t.trade_id == v.engine.next_trade_id - 1  # trade ids shared with the listing trades


def test_a_buy_offer_taken_releases_the_offerers_hold() -> None:
    v = venue()
    o = offered(offer(v, "A", BUY, BIG, 9_000))
    assert v.held("A") == BIG * 9_000
    out = v.send(BlockAccept("C", "s", o.offer_id, BIG))
    (t,) = [e for e in out if isinstance(e, BlockTraded)]
    assert (t.buyer, t.seller) == ("A", "C")
    assert v.held("A") == 0 and v.held("C", "CEA24") == 0


def test_partial_acceptance_only_when_the_offer_allows_it() -> None:
    v = venue()
    whole = offered(offer(v, qty=200_000))
    reason, text = rejected(v.send(BlockAccept("B", "p1", whole.offer_id, 100_000)))
    assert reason == Reason.PARTIAL_NOT_ALLOWED and "200000" in text
    parts = offered(offer(v, side=BUY, qty=300_000, price=9_500, partial=True))
    out = v.send(BlockAccept("B", "p2", parts.offer_id, 100_000))
    assert [e.left for e in out if isinstance(e, BlockTraded)] == [200_000]
    assert v.held("A") == 200_000 * 9_500  # the offerer's hold follows what is left
    assert rejected(v.send(BlockAccept("C", "p3", parts.offer_id, 200_001)))[0] == Reason.QTY_OUT_OF_RANGE
    out = v.send(BlockAccept("C", "p4", parts.offer_id, 200_000))
    assert [e.left for e in out if isinstance(e, BlockTraded)] == [0]
    assert parts.offer_id not in v.engine.offers and v.held("A") == 0


def test_an_offer_naming_a_counterparty_is_for_it_alone() -> None:
    v = venue()
    o = offered(offer(v, counterparty="B"))
    assert o.counterparty == "B"
    reason, text = rejected(v.send(BlockAccept("C", "c1", o.offer_id, BIG)))
    assert reason == Reason.UNKNOWN_OFFER and "for you" in text  # to C it does not exist
    assert [e.acceptor for e in v.send(BlockAccept("B", "b1", o.offer_id, BIG)) if isinstance(e, BlockTraded)] == ["B"]
    assert rejected(offer(v, counterparty="A"))[0] == Reason.INVALID_FIELD  # naming oneself


def test_own_offers_unknown_offers_and_duplicate_ids() -> None:
    v = venue()
    o = offered(offer(v, coid="same"))
    assert rejected(v.send(BlockAccept("A", "mine", o.offer_id, BIG)))[0] == Reason.OFFER_IS_YOURS
    assert rejected(v.send(BlockAccept("B", "x", 999, BIG)))[0] == Reason.UNKNOWN_OFFER
    assert rejected(offer(v, coid="same"))[0] == Reason.DUPLICATE_CLIENT_ORDER_ID
    assert rejected(v.send(BlockAccept("B", "zero", o.offer_id, 0)))[0] == Reason.QTY_OUT_OF_RANGE


def test_both_sides_are_held_before_the_trade() -> None:
    v = venue()
    v.fund("POOR", cash=1_000)
    o = offered(offer(v, qty=BIG))
    reason, _ = rejected(v.send(BlockAccept("POOR", "p", o.offer_id, BIG)))
    assert reason == Reason.INSUFFICIENT_FUNDS and o.offer_id in v.engine.offers
    v.fund("EMPTY", cash=1)
    assert rejected(offer(v, "EMPTY", SELL, BIG))[0] == Reason.INSUFFICIENT_HOLDINGS


def test_an_offer_can_be_withdrawn_until_accepted_by_its_member_only() -> None:
    v = venue()
    o = offered(offer(v, side=BUY, price=9_000))
    assert rejected(v.send(BlockWithdraw("B", o.offer_id)))[0] == Reason.UNKNOWN_OFFER
    out = v.send(BlockWithdraw("A", o.offer_id))
    (w,) = [e for e in out if isinstance(e, BlockWithdrawn)]
    assert (w.offer_id, w.qty, w.reason) == (o.offer_id, BIG, BlockEnd.WITHDRAWN)
    assert v.held("A") == 0
    assert rejected(v.send(BlockAccept("B", "late", o.offer_id, BIG)))[0] == Reason.UNKNOWN_OFFER
    assert rejected(v.send(BlockWithdraw("A", o.offer_id)))[0] == Reason.UNKNOWN_OFFER


def test_halts_suspensions_and_the_end_of_the_day() -> None:
    v = venue()
    o = offered(offer(v))
    v.send(Halt("CEA24"))
    assert rejected(v.send(BlockAccept("B", "h", o.offer_id, BIG)))[0] == Reason.INSTRUMENT_HALTED
    v = venue()
    v.send(SuspendMember("B"))
    o = offered(offer(v))
    assert rejected(v.send(BlockAccept("B", "s", o.offer_id, BIG)))[0] == Reason.MEMBER_SUSPENDED
    assert rejected(offer(v, "B"))[0] == Reason.MEMBER_SUSPENDED
    out = v.send(EndOfDay())
    assert [(e.offer_id, e.reason) for e in out if isinstance(e, BlockWithdrawn)] == [(o.offer_id, BlockEnd.EXPIRED)]
    assert v.held("A", "CEA24") == 0


def test_offers_are_in_the_snapshot_and_the_state_hash() -> None:
    v = venue()
    offered(offer(v, qty=150_000, partial=True, counterparty="B"))
    offered(offer(v, "C", BUY, BIG, 9_000))
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(v.engine.snapshot()), type=EngineSnapshot)
    assert [r.offer_id for r in snap.offers] == [1, 2] and snap.next_offer_id == 3
    fresh = Engine([cx("CEA24", REF)], v.ledger)
    fresh.restore(snap)
    assert fresh.state_hash() == v.engine.state_hash()
    before = v.engine.state_hash()
    v.send(BlockWithdraw("C", 2))
    assert v.engine.state_hash() != before
    # An engine that never saw a block offer keeps the hash it had before offers existed.
    plain = Engine([Instrument(symbol="CEA24", ref_price=REF, holds=False)])
    assert len(plain.state()) == 8

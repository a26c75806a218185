"""Every invalid command is rejected with its own reason and changes nothing.

The table below has at least one case for every engine reason code; ``Venue.reject``
checks the reason, that a text explains it, and that the engine's state and the
ledger are exactly as before (the sequence number and time aside, which every command
advances).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine import (
    Amend,
    Cancel,
    CancelReason,
    Command,
    Halt,
    HitOrder,
    MassCancel,
    NewOrder,
    OrdType,
    Reason,
    ReinstateMember,
    Rejected,
    Resume,
    Schedule,
    Side,
    SuspendMember,
    Tick,
    TimeInForce,
)
from tests.engine.harness import Venue, cx, kinds, local_ns

BUY, SELL = Side.BUY, Side.SELL
R = Reason


def venue(**kw: object) -> Venue:
    """CEA24 (tick 5, lot 10, qty 10..99_990, band [9000, 11000]) and CEA23 (defaults,
    and a position limit of 1,100 t: A and B hold 1,000 t)."""
    inst = [cx("CEA24", 10_000, tick=5, lot=10, qty_min=10, qty_max=99_990), cx("CEA23", 8_000, position_max=1_100)]
    v = Venue(inst, **kw)  # type: ignore[arg-type]
    v.fund("A", cash=10_000_000, CEA24=1_000, CEA23=1_000)
    v.fund("B", cash=10_000_000, CEA24=1_000, CEA23=1_000)
    v.fund("POOR", cash=99_999, CEA24=9)
    return v


def new(member: str = "A", side: int = BUY, qty: int = 10, price: int = 10_000, **kw: object) -> NewOrder:
    args: dict[str, object] = {"coid": "n1", "instrument": "CEA24"}
    args.update(kw)
    return NewOrder(member=member, side=side, qty=qty, price=price, **args)  # type: ignore[arg-type]


Scenario = Callable[[Venue], Command]


def resting(v: Venue, member: str = "A", side: int = BUY, qty: int = 20, price: int = 10_000, **kw: object) -> int:
    return v.rest(member, side, qty, price, instrument="CEA24", **kw)


CASES: list[tuple[str, int, Scenario]] = [
    # UNKNOWN_INSTRUMENT
    ("new-unknown-instrument", R.UNKNOWN_INSTRUMENT, lambda v: new(instrument="CEA99")),
    ("new-empty-instrument", R.UNKNOWN_INSTRUMENT, lambda v: new(instrument="")),
    ("hit-unknown-instrument", R.UNKNOWN_INSTRUMENT,
     lambda v: HitOrder("B", "h", "CEA99", resting(v), 10)),
    ("mass-cancel-unknown-instrument", R.UNKNOWN_INSTRUMENT, lambda v: MassCancel("A", "CEA99")),
    ("halt-unknown-instrument", R.UNKNOWN_INSTRUMENT, lambda v: Halt("CEA99")),
    ("resume-unknown-instrument", R.UNKNOWN_INSTRUMENT, lambda v: Resume("CEA99")),
    # OFF_TICK
    ("new-off-tick", R.OFF_TICK, lambda v: new(price=10_002)),
    ("amend-off-tick", R.OFF_TICK, lambda v: Amend("A", resting(v), 10_003, 20)),
    # OFF_LOT
    ("new-off-lot", R.OFF_LOT, lambda v: new(qty=15)),
    ("amend-off-lot", R.OFF_LOT, lambda v: Amend("A", resting(v), 10_000, 25)),
    ("hit-off-lot", R.OFF_LOT, lambda v: HitOrder("B", "h", "CEA24", resting(v), 11)),
    # QTY_OUT_OF_RANGE
    ("new-qty-zero", R.QTY_OUT_OF_RANGE, lambda v: new(qty=0)),
    ("new-qty-negative", R.QTY_OUT_OF_RANGE, lambda v: new(qty=-10)),
    ("new-qty-below-min", R.QTY_OUT_OF_RANGE, lambda v: new(qty=5)),
    ("new-qty-above-max", R.QTY_OUT_OF_RANGE, lambda v: new(qty=100_000)),
    ("new-market-qty-above-max", R.QTY_OUT_OF_RANGE, lambda v: new(qty=100_000, ord_type=OrdType.MARKET)),
    ("amend-qty-zero", R.QTY_OUT_OF_RANGE, lambda v: Amend("A", resting(v), 10_000, 0)),
    ("amend-qty-above-max", R.QTY_OUT_OF_RANGE, lambda v: Amend("A", resting(v), 10_000, 100_000)),
    ("hit-qty-zero", R.QTY_OUT_OF_RANGE, lambda v: HitOrder("B", "h", "CEA24", resting(v), 0)),
    # PRICE_OUTSIDE_BAND
    ("new-price-above-band", R.PRICE_OUTSIDE_BAND, lambda v: new(price=11_005)),
    ("new-price-below-band", R.PRICE_OUTSIDE_BAND, lambda v: new(price=8_995)),
    ("new-price-zero", R.PRICE_OUTSIDE_BAND, lambda v: new(price=0)),
    ("new-price-negative", R.PRICE_OUTSIDE_BAND, lambda v: new(price=-10_000)),
    ("amend-price-outside-band", R.PRICE_OUTSIDE_BAND, lambda v: Amend("A", resting(v), 11_005, 20)),
    # INSUFFICIENT_FUNDS: 10 t at 10,000 fen needs 100,000 fen; POOR has 99,999.
    ("new-buy-without-cash", R.INSUFFICIENT_FUNDS, lambda v: new(member="POOR")),
    ("market-buy-held-at-band-high", R.INSUFFICIENT_FUNDS,
     lambda v: new(member="POOR", price=9_000, ord_type=OrdType.MARKET)),  # 10 x 11,000 > 99,999
    ("amend-up-without-cash", R.INSUFFICIENT_FUNDS,
     lambda v: Amend("POOR", resting(v, "POOR", BUY, 10, 9_000), 10_000, 10)),
    ("hit-buy-without-cash", R.INSUFFICIENT_FUNDS,
     lambda v: HitOrder("POOR", "h", "CEA24", resting(v, "A", SELL, 20, 10_000), 10)),
    # INSUFFICIENT_HOLDINGS: POOR holds 9 t, the lot is 10.
    ("new-sell-without-allowances", R.INSUFFICIENT_HOLDINGS, lambda v: new(member="POOR", side=SELL)),
    ("new-sell-other-vintage", R.INSUFFICIENT_HOLDINGS,
     lambda v: new(member="POOR", side=SELL, qty=10, instrument="CEA23", price=8_000)),
    ("amend-sell-up", R.INSUFFICIENT_HOLDINGS,
     lambda v: Amend("A", resting(v, "A", SELL, 1_000, 10_500), 10_500, 1_010)),
    ("hit-sell-without-allowances", R.INSUFFICIENT_HOLDINGS,
     lambda v: HitOrder("POOR", "h", "CEA24", resting(v, "A", BUY, 20, 10_000), 10)),
    # MARKET_CLOSED and INSTRUMENT_HALTED: see the phase cases below.
    # DUPLICATE_CLIENT_ORDER_ID
    ("new-duplicate-coid", R.DUPLICATE_CLIENT_ORDER_ID,
     lambda v: (v.send(new(coid="dup")), new(coid="dup", price=9_500))[1]),
    ("hit-reuses-order-coid", R.DUPLICATE_CLIENT_ORDER_ID,
     lambda v: (v.send(new(member="B", coid="dup", price=9_000)), HitOrder("B", "dup", "CEA24", resting(v, "A", SELL), 10))[1]),
    ("coid-of-a-cancelled-order", R.DUPLICATE_CLIENT_ORDER_ID,
     lambda v: (v.send(Cancel("A", resting(v, coid="gone"))), new(coid="gone"))[1]),
    # UNKNOWN_ORDER
    ("cancel-unknown", R.UNKNOWN_ORDER, lambda v: Cancel("A", 12_345)),
    ("cancel-zero", R.UNKNOWN_ORDER, lambda v: Cancel("A", 0)),
    ("amend-unknown", R.UNKNOWN_ORDER, lambda v: Amend("A", 12_345, 10_000, 10)),
    ("cancel-cancelled", R.UNKNOWN_ORDER, lambda v: (oid := resting(v), v.send(Cancel("A", oid)), Cancel("A", oid))[2]),
    ("cancel-filled", R.UNKNOWN_ORDER,
     lambda v: (oid := resting(v), v.send(new("B", SELL, 20, 10_000, coid="s")), Cancel("A", oid))[2]),
    ("hit-unknown-target", R.UNKNOWN_ORDER, lambda v: HitOrder("B", "h", "CEA24", 777, 10)),
    ("hit-target-in-other-instrument", R.UNKNOWN_ORDER,
     lambda v: HitOrder("B", "h", "CEA23", resting(v), 10)),
    # NOT_YOUR_ORDER
    ("cancel-not-yours", R.NOT_YOUR_ORDER, lambda v: Cancel("B", resting(v))),
    ("amend-not-yours", R.NOT_YOUR_ORDER, lambda v: Amend("B", resting(v), 10_000, 10)),
    # INVALID_FIELD
    ("new-side-zero", R.INVALID_FIELD, lambda v: new(side=0)),
    ("new-side-three", R.INVALID_FIELD, lambda v: new(side=3)),
    ("new-stp-five", R.INVALID_FIELD, lambda v: new(stp=5)),
    ("new-stp-negative", R.INVALID_FIELD, lambda v: new(stp=-1)),
    ("new-tif-zero", R.INVALID_FIELD, lambda v: new(tif=0)),
    ("new-tif-four", R.INVALID_FIELD, lambda v: new(tif=4)),
    ("new-ord-type-zero", R.INVALID_FIELD, lambda v: new(ord_type=0)),
    ("new-ord-type-three", R.INVALID_FIELD, lambda v: new(ord_type=3)),
    ("mass-cancel-user-reason", R.INVALID_FIELD, lambda v: MassCancel("A", "", CancelReason.USER)),
    ("mass-cancel-bad-reason", R.INVALID_FIELD, lambda v: MassCancel("A", "", 99)),
    # TARGET_NOT_IN_BEST_LEVELS
    ("hit-sixth-level", R.TARGET_NOT_IN_BEST_LEVELS,
     lambda v: (ids := [resting(v, "A", SELL, 10, 10_000 + 5 * i) for i in range(6)],
                HitOrder("B", "h", "CEA24", ids[5], 10))[1]),
    # TARGET_IS_OWN_ORDER
    ("hit-own-order", R.TARGET_IS_OWN_ORDER, lambda v: HitOrder("A", "h", "CEA24", resting(v, "A", SELL), 10)),
    # AMEND_NO_CHANGE
    ("amend-no-change", R.AMEND_NO_CHANGE, lambda v: Amend("A", resting(v), 10_000, 20)),
    # NOT_HALTED and ALREADY_HALTED
    ("resume-not-halted", R.NOT_HALTED, lambda v: Resume("CEA24")),
    ("resume-all-not-halted", R.NOT_HALTED, lambda v: Resume("")),
    ("halt-already-halted", R.ALREADY_HALTED, lambda v: (v.send(Halt("CEA24")), Halt("CEA24"))[1]),
    ("halt-all-already-halted", R.ALREADY_HALTED, lambda v: (v.send(Halt("")), Halt(""))[1]),
    ("halt-all-each-halted", R.ALREADY_HALTED,
     lambda v: (v.send(Halt("CEA24")), v.send(Halt("CEA23")), Halt("", cancel_orders=True))[2]),
    # Halted
    ("new-halted", R.INSTRUMENT_HALTED, lambda v: (v.send(Halt("CEA24")), new())[1]),
    ("amend-halted", R.INSTRUMENT_HALTED,
     lambda v: (oid := resting(v), v.send(Halt("")), Amend("A", oid, 10_000, 10))[2]),
    ("hit-halted", R.INSTRUMENT_HALTED,
     lambda v: (oid := resting(v), v.send(Halt("CEA24")), HitOrder("B", "h", "CEA24", oid, 10))[2]),
    # POSITION_LIMIT: CEA23 allows 1,100 t; A holds 1,000 t.
    ("new-buy-past-position-limit", R.POSITION_LIMIT, lambda v: new(qty=101, price=8_000, instrument="CEA23")),
    ("market-buy-past-position-limit", R.POSITION_LIMIT,
     lambda v: new(qty=101, ord_type=OrdType.MARKET, tif=TimeInForce.IOC, instrument="CEA23")),
    ("open-buys-count-to-the-limit", R.POSITION_LIMIT,
     lambda v: (v.rest("A", BUY, 60, 7_900, instrument="CEA23"), new(qty=41, price=7_950, instrument="CEA23"))[1]),
    ("hit-buy-past-position-limit", R.POSITION_LIMIT,
     lambda v: HitOrder("A", "h", "CEA23", v.rest("B", SELL, 200, 8_000, instrument="CEA23"), 101)),
    ("amend-buy-up-past-position-limit", R.POSITION_LIMIT,
     lambda v: Amend("A", v.rest("A", BUY, 100, 7_900, instrument="CEA23"), 7_900, 101)),
    # MEMBER_SUSPENDED
    ("new-suspended", R.MEMBER_SUSPENDED, lambda v: (v.send(SuspendMember("A")), new())[1]),
    ("amend-suspended", R.MEMBER_SUSPENDED,
     lambda v: (oid := resting(v), v.send(SuspendMember("A")), Amend("A", oid, 10_000, 10))[2]),
    ("hit-suspended", R.MEMBER_SUSPENDED,
     lambda v: (oid := resting(v), v.send(SuspendMember("B")), HitOrder("B", "h", "CEA24", oid, 10))[2]),
    # STAFF_MAY_NOT_TRADE (the exchange core fills engine.staff from the registry's staff accounts)
    ("new-staff", R.STAFF_MAY_NOT_TRADE, lambda v: (v.engine.staff.add("A"), new())[1]),
    ("hit-staff", R.STAFF_MAY_NOT_TRADE,
     lambda v: (oid := resting(v), v.engine.staff.add("B"), HitOrder("B", "h", "CEA24", oid, 10))[2]),
    # ALREADY_SUSPENDED and NOT_SUSPENDED
    ("suspend-suspended", R.ALREADY_SUSPENDED,
     lambda v: (v.send(SuspendMember("A")), SuspendMember("A", cancel_orders=True))[1]),
    ("reinstate-not-suspended", R.NOT_SUSPENDED, lambda v: ReinstateMember("A")),
    ("reinstate-reinstated", R.NOT_SUSPENDED,
     lambda v: (v.send(SuspendMember("A")), v.send(ReinstateMember("A")), ReinstateMember("A"))[2]),
    ("suspend-nobody", R.INVALID_FIELD, lambda v: SuspendMember("")),
    ("reinstate-nobody", R.INVALID_FIELD, lambda v: ReinstateMember("")),
]


@pytest.mark.parametrize(("reason", "scenario"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejected_with_reason_and_nothing_changes(reason: int, scenario: Scenario) -> None:
    v = venue()
    cmd = scenario(v)
    rej = v.reject(cmd, reason)
    assert rej.member == getattr(cmd, "member", "")
    if isinstance(cmd, NewOrder | HitOrder):
        assert rej.coid == cmd.coid and rej.order_id == 0
    elif isinstance(cmd, Cancel | Amend):
        assert rej.coid == "" and rej.order_id == cmd.order_id
    else:
        assert rej.coid == "" and rej.order_id == 0


def market_closed_venue() -> Venue:
    """The national schedule at 12:00 local: between the morning and afternoon windows."""
    v = venue(schedule=Schedule(), start_ns=local_ns(10, 0))
    return v


@pytest.mark.parametrize("kind", ["new", "market", "amend", "hit"])
def test_closed_market_rejects_orders(kind: str) -> None:
    v = market_closed_venue()
    oid = resting(v)
    v.at(local_ns(12, 0))
    out = v.send(Tick())
    assert kinds(out) == ["StatusChanged", "StatusChanged"]
    cmd: Command = {
        "new": new(coid="late"),
        "market": new(coid="late", ord_type=OrdType.MARKET, tif=TimeInForce.IOC),
        "amend": Amend("A", oid, 10_000, 10),
        "hit": HitOrder("B", "h", "CEA24", oid, 10),
    }[kind]
    v.reject(cmd, R.MARKET_CLOSED)


def test_halt_wins_over_closed() -> None:
    v = venue(schedule=Schedule(), start_ns=local_ns(9, 0))
    v.send(Halt("CEA24"))
    v.reject(new(), R.INSTRUMENT_HALTED)
    v.reject(new(instrument="CEA23", price=8_000), R.MARKET_CLOSED)


def test_the_checks_run_in_a_fixed_order() -> None:
    """When a command breaks several rules, the first check decides (documented order:
    suspension, instrument, phase, side, quantity range, lot, client order id, stp, tif,
    order type, tick, band, position limit, funds)."""
    v = venue()
    v.send(SuspendMember("A"))
    v.reject(new(instrument="X", side=9, qty=-1), R.MEMBER_SUSPENDED)
    v.send(ReinstateMember("A"))
    v.reject(new(instrument="X", side=9, qty=-1), R.UNKNOWN_INSTRUMENT)
    v.reject(new(side=9, qty=-1), R.INVALID_FIELD)
    v.reject(new(qty=5, price=1), R.QTY_OUT_OF_RANGE)
    v.reject(new(qty=15, price=1), R.OFF_LOT)
    v.send(new(coid="used"))
    v.reject(new(coid="used", stp=9, price=1), R.DUPLICATE_CLIENT_ORDER_ID)
    v.reject(new(coid="x", stp=9, tif=9), R.INVALID_FIELD)
    v.reject(new(coid="x", price=1, member="POOR"), R.OFF_TICK)
    v.reject(new(coid="x", price=5, member="POOR"), R.PRICE_OUTSIDE_BAND)
    v.reject(new(coid="x", price=10_000, member="POOR"), R.INSUFFICIENT_FUNDS)
    v.fund("POOR", CEA23=1_100)
    v.reject(new(coid="x", price=8_000, member="POOR", instrument="CEA23"), R.POSITION_LIMIT)
    oid = resting(v)
    v.reject(Amend("B", oid, 1, 1), R.NOT_YOUR_ORDER)
    v.reject(Amend("A", oid, 1, 1), R.QTY_OUT_OF_RANGE)
    v.reject(Amend("A", oid, 1, 11), R.OFF_LOT)
    v.reject(Amend("A", oid, 1, 10), R.OFF_TICK)
    v.reject(Amend("A", oid, 5, 10), R.PRICE_OUTSIDE_BAND)


def test_a_rejected_coid_can_be_used_again() -> None:
    v = venue()
    v.reject(new(coid="again", price=1), R.OFF_TICK)
    assert kinds(v.send(new(coid="again"))) == ["Accepted"]


def test_the_same_coid_for_another_member_is_accepted() -> None:
    v = venue()
    assert kinds(v.send(new("A", coid="same"))) == ["Accepted"]
    assert kinds(v.send(new("B", coid="same", price=9_000))) == ["Accepted"]


@pytest.mark.parametrize(("qty", "price"), [(10, 9_000), (10, 11_000), (99_990, 9_000), (10, 9_995)])
def test_the_limits_themselves_are_accepted(qty: int, price: int) -> None:
    v = venue()
    v.fund("RICH", cash=10**12)
    out = v.send(new("RICH", BUY, qty, price))
    assert kinds(out) == ["Accepted"]


def test_exact_funds_are_enough() -> None:
    v = venue()
    v.fund("EXACT", cash=100_000, CEA24=10)
    assert kinds(v.send(new("EXACT", BUY, 10, 10_000))) == ["Accepted"]
    assert kinds(v.send(new("EXACT", SELL, 10, 10_500, coid="s"))) == ["Accepted"]
    assert v.available("EXACT") == 0 and v.available("EXACT", "CEA24") == 0
    v.reject(new("EXACT", BUY, 10, 9_000, coid="b2"), R.INSUFFICIENT_FUNDS)
    v.reject(new("EXACT", SELL, 10, 10_500, coid="s2"), R.INSUFFICIENT_HOLDINGS)


def test_every_engine_reason_has_a_case() -> None:
    """Every engine reason has at least one case above."""
    covered = {c[1] for c in CASES} | {R.MARKET_CLOSED}
    # Block agreement trading's reasons have their cases in tests/engine/test_block.py.
    block = {R.BLOCK_TOO_SMALL, R.BLOCK_PRICE_OUT_OF_RANGE, R.BLOCK_SESSION_CLOSED, R.UNKNOWN_OFFER, R.OFFER_IS_YOURS,
             R.PARTIAL_NOT_ALLOWED}
    # And auctions' in tests/engine/test_auction.py.
    auction = {R.UNKNOWN_AUCTION, R.AUCTION_NOT_OPEN, R.BID_PRICE_OUT_OF_RANGE, R.BID_SIZE_OUT_OF_RANGE, R.UNKNOWN_BID,
               R.SELLER_CANNOT_BID}
    assert covered | block | auction == set(Reason)


def test_rejected_event_fields() -> None:
    v = venue()
    rej = v.reject(new(coid="q", price=10_001), R.OFF_TICK)
    assert isinstance(rej, Rejected)
    assert (rej.seq, rej.ts) == (v.sequencer.seq, v.clock.now)
    assert "10001" in rej.text and "5" in rej.text
    rej = v.reject(Halt("NOPE"), R.UNKNOWN_INSTRUMENT)
    assert rej.member == "" and "NOPE" in rej.text
    rej = v.reject(MassCancel("B", "NOPE"), R.UNKNOWN_INSTRUMENT)
    assert rej.member == "B"

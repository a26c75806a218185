"""Position limits (issue 10, rule 1): ``Instrument.position_max`` tonnes per member.

A buy (new order, hit order, or an amend that raises a buy's quantity) is rejected with
POSITION_LIMIT, its text naming the figures, when the member's holding of the
instrument (its ledger balance) plus its open buy quantity there plus the order's
quantity would exceed the limit. Sells are never limited. The open buy quantity is kept
by the engine only for instruments with a limit; ``Venue.send`` runs ``Engine._check``
after every command, which recomputes it from the book, so every path that changes a
resting buy (fills, cancels, amends, self-trade prevention, mass cancels, halts, expiry)
is checked by the tests that take it.
"""

from __future__ import annotations

import msgspec
import pytest

from engine import (
    Accepted,
    Amend,
    Cancel,
    EndOfDay,
    Engine,
    Halt,
    HitOrder,
    Instrument,
    MassCancel,
    NewOrder,
    OrdType,
    Reason,
    Resume,
    Schedule,
    Side,
    SimpleLedger,
    Stp,
    Tick,
    TimeInForce,
)
from engine.matching import EngineSnapshot
from tests.engine.harness import Venue, cx, kinds, local_ns, only

BUY, SELL = Side.BUY, Side.SELL
LIMIT = 1_000


def venue(**kw: object) -> Venue:
    """CEA24 with a position limit of 1,000 t, CEA23 without one. M holds 900 t CEA24
    and plenty of cash; S (5,000 t, past the limit: it can only sell) sells."""
    v = Venue([cx("CEA24", position_max=LIMIT), cx("CEA23", 8_000)], **kw)  # type: ignore[arg-type]
    v.fund("M", cash=10**10, CEA24=900, CEA23=900)
    v.fund("S", cash=10**10, CEA24=5_000, CEA23=5_000)
    return v


def new(v: Venue, member: str, side: int, qty: int, price: int, **kw: int) -> NewOrder:
    """A CEA24 order with a fresh client order id."""
    v.coids += 1
    return NewOrder(member, f"n{v.coids}", "CEA24", side, qty, price, **kw)


def test_the_limit_itself_is_reached_and_one_tonne_more_is_rejected() -> None:
    v = venue()
    assert kinds(v.buy("M", 60, 9_900)) == ["Accepted"]
    rej = v.reject(new(v, "M", BUY, 41, 9_900), Reason.POSITION_LIMIT)
    # The text names every figure: limit, instrument, holding, open buys, order, total.
    assert rej.text == "position limit 1000 t in CEA24: holding 900 t + open buys 60 t + 41 t = 1001 t"
    assert kinds(v.buy("M", 40, 9_900)) == ["Accepted"]
    assert v.engine.markets["CEA24"].open_buys == {"M": 100}


def test_sells_and_instruments_without_a_limit_are_not_limited() -> None:
    v = venue()
    assert kinds(v.sell("M", 900, 10_500)) == ["Accepted"]  # a sell never counts
    assert kinds(v.buy("M", 5_000, 7_500, instrument="CEA23")) == ["Accepted"]
    assert v.engine.markets["CEA23"].open_buys == {}  # not kept where there is no limit


def test_an_open_sell_does_not_lower_the_holding() -> None:
    # The holding is the balance, held allowances included: offering them is not selling them.
    v = venue()
    v.sell("M", 900, 10_500)
    v.reject(new(v, "M", BUY, 101, 9_900), Reason.POSITION_LIMIT)


def test_fills_move_quantity_from_open_buys_to_the_holding() -> None:
    v = venue()
    v.buy("M", 100, 9_900)
    out = v.sell("S", 60, 9_900)  # fills 60 of M's resting buy
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.engine.markets["CEA24"].open_buys == {"M": 40}
    assert v.ledger is not None and v.ledger.holding("M", "CEA24") == 960
    v.reject(new(v, "M", BUY, 1, 9_800), Reason.POSITION_LIMIT)  # 960 + 40 + 1
    v.sell("S", 40, 9_900)
    assert v.engine.markets["CEA24"].open_buys == {}
    v.reject(new(v, "M", BUY, 1, 9_800), Reason.POSITION_LIMIT)  # 1000 held
    v.sell("M", 10, 10_500, instrument="CEA24")  # still held: no room yet
    v.reject(new(v, "M", BUY, 1, 9_800), Reason.POSITION_LIMIT)
    v.fund("B", cash=10**9)
    assert kinds(v.buy("B", 10, 10_500)) == ["Accepted", "Trade"]  # the sell fills: M holds 990
    assert kinds(v.buy("M", 10, 9_800)) == ["Accepted"]


def test_an_incoming_buy_counts_its_whole_quantity_and_only_its_rest_stays_open() -> None:
    v = venue()
    v.sell("S", 30, 10_000)
    v.reject(new(v, "M", BUY, 101, 10_000), Reason.POSITION_LIMIT)  # the fill would count too
    out = v.buy("M", 100, 10_000)
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.engine.markets["CEA24"].open_buys == {"M": 70}


def test_market_ioc_and_fok_buys_are_limited_by_their_quantity() -> None:
    v = venue()
    v.sell("S", 500, 10_000)
    for tif in (TimeInForce.IOC, TimeInForce.FOK):
        v.reject(new(v, "M", BUY, 101, 10_000, tif=int(tif)), Reason.POSITION_LIMIT)
    v.reject(new(v, "M", BUY, 101, 0, ord_type=int(OrdType.MARKET)), Reason.POSITION_LIMIT)
    out = v.buy("M", 100, ord_type=OrdType.MARKET, tif=TimeInForce.IOC)
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.engine.markets["CEA24"].open_buys == {}


def test_hit_order_buys_are_limited() -> None:
    v = venue()
    target = v.rest("S", SELL, 300, 10_000)
    rej = v.reject(HitOrder("M", "h1", "CEA24", target, 101), Reason.POSITION_LIMIT)
    assert rej.coid == "h1" and "holding 900 t" in rej.text
    assert kinds(v.send(HitOrder("M", "h2", "CEA24", target, 100))) == ["Accepted", "Trade"]
    # A hit that sells is never limited; the target buy's open quantity falls with the fill.
    v.fund("M2", cash=10**9)
    bid = v.rest("M2", BUY, 500, 9_900)
    assert v.engine.markets["CEA24"].open_buys == {"M2": 500}
    assert kinds(v.send(HitOrder("S", "h3", "CEA24", bid, 200))) == ["Accepted", "Trade"]
    assert v.engine.markets["CEA24"].open_buys == {"M2": 300}


def test_amends_of_buys() -> None:
    v = venue()
    oid = v.rest("M", BUY, 50, 9_900)
    rej = v.reject(Amend("M", oid, 9_900, 101), Reason.POSITION_LIMIT)
    assert rej.order_id == oid and "open buys 50 t + 51 t = 1001 t" in rej.text
    assert kinds(v.send(Amend("M", oid, 9_900, 100))) == ["Amended"]  # up to the limit
    assert kinds(v.send(Amend("M", oid, 9_800, 100))) == ["Amended"]  # a new price, the same quantity
    assert kinds(v.send(Amend("M", oid, 9_800, 30))) == ["Amended"]  # down, priority kept
    assert v.engine.markets["CEA24"].open_buys == {"M": 30}
    v.sell("S", 500, 10_000)
    # A new price that trades: the amended buy fills 30 and nothing rests.
    assert kinds(v.send(Amend("M", oid, 10_000, 30))) == ["Amended", "Trade"]
    assert v.engine.markets["CEA24"].open_buys == {}
    # A sell's amend up is not limited.
    sell = v.rest("M", SELL, 10, 10_500)
    assert kinds(v.send(Amend("M", sell, 10_500, 900))) == ["Amended"]


def test_when_the_holding_is_already_past_the_limit_only_decreases_pass() -> None:
    v = venue()
    oid = v.rest("M", BUY, 100, 9_900)
    v.fund("M", CEA24=500)  # a transfer in: 1,400 held + 100 open
    v.reject(Amend("M", oid, 9_900, 101), Reason.POSITION_LIMIT)
    assert kinds(v.send(Amend("M", oid, 9_900, 99))) == ["Amended"]
    assert kinds(v.send(Amend("M", oid, 9_800, 99))) == ["Amended"]  # no increase: not checked
    v.reject(new(v, "M", BUY, 1, 9_800), Reason.POSITION_LIMIT)


@pytest.mark.parametrize("how", ["cancel", "mass-cancel", "halt", "stp-cancel", "stp-decrement", "expiry", "eod"])
def test_every_removal_of_a_resting_buy_frees_its_room(how: str) -> None:
    v = venue(schedule=Schedule(), start_ns=local_ns(10, 0))
    oid = v.rest("M", BUY, 100, 9_900)
    if how == "cancel":
        v.send(Cancel("M", oid))
    elif how == "mass-cancel":
        v.send(MassCancel("M"))
    elif how == "halt":
        v.send(Halt("CEA24", cancel_orders=True))
        v.send(Resume("CEA24"))
    elif how == "stp-cancel":
        out = v.sell("M", 100, 9_900, stp=Stp.CANCEL_RESTING)
        assert "Cancelled" in kinds(out)
        v.send(Cancel("M", only(out, Accepted)[0].order_id))
    elif how == "stp-decrement":
        out = v.sell("M", 100, 9_900, stp=Stp.DECREMENT)
        assert kinds(out) == ["Accepted", "Decremented", "Decremented"]
    elif how == "expiry":
        v.at(local_ns(9, 30, day=1))
        v.send(Tick())
    else:
        v.send(EndOfDay())
        v.at(local_ns(9, 30, day=1))
    assert v.engine.markets["CEA24"].open_buys == {}
    assert v.engine.order(oid) is None
    assert kinds(v.buy("M", 100, 9_900)) == ["Accepted"]


def test_a_snapshot_restores_the_open_buys_from_the_book() -> None:
    v = venue()
    v.rest("M", BUY, 70, 9_900)
    v.rest("M", BUY, 20, 9_800)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(v.engine.snapshot()), type=EngineSnapshot)
    fresh = Engine(list(m.rules for m in v.engine.markets.values()), v.ledger)
    fresh.restore(snap)
    fresh._check()
    assert fresh.markets["CEA24"].open_buys == {"M": 90}
    assert fresh.state_hash() == v.engine.state_hash()


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="position_max must be 0 .no limit. or positive, got -1"):
        Instrument(symbol="CEA24", ref_price=10_000, position_max=-1).check()
    with pytest.raises(ValueError, match="position limit but the engine has no ledger"):
        Engine([Instrument(symbol="CEA24", ref_price=10_000, holds=False, position_max=10)])
    # Without holds the limit still counts the ledger's holding.
    ledger = SimpleLedger()
    ledger.deposit("M", "CEA24", 10)
    engine = Engine([Instrument(symbol="CEA24", ref_price=10_000, holds=False, position_max=10)], ledger)
    assert engine.markets["CEA24"].position_max == 10

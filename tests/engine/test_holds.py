"""Pre-trade holds through the ledger: taken on entry, consumed by fills, released by
cancels, IOC rests and expiry; instruments without holds."""

from __future__ import annotations

from engine import (
    CASH,
    Cancel,
    EndOfDay,
    Engine,
    Instrument,
    ManualClock,
    NewOrder,
    OrdType,
    Sequencer,
    Side,
    Tick,
    TimeInForce,
    Trade,
)
from tests.engine.harness import Venue, cx, kinds, only

BUY, SELL = Side.BUY, Side.SELL


def venue() -> Venue:
    v = Venue([cx("CEA24", 10_000), cx("FREE", 500, holds=False)])
    v.fund("A", cash=1_000_000, CEA24=100)
    v.fund("B", cash=1_000_000, CEA24=100)
    return v


def test_a_buy_holds_price_times_quantity() -> None:
    v = venue()
    v.rest("A", BUY, 10, 9_500)
    assert v.held("A") == 95_000 and v.available("A") == 905_000
    v.rest("A", BUY, 5, 9_600)
    assert v.held("A") == 95_000 + 48_000


def test_a_sell_holds_the_allowances() -> None:
    v = venue()
    v.rest("A", SELL, 30, 10_500)
    assert v.held("A", "CEA24") == 30 and v.available("A", "CEA24") == 70
    assert v.held("A") == 0


def test_a_fill_at_a_better_price_returns_the_difference() -> None:
    v = venue()
    v.rest("B", SELL, 10, 9_800)
    v.buy("A", 10, 10_000)
    assert v.held("A") == 0
    assert v.available("A") == 1_000_000 - 98_000
    assert v.available("B") == 1_000_000 + 98_000
    assert v.ledger is not None
    assert v.ledger.balance[("A", "CEA24")] == 110 and v.ledger.balance[("B", "CEA24")] == 90
    assert v.held("B", "CEA24") == 0


def test_partial_fills_consume_the_hold_step_by_step() -> None:
    v = venue()
    oid = v.rest("A", BUY, 10, 10_000)
    v.sell("B", 3, 9_000)
    assert v.held("A") == 7 * 10_000
    v.sell("B", 3, 9_000)
    assert v.held("A") == 4 * 10_000
    v.send(Cancel("A", oid))
    assert v.held("A") == 0
    assert v.available("A") == 1_000_000 - 6 * 10_000


def test_a_resting_sell_consumed_by_fills() -> None:
    v = venue()
    v.rest("A", SELL, 10, 10_000)
    v.buy("B", 4, 10_100)
    assert v.held("A", "CEA24") == 6
    assert v.available("A") == 1_040_000


def test_ioc_rest_releases_the_hold() -> None:
    v = venue()
    v.rest("B", SELL, 2, 10_000)
    out = v.buy("A", 10, 10_050, tif=TimeInForce.IOC)
    assert kinds(out) == ["Accepted", "Trade", "Cancelled"]
    assert v.held("A") == 0 and v.available("A") == 1_000_000 - 20_000


def test_a_market_buy_holds_at_the_band_limit_and_pays_the_resting_price() -> None:
    v = venue()
    v.fund("M", cash=110_000)  # exactly 10 t at the band's high, 11,000
    v.rest("B", SELL, 10, 9_000)
    out = v.buy("M", 10, ord_type=OrdType.MARKET)
    assert only(out, Trade)[0].price == 9_000
    assert v.available("M") == 20_000 and v.held("M") == 0


def test_a_market_sell_holds_its_quantity() -> None:
    v = venue()
    v.fund("S", CEA24=5)
    v.rest("A", BUY, 3, 9_500)
    out = v.sell("S", 5, ord_type=OrdType.MARKET)
    assert kinds(out) == ["Accepted", "Trade", "Cancelled"]
    assert v.held("S", "CEA24") == 0 and v.available("S", "CEA24") == 2
    assert v.available("S") == 28_500


def test_cash_from_a_sale_can_buy_the_same_day() -> None:
    v = venue()
    v.fund("S", CEA24=10)
    v.rest("A", BUY, 10, 10_000)
    v.sell("S", 10, 10_000)
    assert v.available("S") == 100_000
    assert kinds(v.buy("S", 10, 10_000)) == ["Accepted"]


def test_expiry_at_end_of_day_releases_every_hold() -> None:
    v = venue()
    v.rest("A", BUY, 10, 9_500)
    v.rest("A", SELL, 10, 10_500)
    out = v.send(EndOfDay())
    assert kinds(out)[:2] == ["Expired", "Expired"]
    assert v.held("A") == 0 and v.held("A", "CEA24") == 0


def test_an_instrument_without_holds_takes_none_and_settles_nothing() -> None:
    v = venue()
    # NOBODY has no cash and no allowances: without holds the order is still accepted.
    v.rest("NOBODY", SELL, 10, 500, instrument="FREE")
    out = v.buy("A", 10, 500, instrument="FREE")
    assert kinds(out) == ["Accepted", "Trade"]
    assert v.ledger is not None
    assert v.available("A") == 1_000_000 and v.held("A") == 0
    assert ("NOBODY", "FREE") not in v.ledger.balance


def test_an_engine_without_a_ledger_runs_instruments_without_holds() -> None:
    clock = ManualClock(0)
    seq = Sequencer(clock)
    eng = Engine([Instrument(symbol="X", ref_price=1_000, holds=False)])
    eng.apply(seq.stamp(NewOrder("A", "1", "X", SELL, 5, 1_000)))
    eng.apply(seq.stamp(NewOrder("B", "1", "X", BUY, 5, 1_000)))
    eng._check()
    assert [type(e).__name__ for e in eng.out] == ["StatusChanged", "Accepted", "Accepted", "Trade"]
    assert eng.state()[-1] == []  # no ledger, nothing in the hash for it


def test_holds_follow_each_fill_of_a_sweep() -> None:
    v = venue()
    v.rest("B", SELL, 1, 9_100)
    v.rest("B", SELL, 1, 9_500)
    oid = v.rest("A", BUY, 1, 9_000)
    out = v.buy("A", 5, 10_000, tif=TimeInForce.DAY)
    assert [t.price for t in only(out, Trade)] == [9_100, 9_500]
    assert v.held("A") == 9_000 + 3 * 10_000
    assert v.ledger is not None and v.ledger.balance[("A", CASH)] == 1_000_000 - 18_600
    assert v.engine.order(oid) is not None


def test_a_ledger_derives_from_hold_ledger() -> None:
    """The engine calls its ledger natively (compiled, through the class's vtable): an
    object that only looks like a ledger is refused when the engine is built, naming
    the class to derive from, instead of failing at the first order."""
    import pytest

    from engine.ledger import HoldLedger

    class LooksLikeOne:
        def cash_required(self, notional: int) -> int:
            return notional

    with pytest.raises(TypeError, match=r"engine\.ledger\.HoldLedger.*LooksLikeOne"):
        Engine([cx("CEA24", 10_000)], LooksLikeOne())  # type: ignore[arg-type]

    class Interpreted(HoldLedger):
        def cash_required(self, notional: int) -> int:
            return notional

        def hold(self, account: str, asset: str, amount: int) -> bool:
            return False

    engine = Engine([cx("CEA24", 10_000)], Interpreted())
    engine.process(Tick(seq=1, ts=0))
    got = engine.process(NewOrder("A", "1", "CEA24", 1, 10, 10_000, seq=2, ts=1))
    assert [type(e).__name__ for e in got] == ["Rejected"] and got[0].reason == 8  # type: ignore[attr-defined]

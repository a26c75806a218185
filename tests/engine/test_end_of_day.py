"""End of day: DAY orders expire, the closing price (VWAP to the tick) is fixed and the
next day's reference price and band roll from it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from engine import (
    DayClosed,
    EndOfDay,
    Expired,
    HitOrder,
    NewOrder,
    Reason,
    Schedule,
    Side,
)
from tests.engine.harness import Venue, cx, kinds, local_ns, only

BUY, SELL = Side.BUY, Side.SELL


def venue(tick: int = 1, ref: int = 10_000) -> Venue:
    v = Venue([cx("CEA24", ref, tick=tick), cx("CEA23", 8_000)])
    for m in ("A", "B"):
        v.fund(m, cash=10**10, CEA24=100_000, CEA23=100_000)
    return v


def trade(v: Venue, qty: int, price: int) -> None:
    v.rest("A", SELL, qty, price)
    v.buy("B", qty, price)


def closes(out: Sequence[object]) -> dict[str, DayClosed]:
    return {e.instrument: e for e in out if isinstance(e, DayClosed)}


def test_end_of_day_expires_day_orders_and_rolls_the_band() -> None:
    v = venue()
    trade(v, 100, 10_000)
    trade(v, 300, 10_200)
    b = v.rest("A", BUY, 5, 9_500)
    s = v.rest("B", SELL, 5, 10_500)
    out = v.send(EndOfDay())
    assert kinds(out) == ["Expired", "Expired", "DayClosed", "DayClosed"]
    assert [(e.order_id, e.qty) for e in only(out, Expired)] == [(b, 5), (s, 5)]
    day = closes(out)["CEA24"]
    # VWAP = (100 x 10,000 + 300 x 10,200) / 400 = 10,150
    assert (day.open_price, day.close_price, day.volume, day.value) == (10_000, 10_150, 400, 4_060_000)
    assert (day.next_ref_price, day.next_band_low, day.next_band_high) == (10_150, 9_135, 11_165)
    market = v.engine.markets["CEA24"]
    assert (market.ref_price, market.low, market.high) == (10_150, 9_135, 11_165)
    assert market.stats()["volume"] == 0 and market.stats()["open"] == 0
    assert v.engine.orders == {} and v.held("A") == 0 and v.held("B", "CEA24") == 0
    assert v.engine.day == 2


def test_without_trades_the_previous_close_carries() -> None:
    # The close carries the previous close (even off the tick, as configured), and so
    # does the day's opening price: DOMAIN.md, "No trade: both carry the previous close".
    v = venue(ref=10_001, tick=5)
    out = v.send(EndOfDay())
    day = closes(out)["CEA24"]
    assert (day.open_price, day.close_price, day.volume, day.value) == (10_001, 10_001, 0, 0)
    assert (day.next_ref_price, day.next_band_low, day.next_band_high) == (10_001, 9_005, 11_000)
    other = closes(out)["CEA23"]
    assert (other.close_price, other.next_band_low, other.next_band_high) == (8_000, 7_200, 8_800)


@pytest.mark.parametrize(
    ("fills", "close"),
    [
        ([(100, 10_000), (100, 10_005)], 10_005),  # 10,002.5: half a tick rounds up
        ([(1, 10_000), (2, 10_005)], 10_005),  # 10,003.33
        ([(2, 10_000), (1, 10_005)], 10_000),  # 10,001.67
        ([(3, 9_995), (1, 10_010)], 10_000),  # 9,998.75
        ([(7, 10_010)], 10_010),
    ],
)
def test_the_close_is_the_vwap_rounded_to_the_tick(fills: list[tuple[int, int]], close: int) -> None:
    v = venue(tick=5)
    for qty, price in fills:
        trade(v, qty, price)
    day = closes(v.send(EndOfDay()))["CEA24"]
    assert day.close_price == close
    assert day.open_price == fills[0][1]
    assert day.volume == sum(q for q, _ in fills) and day.value == sum(q * p for q, p in fills)


def test_the_next_day_trades_in_the_new_band() -> None:
    v = venue()
    trade(v, 10, 11_000)  # the top of the band
    v.send(EndOfDay())
    assert v.engine.markets["CEA24"].high == 12_100
    assert kinds(v.buy("B", 1, 12_100)) == ["Accepted"]
    v.reject(NewOrder("B", "x", "CEA24", BUY, 1, 9_000), Reason.PRICE_OUTSIDE_BAND)


def test_client_order_ids_can_be_used_again_the_next_day() -> None:
    v = venue()
    v.send(NewOrder("A", "same", "CEA24", BUY, 1, 9_500))
    v.reject(NewOrder("A", "same", "CEA24", BUY, 1, 9_500), Reason.DUPLICATE_CLIENT_ORDER_ID)
    v.send(EndOfDay())
    assert kinds(v.send(NewOrder("A", "same", "CEA24", BUY, 1, 9_500))) == ["Accepted"]


def test_a_hit_order_counts_towards_the_close() -> None:
    v = venue()
    v.rest("A", SELL, 10, 10_000)
    target = v.rest("A", SELL, 10, 10_100)
    v.send(HitOrder("B", "h", "CEA24", target, 10))
    day = closes(v.send(EndOfDay()))["CEA24"]
    assert (day.open_price, day.close_price, day.volume) == (10_100, 10_100, 10)


def test_two_days_in_a_row() -> None:
    v = venue()
    trade(v, 10, 10_500)
    v.send(EndOfDay())
    trade(v, 10, 11_000)
    out = v.send(EndOfDay())
    day = closes(out)["CEA24"]
    assert (day.close_price, day.next_band_low, day.next_band_high) == (11_000, 9_900, 12_100)
    assert v.engine.day == 3


def test_end_of_day_is_accepted_in_any_phase() -> None:
    """The engine accepts EndOfDay even during continuous trading (it expires what
    rests and rolls the day). The operator's tooling is expected to send EndOfDay after
    the close."""
    v = Venue([cx()], schedule=Schedule(), start_ns=local_ns(10, 0))
    v.fund("A", cash=10**8)
    v.rest("A", BUY, 1, 9_990)
    out = v.send(EndOfDay())
    assert kinds(out) == ["Expired", "DayClosed"]
    assert v.engine.markets["CEA24"].phase == 1

"""Instrument rules and the trading schedule.

An instrument (one allowance vintage, e.g. CEA24) has a tick, a lot, order size limits,
a reference price (the previous close) and a price band around it. The band is rounded
inwards to the tick, so no price outside the limit can ever trade. An instrument with
``band_bps == 0`` has no band; it then trades between the fixed ``price_min`` and
``price_max`` instead (replays of foreign flow, tests). ``position_max`` (tonnes, 0 =
none) caps what a member may hold of it: a buy is rejected when the member's holding
plus its open buy quantity plus the order's would pass it.

The schedule is a list of daily windows in local minutes after midnight (the national
market's listing mode: 09:30-11:30 and 13:00-15:00, UTC+8). Phase changes are computed
from the sequencer's timestamps, never from a wall clock.
"""

from __future__ import annotations

import msgspec

from engine.messages import SYMBOL_MAX

NS_PER_MINUTE = 60_000_000_000
NS_PER_DAY = 1440 * NS_PER_MINUTE


class Instrument(msgspec.Struct, kw_only=True):
    symbol: str
    ref_price: int  # previous close, in price units (fen)
    tick: int = 1  # price step, in price units
    lot: int = 1  # quantity step, in tonnes
    qty_min: int = 1
    qty_max: int = 99_999  # listing mode: under 100,000 t
    band_bps: int = 1000  # +-10 % of the reference price; 0 = no band
    price_min: int = 1  # used only without a band
    price_max: int = 0  # used only without a band (must then be set)
    holds: bool = True  # pre-trade holds; False only for replays and benchmarks
    position_max: int = 0  # tonnes a member may hold and have open to buy; 0 = no limit
    block_min: int = 100_000  # tonnes: the smallest block agreement offer
    block_band_bps: int = 3000  # a block offer's price within +-30 % of the previous close

    def check(self) -> None:
        """Raise ValueError naming the first rule that does not hold."""
        if not self.symbol:
            raise ValueError("instrument symbol is empty")
        if len(self.symbol) > SYMBOL_MAX:
            raise ValueError(f"instrument symbol {self.symbol[:SYMBOL_MAX]}... is longer than {SYMBOL_MAX} characters")
        for name in ("tick", "lot", "qty_min", "ref_price"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.symbol}: {name} must be positive, got {getattr(self, name)}")
        if self.position_max < 0:
            raise ValueError(f"{self.symbol}: position_max must be 0 (no limit) or positive, got {self.position_max}")
        if self.block_min <= 0:
            raise ValueError(f"{self.symbol}: block_min must be positive, got {self.block_min}")
        if not 0 < self.block_band_bps < 10_000:
            raise ValueError(f"{self.symbol}: block_band_bps must be in (0, 10000), got {self.block_band_bps}")
        if self.qty_max < self.qty_min:
            raise ValueError(f"{self.symbol}: qty_max {self.qty_max} < qty_min {self.qty_min}")
        if not 0 <= self.band_bps < 10_000:
            raise ValueError(f"{self.symbol}: band_bps must be in [0, 10000), got {self.band_bps}")
        lo, hi = self.band()
        if lo <= 0:
            raise ValueError(f"{self.symbol}: the lowest price must be positive, got {lo}")
        if lo > hi:
            raise ValueError(f"{self.symbol}: empty price range [{lo}, {hi}]")
        if hi - lo > 2_000_000:
            raise ValueError(f"{self.symbol}: price range [{lo}, {hi}] wider than 2,000,000 units")

    def block_band(self, ref_price: int | None = None) -> tuple[int, int]:
        """The lowest and highest block offer price, on the tick, within block_band_bps
        of the reference price (the previous close)."""
        ref = self.ref_price if ref_price is None else ref_price
        hi = ref * (10_000 + self.block_band_bps) // 10_000
        lo = -(-ref * (10_000 - self.block_band_bps) // 10_000)
        tick = self.tick
        return max(-(-lo // tick) * tick, tick), hi // tick * tick

    def band(self, ref_price: int | None = None) -> tuple[int, int]:
        """The lowest and highest tradable price, on the tick, inside the limit."""
        if not self.band_bps:
            tick = self.tick
            return -(-self.price_min // tick) * tick, self.price_max // tick * tick
        ref = self.ref_price if ref_price is None else ref_price
        hi = ref * (10_000 + self.band_bps) // 10_000
        lo = -(-ref * (10_000 - self.band_bps) // 10_000)
        tick = self.tick
        return max(-(-lo // tick) * tick, tick), hi // tick * tick


NATIONAL_WINDOWS = ((9 * 60 + 30, 11 * 60 + 30), (13 * 60, 15 * 60))


class Schedule(msgspec.Struct, kw_only=True):
    """Continuous trading windows, local minutes after midnight, in order."""

    windows: list[tuple[int, int]] = msgspec.field(default_factory=lambda: list(NATIONAL_WINDOWS))
    utc_offset_minutes: int = 8 * 60

    def check(self) -> None:
        last = 0
        for start, end in self.windows:
            if not (last <= start < end <= 1440):
                raise ValueError(f"schedule windows must be ordered and within a day, got {self.windows}")
            last = end

    def state_at(self, ts: int) -> tuple[bool, int, bool]:
        """(open, ts of the next change, whether the next change is the day's close)."""
        offset = self.utc_offset_minutes * NS_PER_MINUTE
        local = ts + offset
        midnight = local - local % NS_PER_DAY
        into = local - midnight
        for start, end in self.windows:
            s, e = start * NS_PER_MINUTE, end * NS_PER_MINUTE
            if into < s:
                return False, midnight + s - offset, False
            if into < e:
                last = (start, end) == tuple(self.windows[-1])
                return True, midnight + e - offset, last
        first = self.windows[0][0] * NS_PER_MINUTE if self.windows else NS_PER_DAY
        return False, midnight + NS_PER_DAY + first - offset, False


ALWAYS_OPEN = Schedule(windows=[(0, 1440)], utc_offset_minutes=0)

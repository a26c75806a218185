"""The msgspec Structs of the settlement ledger and the exchange core: the fee
configuration and the snapshots.

They live in this interpreted module because ``settlement/ledger.py`` and
``settlement/exchange.py`` are compiled with mypyc (setup.py), which would build
Structs defined there without their class options and with their field types erased
(see docs/engine.md, "Speed").
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from engine.structs import EngineSnapshot
from settlement.messages import AccountState, ComplianceState, ObligationState

PPM: Final = 1_000_000  # fee rates are in parts per million
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


class Fees(msgspec.Struct, kw_only=True, frozen=True):
    """Fee rates (parts per million of the notional, charged to each side) and the
    system accounts the ledger keeps."""

    trading_ppm: int = 0
    settlement_ppm: int = 0
    reserve_share_ppm: int = 0  # part of the trading fees that goes to the risk reserve
    exchange_account: str = "EXCHANGE-FEES"
    registry_account: str = "REGISTRY-FEES"
    reserve_account: str = "RISK-RESERVE"
    authority_account: str = "AUTHORITY"

    def check(self) -> None:
        for name in ("trading_ppm", "settlement_ppm", "reserve_share_ppm"):
            value = getattr(self, name)
            if not 0 <= value <= PPM:
                raise ValueError(f"fees: {name} must be in [0, {PPM}], got {value}")
        if self.trading_ppm + self.settlement_ppm >= PPM:
            raise ValueError("fees: trading_ppm + settlement_ppm must be below 1,000,000 (the seller's fees "
                             "must leave proceeds)")
        names = self.system_accounts()
        if len(set(names)) != len(names):
            raise ValueError(f"fees: system accounts must differ, got {names}")
        for account in names:
            if not _ACCOUNT_ID.fullmatch(account):
                raise ValueError(f"fees: invalid system account id {account!r}")

    def system_accounts(self) -> list[str]:
        return [self.exchange_account, self.registry_account, self.reserve_account, self.authority_account]


class Benchmark(msgspec.Struct, kw_only=True, frozen=True):
    """An industry's allocation benchmark for one year: tonnes of allowances per unit of
    output, and the adjustment factors, each in millionths."""

    industry: str
    year: int
    intensity_ppm: int  # 0.8218 t/MWh is 821_800
    factors_ppm: tuple[int, ...] = ()  # each multiplies the allocation: 1.0 is 1_000_000


class ComplianceRules(msgspec.Struct, kw_only=True, frozen=True):
    """The compliance year's rules (configuration; see docs/registry.md)."""

    industries: tuple[str, ...] = ("power", "cement", "steel", "aluminium")
    benchmarks: tuple[Benchmark, ...] = ()
    pre_allocation_pct: int = 70  # share of the computed allocation given before verification
    penalty_multiple_ppm: int = 3 * PPM  # the penalty per missing tonne, in multiples of the average price
    banking_base: int = 10_000  # tonnes an entity may always carry over a vintage roll
    banking_sold_ppm: int = 1_500_000  # plus this multiple of its net allowances sold in the cycle
    deadline_month: int = 12  # the surrender deadline of year Y: this day of year Y + deadline_years_after
    deadline_day: int = 31
    deadline_years_after: int = 1
    utc_offset_minutes: int = 8 * 60  # the deadline's day ends at midnight in this time zone

    def check(self) -> None:
        import datetime

        if not 0 <= self.pre_allocation_pct <= 100:
            raise ValueError(f"compliance: pre_allocation_pct must be in [0, 100], got {self.pre_allocation_pct}")
        for name in ("penalty_multiple_ppm", "banking_base", "banking_sold_ppm", "deadline_years_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"compliance: {name} must be at least 0, got {getattr(self, name)}")
        try:
            datetime.date(2024, self.deadline_month, self.deadline_day)
        except ValueError:
            raise ValueError(f"compliance: deadline {self.deadline_month}-{self.deadline_day} is not a date") from None
        seen = set()
        for b in self.benchmarks:
            if b.industry not in self.industries:
                raise ValueError(f"compliance: benchmark for unknown industry {b.industry!r} "
                                 f"(industries: {', '.join(self.industries)})")
            if (b.industry, b.year) in seen:
                raise ValueError(f"compliance: two benchmarks for {b.industry} {b.year}")
            seen.add((b.industry, b.year))
            if b.intensity_ppm <= 0 or any(f <= 0 for f in b.factors_ppm):
                raise ValueError(f"compliance: benchmark {b.industry} {b.year}: intensity and factors must be positive")

    def benchmark(self, industry: str, year: int) -> Benchmark | None:
        for b in self.benchmarks:
            if b.industry == industry and b.year == year:
                return b
        return None

    def entitlement(self, b: Benchmark, output: int) -> int:
        """Output x intensity x factors, in whole tonnes (rounded down, exactly)."""
        num, den = output * b.intensity_ppm, PPM
        for f in b.factors_ppm:
            num, den = num * f, den * PPM
        return num // den

    def deadline_passed_at(self, year: int) -> int:
        """The first instant (ns since the epoch) after year ``year``'s surrender deadline."""
        import datetime

        tz = datetime.timezone(datetime.timedelta(minutes=self.utc_offset_minutes))
        day = datetime.datetime(year + self.deadline_years_after, self.deadline_month, self.deadline_day, tzinfo=tz)
        return int((day + datetime.timedelta(days=1)).timestamp()) * 1_000_000_000


class LedgerSnapshot(msgspec.Struct, array_like=True):
    day: int
    accounts: list[AccountState]
    entries: list[tuple[str, str, int, int, int, int]]
    obligations: list[ObligationState]
    totals: list[tuple[str, str, int]]  # (counter, asset, amount)
    compliance: list[ComplianceState] = []
    cycle: tuple[int, int] = (0, 0)  # value (fen) and tonnes of allowance trades since the last close
    sold: list[tuple[str, int]] = []  # per account: allowances sold less bought since the last close


class ExchangeSnapshot(msgspec.Struct, array_like=True):
    engine: EngineSnapshot
    ledger: LedgerSnapshot

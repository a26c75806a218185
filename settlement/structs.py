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
from settlement.messages import AccountState, ObligationState

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


class LedgerSnapshot(msgspec.Struct, array_like=True):
    day: int
    accounts: list[AccountState]
    entries: list[tuple[str, str, int, int, int, int]]
    obligations: list[ObligationState]
    totals: list[tuple[str, str, int]]  # (counter, asset, amount)


class ExchangeSnapshot(msgspec.Struct, array_like=True):
    engine: EngineSnapshot
    ledger: LedgerSnapshot

"""etx settlement: the in-memory ledger (balances, holds, T+1), delivery versus payment
of each trade with fees, registry operations, the registry store (SQLite or
PostgreSQL) and its settler, audit and the ``etx registry`` tools. It may import the
engine; the engine never imports it."""

from settlement.exchange import Exchange, ExchangeSnapshot
from settlement.ledger import Fees, Ledger, LedgerError, LedgerSnapshot, vintage
from settlement.messages import (
    AccountState,
    AccountStatus,
    Allocate,
    AnyPosting,
    Deposit,
    HolderType,
    ObligationState,
    OpenAccount,
    Posting,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    SettleDay,
    Surrender,
    SuspendAccount,
    TradePosting,
    Transfer,
    Withdraw,
)

__all__ = [
    "AccountState", "AccountStatus", "Allocate", "AnyPosting", "Deposit", "Exchange", "ExchangeSnapshot", "Fees",
    "HolderType", "Ledger", "LedgerError", "LedgerSnapshot", "ObligationState", "OpenAccount", "Posting",
    "RegistryDone", "RegistryReason", "RegistryRejected", "ReinstateAccount", "Retire", "SetObligation",
    "SettleDay", "Surrender", "SuspendAccount", "TradePosting", "Transfer", "Withdraw", "vintage",
]

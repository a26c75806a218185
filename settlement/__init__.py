"""etx settlement: the in-memory ledger (balances, holds, T+1), delivery versus payment
of each trade with fees, registry operations, the registry store (SQLite or
PostgreSQL) and its settler, audit and the ``etx registry`` tools. It may import the
engine; the engine never imports it."""

from settlement.exchange import Exchange
from settlement.ledger import Ledger, LedgerError, allowance, vintage
from settlement.messages import (
    AccountState,
    AccountStatus,
    Allocate,
    AnyPosting,
    ApproveVerification,
    CloseCompliance,
    ComplianceState,
    Deposit,
    HolderType,
    ObligationState,
    OpenAccount,
    Posting,
    PreAllocate,
    RegistryDone,
    RegistryReason,
    RegistryRejected,
    ReinstateAccount,
    Retire,
    SetObligation,
    SettleDay,
    SubmitVerification,
    Surrender,
    SuspendAccount,
    TradePosting,
    Transfer,
    Withdraw,
)
from settlement.structs import Benchmark, ComplianceRules, ExchangeSnapshot, Fees, LedgerSnapshot

__all__ = [
    "AccountState", "AccountStatus", "Allocate", "AnyPosting", "ApproveVerification", "Benchmark", "CloseCompliance",
    "ComplianceRules", "ComplianceState", "Deposit", "Exchange", "ExchangeSnapshot", "Fees",
    "HolderType", "Ledger", "LedgerError", "LedgerSnapshot", "ObligationState", "OpenAccount", "Posting",
    "PreAllocate", "RegistryDone", "RegistryReason", "RegistryRejected", "ReinstateAccount", "Retire", "SetObligation",
    "SettleDay", "SubmitVerification", "Surrender", "SuspendAccount", "TradePosting", "Transfer", "Withdraw", "allowance", "vintage",
]

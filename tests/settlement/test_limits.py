"""Two rules of the registry's money, each from a finding of issue 9.

- Every asset's total in the registry is capped at BALANCE_MAX, so that no balance can
  leave the store's exact integer range (9,300 deposits of CNY 10^13 used to make a
  balance a float in SQLite, and the audit and ``etx registry balances`` then failed).
- A purchase spends today's sale proceeds first: they may buy at once but only be
  withdrawn after the end-of-day settlement, so spending them first leaves the member
  as much withdrawable cash as possible (docs/registry.md says so).
"""

from __future__ import annotations

from typing import Any

from engine import NewOrder, Side
from settlement import Allocate, Deposit, Fees, HolderType, OpenAccount, RegistryDone, RegistryRejected, Withdraw
from settlement.ledger import AMOUNT_MAX, BALANCE_MAX
from settlement.messages import RegistryReason
from tests.settlement.helpers import Market


def test_deposits_stop_at_the_cash_maximum(store: Any) -> None:
    m = Market()
    m.send(OpenAccount("clerk", "M003", int(HolderType.COMPLIANCE), "M003"))
    deposits = BALANCE_MAX // AMOUNT_MAX
    for _ in range(deposits):
        (ev,) = [e for e in m.send(Deposit("clerk", "M003", AMOUNT_MAX)) if type(e) is RegistryDone]
    before = m.ledger.snapshot()
    (refused,) = [e for e in m.send(Deposit("clerk", "M003", 1)) if type(e) is RegistryRejected]
    assert refused.reason == RegistryReason.LIMIT_EXCEEDED
    assert "would pass the maximum of 1000000000000000.00" in refused.text, refused.text
    assert m.ledger.snapshot() == before and m.ledger.entry("M003", "CNY")[0] == BALANCE_MAX
    # Withdrawing makes room again.
    assert any(type(e) is RegistryDone for e in m.send(Withdraw("clerk", "M003", 5)))
    assert any(type(e) is RegistryDone for e in m.send(Deposit("clerk", "M003", 5)))
    # The store holds every balance as an exact integer, and reads back equal.
    store.write_batch(m.ledger.take_postings(), m.exchange.last_seq)
    assert ("M003", "CNY", BALANCE_MAX, 0) in store.balances()
    assert store.load_ledger().entry("M003", "CNY") == (BALANCE_MAX, 0, 0, 0)


def test_allocation_stops_at_the_allowance_maximum() -> None:
    m = Market()
    m.send(OpenAccount("clerk", "A", int(HolderType.COMPLIANCE), "A"), OpenAccount("clerk", "B", int(HolderType.COMPLIANCE), "B"))
    for _ in range(BALANCE_MAX // AMOUNT_MAX):
        m.send(Allocate("mee", "AUTHORITY", "A", "CEA24", AMOUNT_MAX))
    (refused,) = [e for e in m.send(Allocate("mee", "AUTHORITY", "B", "CEA24", 1)) if type(e) is RegistryRejected]
    assert refused.reason == RegistryReason.LIMIT_EXCEEDED and "CEA24" in refused.text
    # Another vintage has its own room.
    assert any(type(e) is RegistryDone for e in m.send(Allocate("mee", "AUTHORITY", "B", "CEA23", 1)))


def test_a_purchase_spends_todays_proceeds_first() -> None:
    m = Market(Fees())  # no fees: the numbers stay round
    m.send(OpenAccount("clerk", "A", int(HolderType.COMPLIANCE), "A"), OpenAccount("clerk", "B", int(HolderType.COMPLIANCE), "B"),
           Deposit("clerk", "A", 70_000), Deposit("clerk", "B", 1_000_000),
           Allocate("mee", "AUTHORITY", "A", "CEA24", 10), Allocate("mee", "AUTHORITY", "B", "CEA24", 10))
    # A sells 3 t at CNY 100.00: 300.00 of today's proceeds on a balance of 1,000.00.
    m.send(NewOrder("A", "s", "CEA24", int(Side.SELL), 3, 10_000), NewOrder("B", "b", "CEA24", int(Side.BUY), 3, 10_000))
    assert m.ledger.entry("A", "CNY") == (100_000, 0, 0, 30_000)
    # A buys 2 t for 200.00: paid from the proceeds, 100.00 of them left.
    m.send(NewOrder("B", "s2", "CEA24", int(Side.SELL), 2, 10_000), NewOrder("A", "b2", "CEA24", int(Side.BUY), 2, 10_000))
    assert m.ledger.entry("A", "CNY") == (80_000, 0, 0, 10_000)
    assert m.ledger.withdrawable("A") == 70_000
    # A purchase larger than the proceeds spends all of them, then settled cash.
    m.send(NewOrder("B", "s3", "CEA24", int(Side.SELL), 3, 10_000), NewOrder("A", "b3", "CEA24", int(Side.BUY), 3, 10_000))
    assert m.ledger.entry("A", "CNY") == (50_000, 0, 0, 0)
    assert m.ledger.withdrawable("A") == 50_000
    m.exchange._check()

"""The ledger protocol the engine needs for pre-trade holds, and a simple in-memory one.

No short selling and no credit: before an order may rest or trade, the engine holds the
buyer's cash (``cash_required(price * qty)``: the notional plus whatever allowance the
ledger keeps for fees) or the seller's allowances. Fills consume holds through
``settle``; cancels, expiry and IOC rests ``release`` them.

``settlement.Ledger`` is the real implementation (fees, T+1, registry). ``SimpleLedger``
here is just enough for the engine's own tests and replays: balances and holds, no fees.
"""

from __future__ import annotations

from typing import Protocol

from engine.messages import Side, Trade

CASH = "CNY"


class HoldLedger(Protocol):
    def cash_required(self, notional: int) -> int:
        """Cash to hold for a buy of this notional (fen): notional plus a fee allowance.
        Must be monotonic and satisfy ``cash_required(a) - cash_required(b)`` >= the
        cost of a fill of notional ``a - b`` (fees included) for ``a >= b``."""
        ...

    def hold(self, account: str, asset: str, amount: int) -> bool:
        """Hold ``amount`` of the account's available ``asset``; False (and no change)
        when the available amount is smaller."""
        ...

    def release(self, account: str, asset: str, amount: int) -> None:
        """Return ``amount`` of held ``asset`` to available. Never more than is held."""
        ...

    def settle(self, trade: Trade, buyer_hold: int) -> None:
        """Settle one fill: ``buyer_hold`` is the part of the buyer's held cash that this
        fill frees; it pays the trade's cost and fees and the rest returns to available.
        The seller's held allowances (``trade.qty``) move to the buyer."""
        ...

    def end_of_day(self) -> None:
        """The trading day closed (T+1 quantities become sellable, and so on)."""
        ...

    def state(self) -> list[tuple[str, str, int, int]]:
        """(account, asset, balance, held) for every non-zero entry, sorted: the part
        of the ledger that the engine's state hash covers."""
        ...


class SimpleLedger:
    """Balances and holds per (account, asset); fees are zero."""

    __slots__ = ("balance", "held")

    def __init__(self) -> None:
        self.balance: dict[tuple[str, str], int] = {}
        self.held: dict[tuple[str, str], int] = {}

    def deposit(self, account: str, asset: str, amount: int) -> None:
        assert amount >= 0
        key = (account, asset)
        self.balance[key] = self.balance.get(key, 0) + amount

    def available(self, account: str, asset: str) -> int:
        key = (account, asset)
        return self.balance.get(key, 0) - self.held.get(key, 0)

    def cash_required(self, notional: int) -> int:
        return notional

    def hold(self, account: str, asset: str, amount: int) -> bool:
        key = (account, asset)
        held = self.held.get(key, 0)
        if self.balance.get(key, 0) - held < amount:
            return False
        self.held[key] = held + amount
        return True

    def release(self, account: str, asset: str, amount: int) -> None:
        key = (account, asset)
        held = self.held[key] - amount
        assert held >= 0, (key, amount)
        self.held[key] = held

    def settle(self, trade: Trade, buyer_hold: int) -> None:
        if trade.aggressor == Side.BUY:
            buyer, seller = trade.taker_member, trade.maker_member
        else:
            buyer, seller = trade.maker_member, trade.taker_member
        cost = trade.price * trade.qty
        assert buyer_hold >= cost, (trade, buyer_hold)
        balance, held = self.balance, self.held
        bc, sc = (buyer, CASH), (seller, CASH)
        ba, sa = (buyer, trade.instrument), (seller, trade.instrument)
        held[bc] -= buyer_hold
        balance[bc] -= cost
        balance[sc] = balance.get(sc, 0) + cost
        held[sa] -= trade.qty
        balance[sa] -= trade.qty
        balance[ba] = balance.get(ba, 0) + trade.qty
        assert held[bc] >= 0 and held[sa] >= 0 and balance[bc] >= held[bc], trade

    def end_of_day(self) -> None:
        pass

    def state(self) -> list[tuple[str, str, int, int]]:
        keys = sorted(set(self.balance) | set(self.held))
        out = []
        for key in keys:
            b, h = self.balance.get(key, 0), self.held.get(key, 0)
            if b or h:
                out.append((key[0], key[1], b, h))
        return out

"""The ledger protocol the engine needs for pre-trade holds, and a simple in-memory one.

No short selling and no credit: before an order may rest or trade, the engine holds the
buyer's cash (``cash_required(price * qty)``: the notional plus whatever allowance the
ledger keeps for fees) or the seller's allowances. Fills consume holds through
``settle``; cancels, expiry and IOC rests ``release`` them. Position limits read a
member's ``holding`` of an instrument.

``settlement.Ledger`` is the real implementation (fees, T+1, registry). ``SimpleLedger``
here is just enough for the engine's own tests and replays: balances and holds, no fees.

``HoldLedger`` is a class to derive from, not a Protocol: compiled by mypyc, the engine
calls a native class's methods directly (through its vtable), where a Protocol's are
looked up and called by name, several hundred instructions each, on every order and
fill. A ledger written in interpreted Python derives from it too (and, to be copied or
pickled, writes ``__getstate__`` and ``__setstate__``: those of a compiled base class
carry its native attributes only).
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

from engine.messages import Side, Trade

CASH: Final = "CNY"
BUY: Final = int(Side.BUY)


@mypyc_attr(allow_interpreted_subclasses=True)
class HoldLedger:
    """What the engine asks of a ledger; each method is for a subclass to write."""

    __slots__ = ()

    def cash_required(self, notional: int) -> int:
        """Cash to hold for a buy of this notional (fen): notional plus a fee allowance.
        Must be monotonic and satisfy ``cash_required(a) - cash_required(b)`` >= the
        cost of a fill of notional ``a - b`` (fees included) for ``a >= b``."""
        raise NotImplementedError

    def hold(self, account: str, asset: str, amount: int) -> bool:
        """Hold ``amount`` of the account's available ``asset``; False (and no change)
        when the available amount is smaller."""
        raise NotImplementedError

    def release(self, account: str, asset: str, amount: int) -> None:
        """Return ``amount`` of held ``asset`` to available. Never more than is held."""
        raise NotImplementedError

    def settle(self, trade: Trade, buyer_hold: int) -> None:
        """Settle one fill: ``buyer_hold`` is the part of the buyer's held cash that this
        fill frees; it pays the trade's cost and fees and the rest returns to available.
        The seller's held allowances (``trade.qty``) move to the buyer."""
        raise NotImplementedError

    def end_of_day(self) -> None:
        """The trading day closed (T+1 quantities become sellable, and so on)."""
        raise NotImplementedError

    def holding(self, account: str, asset: str) -> int:
        """What the account owns of ``asset`` (its balance, held and not yet sellable
        included; 0 when it has none): the position that position limits count."""
        raise NotImplementedError

    def state(self) -> list[tuple[str, str, int, int]]:
        """(account, asset, balance, held) for every non-zero entry, sorted: the part
        of the ledger that the engine's state hash covers."""
        raise NotImplementedError


class SimpleLedger(HoldLedger):
    """Balances and holds per (account, asset), as one small list ``[balance, held]``
    per entry (one dict lookup per operation); fees are zero."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], list[int]] = {}

    def deposit(self, account: str, asset: str, amount: int) -> None:
        assert amount >= 0
        e = self.entries.setdefault((account, asset), [0, 0])
        e[0] += amount

    def available(self, account: str, asset: str) -> int:
        e = self.entries.get((account, asset))
        return e[0] - e[1] if e else 0

    @property
    def balance(self) -> dict[tuple[str, str], int]:
        """Balance per (account, asset)."""
        return {key: e[0] for key, e in self.entries.items()}

    @property
    def held(self) -> dict[tuple[str, str], int]:
        """Held amount per (account, asset), non-zero only."""
        return {key: e[1] for key, e in self.entries.items() if e[1]}

    def cash_required(self, notional: int) -> int:
        return notional

    def hold(self, account: str, asset: str, amount: int) -> bool:
        e = self.entries.get((account, asset))
        if e is None or e[0] - e[1] < amount:
            return False
        e[1] += amount
        return True

    def release(self, account: str, asset: str, amount: int) -> None:
        e = self.entries[account, asset]
        assert 0 <= amount <= e[1], (account, asset, amount, e)
        e[1] -= amount

    def settle(self, trade: Trade, buyer_hold: int) -> None:
        if trade.aggressor == BUY:
            buyer, seller = trade.taker_member, trade.maker_member
        else:
            buyer, seller = trade.maker_member, trade.taker_member
        qty, symbol = trade.qty, trade.instrument
        cost = trade.price * qty
        entries = self.entries
        bc, sa = entries[buyer, CASH], entries[seller, symbol]
        assert cost <= buyer_hold <= bc[1] and qty <= sa[1], (trade, buyer_hold, bc, sa)
        bc[1] -= buyer_hold
        bc[0] -= cost
        sa[1] -= qty
        sa[0] -= qty
        sc = entries.get((seller, CASH))
        if sc is None:
            sc = entries[seller, CASH] = [0, 0]
        sc[0] += cost
        ba = entries.get((buyer, symbol))
        if ba is None:
            ba = entries[buyer, symbol] = [0, 0]
        ba[0] += qty

    def end_of_day(self) -> None:
        pass

    def holding(self, account: str, asset: str) -> int:
        e = self.entries.get((account, asset))
        return e[0] if e else 0

    def state(self) -> list[tuple[str, str, int, int]]:
        return [(a, s, e[0], e[1]) for (a, s), e in sorted(self.entries.items()) if e[0] or e[1]]

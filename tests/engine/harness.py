"""A small driver for engine tests: one engine, one SimpleLedger, a ManualClock.

``Venue.send`` stamps a command, applies it and returns the events it caused. After
every command it checks what must always hold, so that no test can forget it:

- ``Engine._check()`` (books, order index, holds against the ledger);
- the event stream is legal for ``OrderTracker`` (the order state table);
- the total of every asset over all accounts is what was deposited (conservation);
- a command answered by a ``Rejected`` event emits nothing else of its own and leaves
  the engine's state (everything but the last sequence number and timestamp, which
  every command advances) and the ledger exactly as they were.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from engine import (
    ALWAYS_OPEN,
    CASH,
    Accepted,
    Command,
    Engine,
    Event,
    Expired,
    Instrument,
    ManualClock,
    NewOrder,
    OrderTracker,
    OrdType,
    Rejected,
    Schedule,
    Sequencer,
    Side,
    SimpleLedger,
    StatusChanged,
    Stp,
    Tick,
    TimeInForce,
)
from engine.messages import AuctionFill, AuctionResult, BlockWithdrawn

NS_PER_MINUTE = 60_000_000_000
UTC8 = timezone(timedelta(hours=8))
# A trading day in the national market's time zone: 2024-07-01, a Monday.
DAY0 = datetime(2024, 7, 1, tzinfo=UTC8)


def local_ns(hh: int, mm: int = 0, day: int = 0) -> int:
    """Nanoseconds since the epoch of a local (UTC+8) wall time on DAY0 + day."""
    moment = DAY0 + timedelta(days=day, hours=hh, minutes=mm)
    return int(moment.timestamp()) * 1_000_000_000


def core_state(engine: Engine) -> list[Any]:
    """The engine's state without the last sequence number and timestamp."""
    return engine.state()[2:]


def cx(symbol: str = "CEA24", ref_price: int = 10_000, **kw: Any) -> Instrument:
    """An instrument with the national listing rules unless told otherwise."""
    return Instrument(symbol=symbol, ref_price=ref_price, **kw)


class Venue:
    def __init__(
        self,
        instruments: list[Instrument] | None = None,
        *,
        schedule: Schedule = ALWAYS_OPEN,
        start_ns: int = 0,
        ledger: bool = True,
        **engine_kw: Any,
    ) -> None:
        self.clock = ManualClock(start_ns)
        self.sequencer = Sequencer(self.clock)
        self.ledger = SimpleLedger() if ledger else None
        self.engine = Engine(instruments or [cx()], self.ledger, schedule=schedule, **engine_kw)
        self.tracker = OrderTracker()
        self.totals: dict[str, int] = defaultdict(int)
        self.log: list[Event] = []
        self.coids = 0
        # The first command lets the schedule set every instrument's phase.
        self.opening = self.send(Tick())

    # --- setup ---------------------------------------------------------------------

    def fund(self, member: str, cash: int = 0, **assets: int) -> None:
        assert self.ledger is not None
        if cash:
            self.ledger.deposit(member, CASH, cash)
            self.totals[CASH] += cash
        for asset, amount in assets.items():
            self.ledger.deposit(member, asset, amount)
            self.totals[asset] += amount

    def at(self, ns: int) -> None:
        """Move the clock to ns (never back)."""
        self.clock.advance(ns - self.clock.now)

    # --- commands ------------------------------------------------------------------

    def send(self, cmd: Command) -> list[Event]:
        engine = self.engine
        before = core_state(engine)
        ledger_before = self.ledger.state() if self.ledger is not None else None
        engine.apply(self.sequencer.stamp(cmd))
        out = list(engine.out)
        engine.out.clear()
        self.log.extend(out)
        for ev in out:
            self.tracker.feed(ev)
        engine._check()
        self._check_conservation()
        rejects = [ev for ev in out if isinstance(ev, Rejected)]
        if rejects:
            assert len(rejects) == 1 and out[-1] is rejects[0], out
            assert rejects[0].text, "a rejection must say why"
            # Events before a reject can only come from the clock (phases, expiry of
            # orders and block offers, auctions clearing at their close).
            assert all(isinstance(ev, StatusChanged | Expired | BlockWithdrawn | AuctionFill | AuctionResult)
                       for ev in out[:-1]), out
            if len(out) == 1:
                assert core_state(engine) == before, "a rejected command changed the engine"
                if self.ledger is not None:
                    assert self.ledger.state() == ledger_before, "a rejected command changed the ledger"
        return out

    def _check_conservation(self) -> None:
        if self.ledger is None:
            return
        sums: dict[str, int] = defaultdict(int)
        for (_, asset), amount in self.ledger.balance.items():
            assert amount >= 0
            sums[asset] += amount
        for (account, asset), amount in self.ledger.held.items():
            assert 0 <= amount <= self.ledger.balance.get((account, asset), 0), (account, asset)
        assert {a: v for a, v in sums.items() if v} == {a: v for a, v in self.totals.items() if v}

    def order(
        self,
        member: str,
        side: int,
        qty: int,
        price: int = 0,
        *,
        instrument: str = "",
        ord_type: int = OrdType.LIMIT,
        tif: int = TimeInForce.DAY,
        stp: int = Stp.DEFAULT,
        coid: str = "",
    ) -> list[Event]:
        if not coid:
            self.coids += 1
            coid = f"c{self.coids}"
        symbol = instrument or next(iter(self.engine.markets))
        return self.send(NewOrder(member, coid, symbol, side, qty, price, ord_type, tif, stp))

    def buy(self, member: str, qty: int, price: int = 0, **kw: Any) -> list[Event]:
        return self.order(member, Side.BUY, qty, price, **kw)

    def sell(self, member: str, qty: int, price: int = 0, **kw: Any) -> list[Event]:
        return self.order(member, Side.SELL, qty, price, **kw)

    def rest(self, member: str, side: int, qty: int, price: int, **kw: Any) -> int:
        """Enter a limit DAY order that must rest untouched; returns its id."""
        out = self.order(member, side, qty, price, **kw)
        assert len(out) == 1 and isinstance(out[0], Accepted), out
        return out[0].order_id

    def reject(self, cmd: Command, reason: int) -> Rejected:
        """Send a command that must be rejected for ``reason`` and change nothing."""
        out = self.send(cmd)
        assert len(out) == 1 and isinstance(out[0], Rejected), out
        assert out[0].reason == reason, (out[0], reason)
        return out[0]

    # --- views -----------------------------------------------------------------------

    def ids(self, symbol: str = "", side: int = Side.BUY, price: int = 0) -> list[int]:
        """Order ids at one level in time priority (L3)."""
        symbol = symbol or next(iter(self.engine.markets))
        return [o.order_id for o in self.engine.level_orders(symbol, side, price)]

    def available(self, member: str, asset: str = CASH) -> int:
        assert self.ledger is not None
        return self.ledger.available(member, asset)

    def held(self, member: str, asset: str = CASH) -> int:
        assert self.ledger is not None
        return self.ledger.held.get((member, asset), 0)


def kinds(events: list[Event]) -> list[str]:
    return [type(ev).__name__ for ev in events]


def only(events: list[Event], kind: type) -> list[Any]:
    return [ev for ev in events if isinstance(ev, kind)]

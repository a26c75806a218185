"""Random command streams for the engine, and a driver that runs the engine and the
reference side by side and compares them.

The generator draws every decision through a ``Chooser``, so that the same code feeds
hypothesis (which records and shrinks the draws) and a plain seeded ``random.Random``
(long runs that replay from a printed seed). Rare choices are written so that a
shrinking draw goes back to the common case.

What the stream covers: several members (one with little money, one with none),
one or two instruments (ticks and lots above one, with and without holds, with and
without a band), prices around the reference and the touch and sometimes off the tick
or outside the band, odd lots and out-of-range quantities, every time in force and
order type, every STP mode (and invalid ones), duplicate client order ids, cancels and
amends of own, other members' and unknown orders (cancels sometimes with an operator's
actor and text), mass cancels of every scope, halts and resumes (with and without
cancelling orders), hit orders, end of day, time passing over the schedule's windows,
position limits near some members' holdings, member suspensions (with and without
cancelling orders) and reinstatements, and operators' notes.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec
from hypothesis import strategies as st

from engine import (
    ALWAYS_OPEN,
    CASH,
    Amend,
    Cancel,
    Command,
    EndOfDay,
    Engine,
    Event,
    Halt,
    HitOrder,
    HoldLedger,
    Instrument,
    ManualClock,
    MassCancel,
    NewOrder,
    Note,
    OrderTracker,
    ReinstateMember,
    Rejected,
    Resume,
    Schedule,
    Sequencer,
    SimpleLedger,
    SuspendMember,
    Tick,
    Trade,
)
from tests.property.reference import Reference

T = TypeVar("T")
NS_PER_MINUTE = 60_000_000_000
MEMBERS = ["A", "B", "C", "POOR", "NONE"]


class Chooser(Protocol):
    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def chance(self, p: float) -> bool:
        """True with probability p; a shrinking chooser tends to False."""
        ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


class DataChooser:
    """Draws from hypothesis' ``st.data()``."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def choice(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))  # type: ignore[no-any-return]

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))  # type: ignore[no-any-return]

    def chance(self, p: float) -> bool:
        return self.data.draw(st.integers(0, 999)) >= 1000 - round(p * 1000)  # type: ignore[no-any-return]


# --- configuration -----------------------------------------------------------------------


@dataclass
class Config:
    instruments: list[Instrument]
    schedule: Schedule
    start_ns: int
    stp_default: int
    member_stp: dict[str, int]
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    fee_divisor: int = 0  # 0: SimpleLedger; else FeeLedger charging notional // fee_divisor


class FeeLedger(HoldLedger):
    """A hold ledger whose buyers pay a fee of ``notional // divisor`` on every fill, to
    the FEES account, so that holds are not simply price x quantity: a buy holds
    ``cash_required(n) = n + n // divisor``. Flooring keeps the ledger contract
    (``cash_required(a) - cash_required(b)`` covers a fill of notional ``a - b`` and its
    fee), so every settle must find its cost and fee inside the hold it frees."""

    FEES = "FEES"

    def __init__(self, divisor: int) -> None:
        self.divisor = divisor
        self.balance: dict[tuple[str, str], int] = {}
        self.held: dict[tuple[str, str], int] = {}

    # Copied by the tests (copy.deepcopy): the compiled base class's own state methods
    # know only its native attributes, none, so these carry the instance's.
    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def deposit(self, account: str, asset: str, amount: int) -> None:
        self.balance[account, asset] = self.balance.get((account, asset), 0) + amount

    def cash_required(self, notional: int) -> int:
        return notional + notional // self.divisor

    def hold(self, account: str, asset: str, amount: int) -> bool:
        key = (account, asset)
        if self.balance.get(key, 0) - self.held.get(key, 0) < amount:
            return False
        self.held[key] = self.held.get(key, 0) + amount
        return True

    def release(self, account: str, asset: str, amount: int) -> None:
        key = (account, asset)
        assert 0 <= amount <= self.held.get(key, 0), (key, amount)
        self.held[key] -= amount

    def settle(self, trade: Trade, buyer_hold: int) -> None:
        buyer, seller = trade.buyer, trade.seller
        cost = trade.price * trade.qty
        fee = cost // self.divisor
        assert cost + fee <= buyer_hold <= self.held.get((buyer, CASH), 0), (trade, buyer_hold)
        assert trade.qty <= self.held.get((seller, trade.instrument), 0), trade
        self.held[buyer, CASH] -= buyer_hold
        self.deposit(buyer, CASH, -cost - fee)
        self.deposit(seller, CASH, cost)
        self.deposit(self.FEES, CASH, fee)
        self.held[seller, trade.instrument] -= trade.qty
        self.deposit(seller, trade.instrument, -trade.qty)
        self.deposit(buyer, trade.instrument, trade.qty)

    def end_of_day(self) -> None:
        pass

    def holding(self, account: str, asset: str) -> int:
        return self.balance.get((account, asset), 0)

    def state(self) -> list[tuple[str, str, int, int]]:
        keys = sorted(set(self.balance) | set(self.held))
        rows = [(a, s, self.balance.get((a, s), 0), self.held.get((a, s), 0)) for a, s in keys]
        return [row for row in rows if row[2] or row[3]]


def national_start(day: int = 0) -> int:
    # 09:25 in UTC+8 on 2024-07-01 (+ day) is 01:25 UTC.
    return (19_905 + day) * 1440 * NS_PER_MINUTE + (60 + 25) * NS_PER_MINUTE


def make_config(c: Chooser) -> Config:
    first = c.choice([
        dict(ref_price=1_000),
        dict(ref_price=10_001, tick=5, lot=10, qty_min=10, qty_max=500),
        dict(ref_price=5_000, tick=2, qty_min=2, qty_max=40, band_bps=300),
    ])
    instruments = [Instrument(symbol="CEA24", **first)]  # type: ignore[arg-type]
    if c.chance(0.6):
        second = c.choice([
            dict(ref_price=800, holds=False),
            dict(ref_price=800, band_bps=0, price_min=700, price_max=900, lot=3),
            dict(ref_price=800, tick=10),
        ])
        instruments.append(Instrument(symbol="CEA23", **second))  # type: ignore[arg-type]
    # Position limits near the holdings of POOR (40 t), C (3,000 t) or A and B (10,000 t),
    # so that the members near one both buy and are refused.
    instruments = [
        msgspec.structs.replace(inst, position_max=c.choice([50, 3_040, 10_040, 10_200])) if c.chance(0.4) else inst
        for inst in instruments
    ]
    if c.chance(0.5):
        schedule, start = Schedule(), national_start()
    else:
        # ALWAYS_OPEN: start an hour before midnight UTC, where resting orders expire.
        schedule, start = ALWAYS_OPEN, 19_905 * 1440 * NS_PER_MINUTE - 60 * NS_PER_MINUTE
    stp_default = c.choice([1, 2, 3, 4])
    member_stp = {"C": c.choice([1, 2, 3, 4])} if c.chance(0.5) else {}
    fee_divisor = 500 if c.chance(0.3) else 0
    balances: dict[tuple[str, str], int] = {}
    for member, cash, qty in [("A", 10**9, 10_000), ("B", 10**9, 10_000), ("C", 20_000_000, 3_000),
                              ("POOR", 30_000, 40)]:
        balances[(member, CASH)] = cash
        for inst in instruments:
            balances[(member, inst.symbol)] = qty
    return Config(instruments, schedule, start, stp_default, member_stp, balances, fee_divisor)


# --- the driver ----------------------------------------------------------------------------


def build_engine(config: Config, ledger: Any = None, **kw: Any) -> tuple[Engine, Any]:
    """A fresh engine for the configuration, on a fresh ledger unless one is given."""
    if ledger is None:
        ledger = FeeLedger(config.fee_divisor) if config.fee_divisor else SimpleLedger()
        for (account, asset), amount in config.balances.items():
            ledger.deposit(account, asset, amount)
    engine = Engine(config.instruments, ledger, schedule=config.schedule,
                    stp_default=config.stp_default, member_stp=config.member_stp, **kw)
    return engine, ledger


def recorded(seed: int, steps: int) -> Pair:
    """A pair that has run ``steps`` random commands (checked against the reference):
    its ``journal`` and ``events`` are a realistic stream to replay."""
    c = RandomChooser(seed)
    pair = Pair(make_config(c))
    work = Workload(pair)
    pair.step([Tick()])
    while pair.steps < steps:
        if c.chance(0.1):
            work.advance(c)
        pair.step([work.any(c)])
    pair.check()
    return pair


def normal(ev: Event) -> Event:
    """Events as compared: a rejection's text is the engine's own wording."""
    if isinstance(ev, Rejected):
        assert isinstance(ev.text, str) and ev.text, ev
        return msgspec.structs.replace(ev, text="")
    return ev


class Pair:
    """The engine (with a SimpleLedger) and the reference, fed the same commands."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = ManualClock(config.start_ns)
        self.sequencer = Sequencer(self.clock)
        self.engine, self.ledger = build_engine(config)
        self.reference = Reference(config.instruments, config.balances, schedule=config.schedule,
                                   stp_default=config.stp_default, member_stp=config.member_stp,
                                   fee_divisor=config.fee_divisor)
        self.tracker = OrderTracker()
        self.totals = self.asset_totals()
        self.steps = 0
        self.journal: list[Command] = []  # every stamped command, in order
        self.events: list[Event] = []  # every event the engine emitted, as emitted

    def asset_totals(self) -> dict[str, int]:
        sums: dict[str, int] = defaultdict(int)
        for (_, asset), amount in self.ledger.balance.items():
            sums[asset] += amount
        return {k: v for k, v in sums.items() if v}

    def step(self, cmds: list[Command], batch: bool = False) -> list[Event]:
        """Stamp and apply commands (a batch: stamped and applied as one, sharing a
        timestamp); compare events."""
        stamped = self.sequencer.stamp_batch(cmds) if batch else [self.sequencer.stamp(cmd) for cmd in cmds]
        engine = self.engine
        before = engine.state()[2:] if len(cmds) == 1 else None  # all but the last seq and ts
        if batch:
            engine.apply_batch(stamped)
        else:
            for cmd in stamped:
                engine.apply(cmd)
        self.journal.extend(stamped)
        self.events.extend(engine.out)
        got = [normal(ev) for ev in engine.out]
        engine.out.clear()
        want: list[Event] = []
        for cmd in stamped:
            want.extend(normal(ev) for ev in self.reference.apply(cmd))
        if got != want:
            raise AssertionError(diff(stamped, got, want))
        for ev in got:
            self.tracker.feed(ev)
        if before is not None and len(got) == 1 and isinstance(got[0], Rejected):
            assert engine.state()[2:] == before, f"{stamped[0]!r} was rejected but changed the state"
        self.steps += len(cmds)
        return got

    def check(self) -> None:
        """Everything that must hold between commands."""
        engine, ref = self.engine, self.reference
        engine._check()
        for symbol in engine.markets:
            bid, _, ask, _ = engine.bbo(symbol)
            assert not (bid and ask and bid >= ask), f"{symbol} crossed: {bid} >= {ask}"
            assert engine_book(engine, symbol) == ref.book(symbol), symbol
            assert engine.markets[symbol].stats() == ref.markets[symbol].stats(), symbol
        balances = {k: v for k, v in self.ledger.balance.items() if v}
        assert balances == {k: v for k, v in ref.balance.items() if v}
        held = {k: v for k, v in self.ledger.held.items() if v}
        assert held == ref.held_all()
        for key, amount in self.ledger.held.items():
            assert 0 <= amount <= self.ledger.balance.get(key, 0), key
        assert self.asset_totals() == self.totals, "an asset was created or destroyed"
        live = {oid for oid in self.tracker.live()}
        assert live == set(engine.orders), "the tracker's open orders are not the book's"
        assert engine.day == ref.day
        assert engine.suspended == ref.suspended


def engine_book(engine: Engine, symbol: str) -> list[tuple[int, str, int, int, int, int]]:
    """The engine's resting orders through its public queries (L2, then L3)."""
    rows: list[tuple[int, str, int, int, int, int]] = []
    bids, asks = engine.depth(symbol, 1 << 30)
    for side, levels in ((1, bids), (2, asks)):
        for price, qty, count in levels:
            orders = engine.level_orders(symbol, side, price)
            assert len(orders) == count and sum(o.qty for o in orders) == qty, (symbol, side, price)
            rows.extend((o.order_id, o.member, o.side, o.price, o.qty, o.filled) for o in orders)
    return rows


def diff(cmds: list[Command], got: list[Event], want: list[Event]) -> str:
    lines = ["engine and reference disagree after", *(f"  {c!r}" for c in cmds)]
    for i in range(max(len(got), len(want))):
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        mark = "  " if g == w else "! "
        lines.append(f"{mark}engine    {g!r}")
        if g != w:
            lines.append(f"{mark}reference {w!r}")
    return "\n".join(lines)


# --- the generator -------------------------------------------------------------------------


class Workload:
    """Draws commands that make sense against the current book (and some that do not)."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.symbols = [inst.symbol for inst in pair.config.instruments]
        self.coids: dict[str, list[str]] = defaultdict(list)
        self.count = 0

    # the pieces

    def member(self, c: Chooser) -> str:
        return c.choice(MEMBERS[:3]) if not c.chance(0.15) else c.choice(MEMBERS[3:])

    def symbol(self, c: Chooser) -> str:
        if c.chance(0.02):
            return c.choice(["NOPE", ""])
        return c.choice(self.symbols)

    def coid(self, c: Chooser, member: str) -> str:
        used = self.coids[member]
        if used and c.chance(0.04):
            return c.choice(used)
        self.count += 1
        coid = f"{member}{self.count}"
        used.append(coid)
        return coid

    def price(self, c: Chooser, symbol: str, side: int = 0) -> int:
        ref = self.pair.reference
        m = ref.markets.get(symbol)
        if m is None:
            return 1_000
        tick = m.rules.tick
        if c.chance(0.03):
            return c.choice([m.low - tick, m.high + tick, m.low, m.high])
        if tick > 1 and c.chance(0.02):
            return m.ref // tick * tick + 1
        book = ref.book(symbol)
        bids = [p for _, _, side, p, _, _ in book if side == 1]
        asks = [p for _, _, side, p, _, _ in book if side == 2]
        anchors = [max(m.low, min(m.high, m.ref // tick * tick))]
        if bids:
            anchors.append(bids[0])
        if asks:
            anchors.append(asks[0])
        price = c.choice(anchors) + tick * c.integer(-3, 3)
        if side and c.chance(0.4):  # a passive order, some levels away from the touch
            price += tick * c.integer(1, 10) * (-1 if side == 1 else 1)
        return max(m.low, min(m.high, price))

    def qty(self, c: Chooser, symbol: str) -> int:
        m = self.pair.reference.markets.get(symbol)
        if m is None:
            return 1
        rules = m.rules
        if c.chance(0.03):
            return c.choice([0, rules.qty_min - 1, rules.qty_max + rules.lot, rules.lot + 1, -rules.lot])
        if c.chance(0.03):
            return rules.qty_max // rules.lot * rules.lot
        return max(rules.qty_min, rules.lot * c.integer(1, 6))

    def order_id(self, c: Chooser) -> tuple[int, str]:
        """An order id and its owner: mostly a resting order, else any id."""
        resting = self.pair.reference.resting()
        if resting and not c.chance(0.15):
            o = c.choice(sorted(resting, key=lambda o: o.id))
            return o.id, o.member
        return c.integer(0, self.pair.reference.next_order_id + 2), self.member(c)

    # the commands

    def new_order(self, c: Chooser) -> NewOrder:
        member = self.member(c)
        symbol = self.symbol(c)
        side = c.choice([1, 2]) if not c.chance(0.01) else c.choice([0, 3])
        ord_type = 1 if not c.chance(0.1) else 2
        if c.chance(0.01):
            ord_type = c.choice([0, 3])
        tif = c.choice([1, 1, 1, 1, 1, 1, 2, 3])
        if c.chance(0.01):
            tif = c.choice([0, 4])
        stp = c.choice([0, 0, 0, 1, 2, 3, 4])
        if c.chance(0.01):
            stp = c.choice([5, -1])
        price = self.price(c, symbol, side) if ord_type != 2 or c.chance(0.5) else 0
        return NewOrder(member, self.coid(c, member), symbol, side, self.qty(c, symbol), price, ord_type, tif, stp)

    def ladder(self, c: Chooser) -> list[NewOrder]:
        """One member's passive orders on several levels of one side: deep books for
        hit orders (best five levels) and sweeps."""
        member = self.member(c)
        symbol = c.choice(self.symbols)
        m = self.pair.reference.markets[symbol]
        side = c.choice([1, 2])
        book = self.pair.reference.book(symbol)
        same = [p for _, _, s, p, _, _ in book if s == side]
        start = same[0] if same else max(m.low, min(m.high, m.ref // m.rules.tick * m.rules.tick))
        step = m.rules.tick * (-1 if side == 1 else 1)
        orders = []
        for k in range(c.integer(3, 8)):
            price = max(m.low, min(m.high, start + step * k))
            qty = max(m.rules.qty_min, m.rules.lot * c.integer(1, 3))
            orders.append(NewOrder(member, self.coid(c, member), symbol, side, qty, price))
        return orders

    def cancel(self, c: Chooser) -> Cancel:
        oid, owner = self.order_id(c)
        member = owner if not c.chance(0.1) else self.member(c)
        if c.chance(0.1):  # an operator's cancel for the member, on the record
            return Cancel(member, oid, "EXCH/op1", "asked by phone")
        return Cancel(member, oid)

    def amend(self, c: Chooser) -> Amend:
        oid, owner = self.order_id(c)
        order = self.pair.reference.find(oid)
        symbol = order.symbol if order is not None else self.symbols[0]
        member = owner if not c.chance(0.1) else self.member(c)
        kind = c.choice(["down", "price", "up", "any", "same"])
        if order is not None and kind == "down" and order.qty > 1:
            lot = self.pair.reference.markets[symbol].rules.lot
            qty = max(lot, (order.qty - c.integer(1, order.qty)) // lot * lot)
            return Amend(member, oid, order.price, qty)
        if order is not None and kind == "price":
            return Amend(member, oid, self.price(c, symbol, order.side), order.qty)
        if order is not None and kind == "same":
            return Amend(member, oid, order.price, order.qty)
        if order is not None and kind == "up":
            return Amend(member, oid, order.price, order.qty + self.pair.reference.markets[symbol].rules.lot)
        return Amend(member, oid, self.price(c, symbol), self.qty(c, symbol))

    def hit(self, c: Chooser) -> HitOrder:
        member = self.member(c)
        oid, _ = self.order_id(c)
        order = self.pair.reference.find(oid)
        symbol = order.symbol if order is not None and not c.chance(0.05) else self.symbol(c)
        return HitOrder(member, self.coid(c, member), symbol, oid, self.qty(c, symbol))

    def mass_cancel(self, c: Chooser) -> MassCancel:
        member = c.choice(["", *MEMBERS[:3]])
        symbol = c.choice(["", *self.symbols]) if not c.chance(0.05) else "NOPE"
        reason = c.choice([5, 6]) if not c.chance(0.05) else c.choice([1, 99])
        return MassCancel(member, symbol, reason)

    def halt(self, c: Chooser) -> Halt:
        return Halt(self.symbol(c) if c.chance(0.7) else "", c.chance(0.4))

    def resume(self, c: Chooser) -> Resume:
        return Resume(self.symbol(c) if c.chance(0.7) else "")

    def suspend(self, c: Chooser) -> SuspendMember:
        member = c.choice(MEMBERS[:4]) if not c.chance(0.05) else ""
        return SuspendMember(member, c.chance(0.5), "EXCH/op1", "surveillance")

    def reinstate(self, c: Chooser) -> ReinstateMember:
        suspended = sorted(self.pair.reference.suspended)
        member = c.choice(suspended) if suspended and not c.chance(0.1) else c.choice(["", *MEMBERS[:4]])
        return ReinstateMember(member, "EXCH/op1", "cleared")

    def note(self, c: Chooser) -> Note:
        return Note("EXCH/op1", c.choice(["unlock", "disconnect"]), "A/trader1")

    def advance(self, c: Chooser) -> None:
        """Let time pass: mostly a little; sometimes over a phase change or the day's
        close; when the schedule is closed, often on to the next window."""
        clock, ref = self.pair.clock, self.pair.reference
        if not ref.is_open(clock.now) and not c.chance(0.3):
            for _ in range(24 * 6):  # on in 10-minute steps until a window opens
                clock.advance(10 * NS_PER_MINUTE)
                if ref.is_open(clock.now):
                    break
            return
        if c.chance(0.1):
            clock.advance(c.choice([47, 121, 181, 600]) * NS_PER_MINUTE)
        else:
            clock.advance(c.choice([0, 1, 1_000_000_000, NS_PER_MINUTE, 5 * NS_PER_MINUTE]))

    def any(self, c: Chooser) -> Command:
        """One command of any kind, weighted towards orders (for the long seeded run)."""
        r = c.integer(0, 999)
        if r < 650:
            return self.new_order(c)
        if r < 720:
            return self.cancel(c)
        if r < 820:
            return self.amend(c)
        if r < 880:
            return self.hit(c)
        if r < 890:
            return self.mass_cancel(c)
        if r < 894:
            return self.halt(c)
        if r < 915:
            return self.resume(c)
        if r < 917:
            return EndOfDay()
        if r < 920:
            return self.suspend(c)
        if r < 940:
            return self.reinstate(c)
        if r < 945:
            return self.note(c)
        return Tick()

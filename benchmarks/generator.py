"""Seeded order-flow generator: realistic streams of engine commands for benchmarks,
replays and randomized tests.

``generate(regime, n, seed)`` returns a ``Workload``: the stream header (instruments,
deposits), a warm-up that builds the starting book, and ``n`` measured commands. All
commands are stamped (``seq`` from 1 with no gaps across warm-up and measured part,
``ts`` increasing by 1 ns to 2 ms), so they go straight into ``Engine.apply_batch``.

Cancels must name order ids the engine will assign. The generator learns them by
running the very engine the stream will be replayed into (``engine.stream.build_engine``
on the same header) while it generates: the engine is deterministic, so a fresh engine
fed the same commands assigns the same ids. Generation is a pure function of
(regime, n, seed, holds, members): the same arguments give the same commands.

Regimes (CEA-like: reference 10,000 fen, band +-10 %, tick 1 fen, 1 t lots):
- ``mixed``: 60 % adds near the touch, 30 % cancels of live orders by their owner,
  10 % orders that cross one to three levels. The default, and the issue's target.
- ``add``: adds near the touch that never cross (the book grows).
- ``cancel``: the warm-up adds ``n`` orders; the measured part cancels every one of
  them in random order.
- ``sweep``: 90 % adds spread over 20 ticks, 10 % orders that sweep 3-10 levels.
- ``deep``: a deep static book (``n`` orders spread over the whole band), then 95 %
  cancels and 5 % adds deep in the book.
- ``volatile``: a fast-moving fair price; 20 % of orders sweep 2-10 levels.
- ``crash``: ordinary flow, then a flash crash (bids pulled, sellers sweep the book
  down to near the band's floor), then a recovery.

``holds=True`` gives instruments with pre-trade holds and deposits every member enough
cash and allowances that no order is refused for funds.

Run ``python -m benchmarks.generator mixed -n 100000 --seed 1 -o mixed.etx`` to write a
stream file for ``etx replay``.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from typing import NamedTuple

from engine.instrument import Instrument
from engine.ledger import CASH
from engine.matching import Engine
from engine.messages import (
    Accepted,
    Amended,
    Cancel,
    Cancelled,
    Command,
    Decremented,
    Expired,
    NewOrder,
    Side,
    Trade,
)
from engine.stream import STREAM_VERSION, StreamHeader, build_engine, write_stream

BUY, SELL = int(Side.BUY), int(Side.SELL)
SYMBOL = "CEA24"
REF_PRICE = 10_000  # fen: CNY 100/t, near late-2024 prices
START_TS = 1_730_683_800_000_000_000  # 2024-11-04 09:30 Beijing time (01:30 UTC), in ns
TS_STEP_MAX = 2_000_000  # ns between commands: 1 to 2 ms, about 1,000 commands a second
CASH_DEPOSIT = 10**15  # fen per member: far more than any run can hold
ASSET_DEPOSIT = 10**9  # tonnes per member
N_MAX = 50_000_000  # commands in one workload; a stream stays within one trading day
# Listing-mode order sizes in tonnes, with their weights: mostly a few hundred tonnes.
QTYS = (1, 10, 50, 100, 200, 300, 500, 1_000, 2_000, 5_000, 10_000)
QTY_WEIGHTS = (2, 5, 8, 20, 15, 10, 15, 12, 7, 4, 2)

REGIMES = ("mixed", "add", "cancel", "sweep", "deep", "volatile", "crash")


class Workload(NamedTuple):
    header: StreamHeader
    warmup: list[Command]  # builds the starting book; apply it before measuring
    commands: list[Command]  # the measured flow, stamped after the warm-up

    def all(self) -> list[Command]:
        return self.warmup + self.commands


@dataclass(frozen=True)
class Mix:
    """The flow of one phase: probabilities of each kind of command and their shape."""

    add: float
    cancel: float
    cross: float
    cross_levels: tuple[int, int] = (1, 3)
    spread: int = 3  # mean distance of an add behind the fair price, in ticks
    deep: bool = False  # adds anywhere between the band and the touch
    vol: float = 0.3  # standard deviation of the fair price per command, in ticks
    kappa: float = 0.001  # pull of the fair price back to its target per command
    cross_buy: float = 0.5  # share of crossing orders that buy
    cancel_buy: float = 0.5  # share of cancels that cancel a buy (when there is one)
    follow: bool = True  # the fair price moves to where a crossing order traded


MIXED = Mix(add=0.6, cancel=0.3, cross=0.1)
ADD = Mix(add=1.0, cancel=0.0, cross=0.0)
SWEEP = Mix(add=0.9, cancel=0.0, cross=0.1, cross_levels=(3, 10), spread=8, kappa=0.01, follow=False)
DEEP = Mix(add=0.05, cancel=0.95, cross=0.0, deep=True)
VOLATILE = Mix(add=0.55, cancel=0.25, cross=0.2, cross_levels=(2, 10), vol=3.0, kappa=0.0002)
CRASH = Mix(add=0.35, cancel=0.35, cross=0.3, cross_levels=(3, 15), vol=1.0, kappa=0.02,
            cross_buy=0.1, cancel_buy=0.9)
RECOVERY = Mix(add=0.45, cancel=0.25, cross=0.3, cross_levels=(2, 10), vol=1.0, kappa=0.01,
               cross_buy=0.8, cancel_buy=0.2)


def header_for(*, holds: bool = False, members: int = 20, symbol: str = SYMBOL) -> StreamHeader:
    """One CEA-like instrument; with holds, deposits for every member."""
    rules = Instrument(symbol=symbol, ref_price=REF_PRICE, band_bps=1000, holds=holds)
    deposits: list[tuple[str, str, int]] = []
    if holds:
        for m in member_names(members):
            deposits.append((m, CASH, CASH_DEPOSIT))
            deposits.append((m, symbol, ASSET_DEPOSIT))
    return StreamHeader(
        version=STREAM_VERSION, instruments=[rules], holds=deposits,
        description=f"generated: {members} members, holds={holds}",
    )


def member_names(members: int) -> list[str]:
    return [f"M{i:02d}" for i in range(1, members + 1)]


class _Flow:
    """Generates commands against a live engine: it stamps and applies each one and
    keeps an index of live orders per side for cancels."""

    def __init__(self, header: StreamHeader, seed: int, members: int) -> None:
        self.rng = random.Random(seed)
        self.engine: Engine = build_engine(header)
        rules = header.instruments[0]
        self.symbol = rules.symbol
        self.low, self.high = rules.band()
        self.qty_max = rules.qty_max
        self.members = member_names(members)
        self.coid = dict.fromkeys(self.members, 0)
        self.seq = 0
        self.ts = START_TS
        self.fair = float(rules.ref_price)
        self.target = float(rules.ref_price)
        # Live orders per side: a list for O(1) random choice and a position map for
        # O(1) removal (swap with the last).
        self.live: tuple[list[int], list[int], list[int]] = ([], [], [])
        self.pos: dict[int, int] = {}
        self.side_of: dict[int, int] = {}

    # --- bookkeeping ---------------------------------------------------------------

    def emit(self, cmd: NewOrder | Cancel, out: list[Command]) -> None:
        self.seq += 1
        self.ts += self.rng.randint(1, TS_STEP_MAX)
        cmd.seq = self.seq
        cmd.ts = self.ts
        engine = self.engine
        engine.apply(cmd)
        out.append(cmd)
        touched: list[int] = []
        for ev in engine.out:
            if isinstance(ev, Accepted | Cancelled | Expired | Decremented | Amended):
                touched.append(ev.order_id)
                if isinstance(ev, Accepted):
                    self.side_of[ev.order_id] = ev.side
            elif isinstance(ev, Trade):
                touched.append(ev.maker_order_id)
        engine.out.clear()
        for oid in touched:
            self._sync(oid)

    def _sync(self, oid: int) -> None:
        alive = self.engine.order(oid) is not None
        if alive and oid not in self.pos:
            lst = self.live[self.side_of[oid]]
            self.pos[oid] = len(lst)
            lst.append(oid)
        elif not alive and oid in self.pos:
            lst = self.live[self.side_of[oid]]
            i = self.pos.pop(oid)
            last = lst.pop()
            if last != oid:
                lst[i] = last
                self.pos[last] = i
            del self.side_of[oid]
        elif not alive:
            self.side_of.pop(oid, None)

    def next_coid(self, member: str) -> str:
        n = self.coid[member] + 1
        self.coid[member] = n
        return str(n)

    def qty(self) -> int:
        return self.rng.choices(QTYS, QTY_WEIGHTS)[0]

    def bbo(self) -> tuple[int, int]:
        book = self.engine.markets[self.symbol].book
        return book.best_bid(), book.best_ask()

    def move_fair(self, mix: Mix) -> None:
        fair = self.fair + self.rng.gauss(0.0, mix.vol) + (self.target - self.fair) * mix.kappa
        # Keep the fair price inside the band with room for a spread.
        self.fair = min(max(fair, self.low + 5.0), self.high - 5.0)

    # --- commands ----------------------------------------------------------------

    def add(self, mix: Mix, out: list[Command], side: int = 0) -> None:
        rng = self.rng
        side = side or rng.choice((BUY, SELL))
        bid, ask = self.bbo()
        fair = round(self.fair)
        if mix.deep:
            if side == BUY:
                top = min(fair - 1, ask - 1) if ask else fair - 1
                price = rng.randint(self.low, max(self.low, top))
            else:
                bottom = max(fair + 1, bid + 1) if bid else fair + 1
                price = rng.randint(min(self.high, bottom), self.high)
        else:
            behind = min(int(rng.expovariate(1.0 / mix.spread)) if mix.spread else 0, 200)
            if side == BUY:
                price = fair - 1 - behind
                if ask and price >= ask:
                    price = ask - 1
            else:
                price = fair + 1 + behind
                if bid and price <= bid:
                    price = bid + 1
        price = min(max(price, self.low), self.high)
        if (side == BUY and ask and price >= ask) or (side == SELL and bid and price <= bid):
            return self.cancel(mix, out)  # the band leaves no room on this side
        member = rng.choice(self.members)
        self.emit(NewOrder(member, self.next_coid(member), self.symbol, side, self.qty(), price), out)

    def cancel(self, mix: Mix, out: list[Command]) -> None:
        rng = self.rng
        bids, asks = self.live[BUY], self.live[SELL]
        if not bids and not asks:
            return self.add(mix, out)
        side = BUY if rng.random() < mix.cancel_buy else SELL
        lst = self.live[side] or self.live[3 - side]
        oid = lst[rng.randrange(len(lst))]
        order = self.engine.order(oid)
        assert order is not None
        self.emit(Cancel(order.member, oid), out)

    def cross(self, mix: Mix, out: list[Command]) -> None:
        rng = self.rng
        side = BUY if rng.random() < mix.cross_buy else SELL
        book = self.engine.markets[self.symbol].book
        levels = book.sides[3 - side].depth(rng.randint(*mix.cross_levels))
        if not levels:
            return self.add(mix, out, 3 - side)
        qty = sum(level[1] for level in levels[:-1])
        price, last_qty, _ = levels[-1]
        qty = min(qty + rng.randint(1, last_qty), self.qty_max)
        member = rng.choice(self.members)
        self.emit(NewOrder(member, self.next_coid(member), self.symbol, side, qty, price), out)
        if mix.follow:  # the touch moved: the fair price follows the trades
            self.fair = float(price)

    def step(self, mix: Mix, out: list[Command]) -> None:
        self.move_fair(mix)
        r = self.rng.random()
        if r < mix.add:
            self.add(mix, out)
        elif r < mix.add + mix.cancel:
            self.cancel(mix, out)
        else:
            self.cross(mix, out)

    def run(self, mix: Mix, n: int, out: list[Command]) -> None:
        goal = len(out) + n
        while len(out) < goal:
            self.step(mix, out)


def generate(
    regime: str = "mixed", n: int = 100_000, seed: int = 1, *, holds: bool = False, members: int = 20,
) -> Workload:
    """A deterministic workload; see the module docstring for the regimes."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}")
    if not 0 < n <= N_MAX:
        raise ValueError(f"n must be in [1, {N_MAX}], got {n}")
    if not 2 <= members <= 999:
        raise ValueError(f"members must be in [2, 999], got {members}")
    header = header_for(holds=holds, members=members)
    flow = _Flow(header, seed, members)
    warmup: list[Command] = []
    cmds: list[Command] = []
    book = min(max(n // 10, 200), 20_000)  # a starting book for the flows that trade
    if regime == "mixed":
        flow.run(ADD, book, warmup)
        flow.run(MIXED, n, cmds)
    elif regime == "add":
        flow.run(ADD, n, cmds)
    elif regime == "cancel":
        flow.run(ADD, n, warmup)
        ids = sorted(flow.pos)
        flow.rng.shuffle(ids)
        for oid in ids:
            order = flow.engine.order(oid)
            assert order is not None
            flow.emit(Cancel(order.member, oid), cmds)
    elif regime == "sweep":
        flow.run(Mix(add=1.0, cancel=0.0, cross=0.0, spread=8), book, warmup)
        flow.run(SWEEP, n, cmds)
    elif regime == "deep":
        flow.run(Mix(add=1.0, cancel=0.0, cross=0.0, deep=True), n, warmup)
        flow.run(DEEP, n, cmds)
    elif regime == "volatile":
        flow.run(ADD, book, warmup)
        flow.run(VOLATILE, n, cmds)
    else:  # crash: 40 % ordinary, 20 % crash toward the floor, 40 % recovery
        flow.run(ADD, book, warmup)
        calm = n * 2 // 5
        fall = n // 5
        flow.run(MIXED, calm, cmds)
        flow.target = flow.low + (flow.high - flow.low) * 0.02
        flow.run(CRASH, fall, cmds)
        flow.target = float(REF_PRICE)
        flow.run(RECOVERY, n - calm - fall, cmds)
    return Workload(header, warmup, cmds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generator", description=__doc__.split("\n\n")[0])
    parser.add_argument("regime", choices=REGIMES)
    parser.add_argument("-n", type=int, default=100_000, help="measured commands (default 100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--holds", action="store_true", help="instruments with pre-trade holds, members funded")
    parser.add_argument("-o", "--output", required=True, help="stream file to write (*.jsonl for JSON Lines)")
    args = parser.parse_args(argv)
    try:
        work = generate(args.regime, args.n, args.seed, holds=args.holds, members=args.members)
    except ValueError as exc:
        parser.error(str(exc))
    count = write_stream(args.output, work.header, work.all())
    print(f"wrote {count} commands ({len(work.warmup)} warm-up, {len(work.commands)} measured) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

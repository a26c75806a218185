"""etx beside the plain book: the same flow through etx's engine and through the plain
way to write a book in Python (``../shared/baselines/plainbook.py``: a SortedDict of
levels, a deque per level, lazy cancels), in one process, fills checked equal, etx's
speed reported as a ratio to the plain book's measured in the same run.

Regimes (prices in ticks; the book's band is ``width`` ticks, the flow in its middle):

- ``carbon``: the carbon market's flow, one instrument near its reference price with a
  band of 2,000 ticks: about 2,000-2,400 resting orders over ~130 levels a side, 60 %
  adds, 30 % cancels, 8 % crossing limit orders, 2 % market orders (measured: 63 %
  limit orders, 35 % cancels, 2 % market orders; see ``generate``).
- ``wide``: a sparse book over a 60,000-tick span (the band's, if narrower): ~1,000
  resting orders, so almost every cancel and every trade empties a level.
- ``swing``: as ``wide`` with the mid moving 30 % of the span up, down and back.
- ``crash``: ordinary flow near the top of the band, then a flash crash through the
  whole band (bids pulled, sellers sweeping down) and the recovery back up.

Each regime runs at band widths of 2,000, 60,000 and 2,000,000 ticks. ``carbon``,
``wide`` and ``swing`` at 2,000,000 are the same flow as at 60,000 (``carbon``: as at
2,000) in a wider band: the engine's speed must not depend on the band.

Ways of feeding the engine (the plain book is always called once per order):

- ``call``: one command per call, built by the caller from the order in hand as a
  member's order arrives (``NewOrder``/``Cancel``), applied and its events taken with
  ``Engine.process``, acknowledgements on (as the gateway runs);
- ``direct``: one order per call handed to the engine as its fields
  (``Engine.new_order``/``Engine.cancel``, no command object), acknowledgements on;
- ``call-noacks``: the same as ``call`` with the engine's acknowledgements off;
- ``batch``: commands built by the caller and applied in batches of 128;
- ``engine``: commands built in advance, applied in one batch (the engine alone);
- ``holds``: as ``engine``, on the settlement ledger with the exchange's fees: every
  order holds its cash or allowances pre-trade and every fill settles by delivery
  versus payment (the plain book does neither).

Run ``python -m benchmarks.vs_plain`` for the table (``--n``, ``--runs``, ``--regimes``,
``--widths``, ``--ways``); ``benchmarks/test_vs_plain.py`` runs the same under
pytest-benchmark. The plain book is imported from ``../shared/baselines`` (or the
folder in ``ETX_PLAINBOOK``), never copied into the project.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from engine.instrument import Instrument
from engine.matching import Engine
from engine.messages import Cancel, NewOrder, OrdType, TimeInForce, Trade

LIMIT, MARKET, CANCEL = 0, 1, 2
BUY, SELL = 1, 2  # etx's sides; the plain book's are 0 and 1
SYMBOL = "X"
MEMBERS = ("B", "S")  # one member per side: self-trade prevention never fires
QTYS = (1, 10, 50, 100, 200, 300, 500, 1_000, 2_000, 5_000)
QTY_WEIGHTS = (2, 5, 8, 20, 15, 10, 15, 12, 7, 4)
REGIMES = ("carbon", "wide", "swing", "crash")
WIDTHS = (2_000, 60_000, 2_000_000)
WAYS = ("call", "direct", "call-noacks", "batch", "engine", "holds")
BATCH = 128


def plainbook() -> ModuleType:
    """The plain book, from ``../shared/baselines`` beside the project (or ETX_PLAINBOOK)."""
    folder = Path(os.environ.get("ETX_PLAINBOOK") or Path(__file__).resolve().parents[2] / "shared" / "baselines")
    if not (folder / "plainbook.py").is_file():
        raise SystemExit(f"the plain book is not at {folder}/plainbook.py: set ETX_PLAINBOOK to its folder")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return importlib.import_module("plainbook")


class Flow(NamedTuple):
    """Orders as (kind, oid, side, price, qty): ``kind`` LIMIT, MARKET or CANCEL (oid is
    then the order cancelled), ``side`` etx's (1 buy, 2 sell). Order ids count from 1 in
    the order the orders come, as etx numbers the orders it accepts."""

    regime: str
    width: int
    low: int  # the band: [low, low + width - 1]
    warmup: list[tuple[int, int, int, int, int]]
    ops: list[tuple[int, int, int, int, int]]


class _Gen:
    """Writes a flow while running it through the plain book, which tells it the live
    orders (for cancels) and the best prices (for crossing orders)."""

    def __init__(self, seed: int, low: int, width: int) -> None:
        self.rng = random.Random(seed)
        self.book = plainbook().Book()
        self.low, self.high = low, low + width - 1
        self.oid = 0
        self.live: list[int] = []  # live order ids, for a cancel picked at random
        self.where: dict[int, int] = {}  # oid -> index in live
        self.side_of: dict[int, int] = {}

    def clip(self, price: int) -> int:
        return min(self.high, max(self.low, price))

    def qty(self) -> int:
        return self.rng.choices(QTYS, QTY_WEIGHTS)[0]

    def _forget(self, oid: int) -> None:
        i = self.where.pop(oid)
        last = self.live.pop()
        if last != oid:
            self.live[i] = last
            self.where[last] = i

    def _fills(self, fills: Any) -> None:
        orders = self.book.orders
        for oid, _, _ in fills:
            if oid in self.where and oid not in orders:
                self._forget(oid)

    def limit(self, side: int, price: int, qty: int) -> tuple[int, int, int, int, int]:
        self.oid += 1
        oid, price = self.oid, self.clip(price)
        self._fills(self.book.limit(oid, side - 1, price, qty, MEMBERS[side - 1]))
        if oid in self.book.orders:
            self.where[oid] = len(self.live)
            self.live.append(oid)
            self.side_of[oid] = side
        return (LIMIT, oid, side, price, qty)

    def market(self, side: int, qty: int) -> tuple[int, int, int, int, int]:
        self.oid += 1
        self._fills(self.book.market(self.oid, side - 1, qty, MEMBERS[side - 1]))
        return (MARKET, self.oid, side, 0, qty)

    def cancel(self, side: int = 0) -> tuple[int, int, int, int, int] | None:
        """Cancel a live order picked at random (of ``side`` if given and one is found
        within a few picks)."""
        if not self.live:
            return None
        for _ in range(8):
            oid = self.live[self.rng.randrange(len(self.live))]
            if not side or self.side_of[oid] == side:
                break
        self._forget(oid)
        assert self.book.cancel(oid)
        return (CANCEL, oid, self.side_of[oid], 0, 0)

    def best(self, side: int) -> int | None:
        return self.book.best_bid() if side == BUY else self.book.best_ask()

    def cross(self, side: int, mid: int, through: int, size: int = 1) -> tuple[int, int, int, int, int]:
        """A limit order priced ``through`` ticks past the opposite best (at mid if that
        side is empty), of ``size`` ordinary order sizes: it trades and may rest."""
        best = self.best(SELL if side == BUY else BUY)
        base = mid if best is None else best
        qty = sum(self.qty() for _ in range(size))
        return self.limit(side, base + through if side == BUY else base - through, qty)

    def add(self, side: int, mid: int, offset: int) -> tuple[int, int, int, int, int]:
        """A limit order ``offset`` ticks behind the mid on its side."""
        return self.limit(side, mid - offset if side == BUY else mid + offset, self.qty())


def generate(regime: str, n: int, width: int, seed: int = 1) -> Flow:
    """The flow of a regime: a warm-up that builds the book, then ``n`` measured orders."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}")
    if width < 2_000:
        raise ValueError(f"band width {width} is narrower than the carbon flow's 2,000 ticks")
    natural = {"carbon": 2_000, "wide": 60_000, "swing": 60_000, "crash": width}[regime]
    span = min(natural, width)
    low = 1
    g = _Gen(seed, low, width)
    rng = g.rng
    centre = low + width // 2
    ops: list[tuple[int, int, int, int, int]] = []
    warmup: list[tuple[int, int, int, int, int]] = []

    def side() -> int:
        return BUY if rng.random() < 0.5 else SELL

    if regime == "carbon":
        # The touch within a tick or two of a fair price that wanders and is pulled back
        # to the centre; adds an exponential distance behind it (mean 30 ticks).
        mid = float(centre)
        target = 2_000
        for _ in range(target):
            warmup.append(g.add(side(), round(mid), 1 + int(rng.expovariate(1 / 30))))
        while len(ops) < n:
            mid += rng.gauss(0, 0.3) + (centre - mid) * 0.001
            m = round(mid)
            # Crossing and market orders of five ordinary sizes take several orders off
            # the book; past 1.2 times its size an add becomes a cancel, so the book
            # keeps about 2,400 orders and the mix comes out at about 63 % limit
            # orders (adds and crossing), 35 % cancels and 2 % market orders.
            r = rng.random()
            if r < 0.6 and len(g.live) > target * 1.2:
                r = 0.6
            if r < 0.6:
                ops.append(g.add(side(), m, 1 + int(rng.expovariate(1 / 30))))
            elif r < 0.9:
                op = g.cancel()
                if op:
                    ops.append(op)
            elif r < 0.98:
                ops.append(g.cross(side(), m, rng.randrange(3), 5))
            else:
                ops.append(g.market(side(), sum(g.qty() for _ in range(5))))
    elif regime in ("wide", "swing"):
        # A sparse book: ~1,000 orders spread over the span, so levels hold one order
        # or none and almost every cancel empties one.
        target = 1_000
        spread = span / 8 if regime == "wide" else span / 40
        for _ in range(target):
            warmup.append(g.add(side(), centre, 1 + int(rng.expovariate(1 / spread))))
        period = max(1, n // 2)
        while len(ops) < n:
            if regime == "swing":  # the mid 30 % of the span up, down and back, twice
                phase = (len(ops) % period) / period
                mid = centre + int(0.3 * span * math.sin(2 * math.pi * phase))
            else:
                mid = centre
            r = rng.random()
            if r < 0.5 and len(g.live) > target * 1.1:
                r = 0.5
            if r < 0.5:
                ops.append(g.add(side(), mid, 1 + int(rng.expovariate(1 / spread))))
            elif r < 0.9:
                op = g.cancel()
                if op:
                    ops.append(op)
            elif r < 0.98:
                ops.append(g.cross(side(), mid, rng.randrange(3)))
            else:
                ops.append(g.market(side(), g.qty()))
    else:  # crash
        # Near the top of the band, then the mid falls to the bottom in a quarter of the
        # flow (bids pulled, sellers crossing), and climbs back in the last half.
        top, bottom = low + int(width * 0.9), low + int(width * 0.05)
        target = 1_000
        for _ in range(target):
            warmup.append(g.add(side(), top, 1 + int(rng.expovariate(1 / 20))))
        while len(ops) < n:
            i = len(ops)
            if i < n // 4:
                mid, sell_bias, cancel_bid = top, 0.5, 0.5
            elif i < n // 2:
                mid = top - (top - bottom) * (i - n // 4) // (n // 4)
                sell_bias, cancel_bid = 0.9, 0.9
            else:
                mid = bottom + (top - bottom) * (i - n // 2) // (n - n // 2)
                sell_bias, cancel_bid = 0.2, 0.2
            r = rng.random()
            if r < 0.4 and len(g.live) > target * 1.1:
                r = 0.4
            if r < 0.4:
                ops.append(g.add(side(), mid, 1 + int(rng.expovariate(1 / 20))))
            elif r < 0.7:
                op = g.cancel(BUY if rng.random() < cancel_bid else SELL)
                if op:
                    ops.append(op)
            elif r < 0.95:
                s = SELL if rng.random() < sell_bias else BUY
                ops.append(g.cross(s, mid, rng.randrange(1, 15)))
            else:
                ops.append(g.market(SELL if rng.random() < sell_bias else BUY, g.qty()))
    return Flow(regime, width, low, warmup, ops)


# --- etx ------------------------------------------------------------------------------


def etx_engine(flow: Flow, acks: bool, holds: bool = False) -> Engine:
    """An engine for the flow: one instrument whose band is the flow's, the warm-up
    applied; with ``holds``, on a funded settlement ledger with fees."""
    rules = Instrument(symbol=SYMBOL, ref_price=flow.low, band_bps=0, price_min=flow.low,
                       price_max=flow.low + flow.width - 1, holds=holds, qty_max=99_999)
    engine = Engine([rules], funded_ledger() if holds else None, acks=acks)
    engine.apply_batch(etx_commands(flow.warmup, 1))
    engine.out.clear()
    return engine


def funded_ledger() -> Any:
    """The settlement ledger with the exchange's default fees (0.03 % trading, 0.005 %
    settlement, each side): the buyer with cash, the seller with allowances of the
    flow's instrument, both far more than any flow needs."""
    from settlement import Fees, HolderType, Ledger, OpenAccount, Posting
    from settlement.messages import Deposit

    ledger = Ledger(Fees(trading_ppm=300, settlement_ppm=50, reserve_share_ppm=100_000))
    buyer, seller = MEMBERS
    for seq, cmd in enumerate((OpenAccount("clerk", buyer, int(HolderType.INSTITUTION)),
                               OpenAccount("clerk", seller, int(HolderType.INSTITUTION)),
                               Deposit("clerk", buyer, 10**15)), start=1):
        cmd.seq = seq
        ledger.execute(cmd)
    # Issued as a recorded posting: the flow's instrument is not a vintage the registry's
    # commands would take.
    ledger.apply_posting(Posting("C4", 4, 0, "allocate", "4", "mee", ((seller, SYMBOL, 10**13, 0),), seller))
    ledger.take_postings()
    return ledger


def etx_command(op: tuple[int, int, int, int, int], seq: int) -> Any:
    kind, oid, side, price, qty = op
    if kind == CANCEL:
        return Cancel(MEMBERS[side - 1], oid, seq=seq, ts=seq)
    if kind == LIMIT:
        return NewOrder(MEMBERS[side - 1], str(oid), SYMBOL, side, qty, price, seq=seq, ts=seq)
    return NewOrder(MEMBERS[side - 1], str(oid), SYMBOL, side, qty, 0, int(OrdType.MARKET), seq=seq, ts=seq)


def etx_commands(ops: list[tuple[int, int, int, int, int]], first_seq: int) -> list[Any]:
    return [etx_command(op, first_seq + i) for i, op in enumerate(ops)]


def run_etx(flow: Flow, way: str, engines: list[Engine] | None = None) -> float:
    """Seconds etx takes for the measured orders, fed one way (the engine is appended
    to ``engines`` when given, for a test to look at)."""
    engine = etx_engine(flow, acks=way != "call-noacks", holds=way == "holds")
    if engines is not None:
        engines.append(engine)
    seq = len(flow.warmup) + 1
    ops = flow.ops
    out = engine.out
    if way == "engine" or way == "holds":
        cmds = etx_commands(ops, seq)
        t0 = time.perf_counter_ns()
        engine.apply_batch(cmds)
        out.clear()
        return (time.perf_counter_ns() - t0) / 1e9
    members = MEMBERS
    new_order, cancel = NewOrder, Cancel
    market = int(OrdType.MARKET)
    if way == "batch":
        t0 = time.perf_counter_ns()
        batch: list[Any] = []
        for kind, oid, side, price, qty in ops:
            if kind == CANCEL:
                batch.append(cancel(members[side - 1], oid, seq=seq, ts=seq))
            elif kind == LIMIT:
                batch.append(new_order(members[side - 1], str(oid), SYMBOL, side, qty, price, seq=seq, ts=seq))
            else:
                batch.append(new_order(members[side - 1], str(oid), SYMBOL, side, qty, 0, market, seq=seq, ts=seq))
            seq += 1
            if len(batch) == BATCH:
                engine.apply_batch(batch)
                events = out.copy()
                out.clear()
                batch = []
        engine.apply_batch(batch)
        events = out.copy()
        out.clear()
        del events
        return (time.perf_counter_ns() - t0) / 1e9
    if way == "direct":
        new, cancel_order = engine.new_order, engine.cancel  # one order's fields in, its events out
        limit, day = int(OrdType.LIMIT), int(TimeInForce.DAY)
        t0 = time.perf_counter_ns()
        for kind, oid, side, price, qty in ops:
            if kind == CANCEL:
                events = cancel_order(members[side - 1], oid, seq, seq)
            elif kind == LIMIT:
                events = new(members[side - 1], str(oid), SYMBOL, side, qty, price, limit, day, 0, seq, seq)
            else:
                events = new(members[side - 1], str(oid), SYMBOL, side, qty, 0, market, day, 0, seq, seq)
            seq += 1
        del events
        return (time.perf_counter_ns() - t0) / 1e9
    process = engine.process  # applies one command and returns its events
    t0 = time.perf_counter_ns()
    for kind, oid, side, price, qty in ops:
        if kind == CANCEL:
            events = process(cancel(members[side - 1], oid, seq=seq, ts=seq))
        elif kind == LIMIT:
            events = process(new_order(members[side - 1], str(oid), SYMBOL, side, qty, price, seq=seq, ts=seq))
        else:
            events = process(new_order(members[side - 1], str(oid), SYMBOL, side, qty, 0, market, seq=seq, ts=seq))
        seq += 1
    del events
    return (time.perf_counter_ns() - t0) / 1e9


def run_plain(flow: Flow) -> float:
    """Seconds the plain book takes for the measured orders, one call per order."""
    book = plainbook().Book()
    plain_apply(book, flow.warmup)
    members = MEMBERS
    limit, market, cancel = book.limit, book.market, book.cancel
    t0 = time.perf_counter_ns()
    for kind, oid, side, price, qty in flow.ops:
        if kind == CANCEL:
            cancel(oid)
        elif kind == LIMIT:
            fills = limit(oid, side - 1, price, qty, members[side - 1])
        else:
            fills = market(oid, side - 1, qty, members[side - 1])
    del fills
    return (time.perf_counter_ns() - t0) / 1e9


def plain_apply(book: Any, ops: list[tuple[int, int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Runs ops through a plain book; the fills as (taker oid, maker oid, price, qty)."""
    fills: list[tuple[int, int, int, int]] = []
    for kind, oid, side, price, qty in ops:
        if kind == CANCEL:
            assert book.cancel(oid), oid
            continue
        got = book.limit(oid, side - 1, price, qty, MEMBERS[side - 1]) if kind == LIMIT else \
            book.market(oid, side - 1, qty, MEMBERS[side - 1])
        fills += [(oid, maker, p, q) for maker, p, q in got]
    return fills


def same_fills(flow: Flow) -> int:
    """Runs the flow through both books and checks every fill is the same (taker,
    maker, price, quantity), every order accepted and every cancel done by etx. Returns
    the number of fills."""
    plain = plainbook().Book()
    plain_apply(plain, flow.warmup)
    want = plain_apply(plain, flow.ops)
    engine = etx_engine(flow, acks=True)
    engine.apply_batch(etx_commands(flow.ops, len(flow.warmup) + 1))
    got = [(e.taker_order_id, e.maker_order_id, e.price, e.qty) for e in engine.out if type(e) is Trade]
    rejected = [e for e in engine.out if type(e).__name__ == "Rejected"]
    if rejected:
        raise AssertionError(f"{flow.regime} at {flow.width}: etx rejected {len(rejected)} orders, first {rejected[0]}")
    if got != want:
        i = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        raise AssertionError(f"{flow.regime} at {flow.width}: fills differ at fill {i}: "
                             f"etx {got[i:i + 3]}, plain {want[i:i + 3]} ({len(got)} against {len(want)})")
    bid, ask = engine.bbo(SYMBOL)[0], engine.bbo(SYMBOL)[2]
    assert (bid or None, ask or None) == (plain.best_bid(), plain.best_ask()), (bid, ask, plain.best_bid(), plain.best_ask())
    return len(got)


class Row(NamedTuple):
    regime: str
    width: int
    way: str
    etx: float  # orders per second, median
    plain: float
    ratio: float  # median of the per-run ratios (each run times both)


def measure(flow: Flow, way: str, runs: int, timer: Callable[[], float] | None = None) -> Row:
    """Each run times the plain book and etx back to back (order alternating), the
    garbage collector collected before each; the ratio is the median of the runs'."""
    n = len(flow.ops)
    etx_rates, plain_rates, ratios = [], [], []
    for run in range(runs):
        pair = []
        for who in (("plain", "etx") if run % 2 else ("etx", "plain")):
            gc.collect()
            seconds = run_plain(flow) if who == "plain" else run_etx(flow, way)
            pair.append((who, n / seconds))
        rates = dict(pair)
        etx_rates.append(rates["etx"])
        plain_rates.append(rates["plain"])
        ratios.append(rates["etx"] / rates["plain"])
    return Row(flow.regime, flow.width, way, statistics.median(etx_rates), statistics.median(plain_rates),
               statistics.median(ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--n", type=int, default=100_000, help="measured orders per flow")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--widths", default=",".join(str(w) for w in WIDTHS))
    parser.add_argument("--ways", default=",".join(WAYS))
    args = parser.parse_args(argv)
    regimes = args.regimes.split(",")
    ways = args.ways.split(",")
    for name, given, known in (("regime", regimes, REGIMES), ("way", ways, WAYS)):
        bad = [x for x in given if x not in known]
        if bad:
            parser.error(f"unknown {name} {bad[0]!r}; expected one of {', '.join(known)}")
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths takes band widths in ticks, like 2000,60000, got {args.widths!r}")
    print(f"etx beside the plain book: {args.n:,} orders per flow, median of {args.runs} runs, "
          f"compiled: {compiled()}")
    print(f"{'regime':8} {'band':>10} {'way':12} {'etx/s':>11} {'plain/s':>11} {'ratio':>6}")
    for regime in regimes:
        for width in widths:
            flow = generate(regime, args.n, width, args.seed)
            fills = same_fills(flow)
            for way in ways:
                row = measure(flow, way, args.runs)
                print(f"{regime:8} {width:>10,} {way:12} {row.etx:>11,.0f} {row.plain:>11,.0f} {row.ratio:>6.2f}"
                      f"   ({fills:,} fills, same in both)" if way == ways[0] else
                      f"{'':8} {'':>10} {way:12} {row.etx:>11,.0f} {row.plain:>11,.0f} {row.ratio:>6.2f}", flush=True)
    return 0


def compiled() -> bool:
    import engine.matching
    return not engine.matching.__file__.endswith(".py") if engine.matching.__file__ else False


if __name__ == "__main__":
    raise SystemExit(main())

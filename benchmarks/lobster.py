"""Replay real Nasdaq order flow from LOBSTER files through the engine.

Input: a LOBSTER zip (read in place, streaming), a message CSV (the orderbook CSV is
found beside it by name), or a folder holding both. See
``shared/data/lobster/README.md`` for the format and docs/replay.md for the mapping:

- the instrument: LOBSTER's symbol, prices converted from dollars x 10,000 to cents
  (tick 1), no band (``band_bps=0``) with ``price_min``/``price_max`` from the prices
  the replayed rows use plus a margin, no holds;
- the opening book: the orderbook file's row 0 with message 0 undone (row k is the
  book *after* message k), entered as one anonymous order per level of member
  ``SEED``;
- type 1 (new) -> ``NewOrder`` of member ``L<id>``; type 2 (partial cancel) -> an
  ``Amend`` to the smaller quantity at the same price (keeps priority); type 3
  (delete) -> ``Cancel``; type 4 (visible execution) -> an IOC ``NewOrder`` of member
  ``X`` on the opposite side at that price and size; types 5, 6 and 7 are counted
  and ignored;
- a cancel, partial cancel or execution of an id the file never added reduces the
  ``SEED`` order at its price and side when there is one; otherwise it is reported
  as not applicable.

Every LOBSTER order has a member of its own (``L`` and its id), executions come from
``X`` and the opening book from ``SEED``: no two orders that can meet share a member,
so self-trade prevention never fires and every crossing trades.

After each row (or every ``check_every`` rows) the engine's top of book is compared with
the orderbook file's: a realistic check of book reconstruction, not an oracle (hidden
liquidity and levels beyond the tenth make the replay drift; see the README).

Contract: ``LobsterReplay(path).run()`` never raises on bad file content: malformed
rows and commands the engine refuses are counted in the report by reason. Only a
source that cannot be opened at all raises ``LobsterError``.
"""

from __future__ import annotations

import calendar
import io
import os
import re
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from engine.instrument import Instrument
from engine.matching import Engine
from engine.messages import (
    Accepted,
    Amend,
    Cancel,
    Command,
    NewOrder,
    Reason,
    Rejected,
    Side,
    TimeInForce,
    Trade,
)
from engine.sequencer import ManualClock, Sequencer
from engine.stream import STREAM_VERSION, StreamHeader, StreamWriter, Tally, build_engine

BUY, SELL = int(Side.BUY), int(Side.SELL)
PRICE_PER_CENT = 100  # LOBSTER prices are dollars x 10,000
EMPTY_PRICE = 9_999_999_999  # LOBSTER's dummy price of an empty level (negative for bids)
RANGE_MAX = 2_000_000  # the widest price range an instrument may have, in ticks
LEVELS_MAX = 200  # orderbook levels read from row 0
EXAMPLES_MAX = 5  # malformed rows quoted in the report
NAME = re.compile(r"(?P<symbol>[A-Za-z0-9.]+)_(?P<date>\d{4}-\d{2}-\d{2})_\d+_\d+_(?P<kind>message|orderbook)_\d+\.csv$")
SEED, EXECUTOR = "SEED", "X"

TYPE_NAMES = {
    1: "new order", 2: "partial cancel", 3: "delete", 4: "execution",
    5: "hidden execution", 6: "cross trade", 7: "trading halt",
}


class LobsterError(Exception):
    """The source cannot be read at all (missing, not a zip, no message file)."""


class Message:
    """One row of the message file, prices still in LOBSTER units."""

    __slots__ = ("ts", "type", "order_id", "size", "price", "side")

    def __init__(self, ts: int, type_: int, order_id: int, size: int, price: int, side: int) -> None:
        self.ts, self.type, self.order_id, self.size, self.price, self.side = ts, type_, order_id, size, price, side


def parse_time_ns(text: str) -> int:
    """Seconds after midnight with decimals -> integer nanoseconds, exactly."""
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"time {text!r} is not seconds with decimals")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def parse_message(line: str, base_ns: int = 0) -> Message:
    """One message row; ValueError saying what is wrong with it."""
    fields = line.strip().split(",")
    if len(fields) != 6:
        raise ValueError(f"expected 6 fields, got {len(fields)}")
    ts = base_ns + parse_time_ns(fields[0])
    type_, order_id, size, price, direction = (int(f) for f in fields[1:])
    if not 1 <= type_ <= 7:
        raise ValueError(f"type {type_} is not 1-7")
    if type_ <= 5:
        if size <= 0:
            raise ValueError(f"size {size} is not positive")
        if price <= 0:
            raise ValueError(f"price {price} is not positive")
        if direction not in (1, -1):
            raise ValueError(f"direction {direction} is not 1 or -1")
    return Message(ts, type_, order_id, size, price, BUY if direction == 1 else SELL)


def parse_book_row(line: str, levels: int = 1) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(asks, bids) of an orderbook row as (LOBSTER price, size), best first, without
    the dummy entries of empty levels."""
    fields = line.strip().split(",")
    if len(fields) < 4 or len(fields) % 4:
        raise ValueError(f"expected a multiple of 4 fields, got {len(fields)}")
    asks: list[tuple[int, int]] = []
    bids: list[tuple[int, int]] = []
    for i in range(0, min(len(fields), 4 * levels), 4):
        ask_px, ask_sz, bid_px, bid_sz = (int(f) for f in fields[i:i + 4])
        if 0 < ask_px < EMPTY_PRICE and ask_sz > 0:
            asks.append((ask_px, ask_sz))
        if 0 < bid_px < EMPTY_PRICE and bid_sz > 0:
            bids.append((bid_px, bid_sz))
    return asks, bids


# --- the files -------------------------------------------------------------------------


class Source:
    """A LOBSTER message file and, when present, its orderbook file, from a zip, a
    message CSV or a folder. Opens a fresh reader on each call, streaming."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.zip: zipfile.ZipFile | None = None
        if not os.path.exists(self.path):
            raise LobsterError(f"{self.path}: no such file or folder")
        if os.path.isdir(self.path):
            names = sorted(os.listdir(self.path))
            self.message = self._pick(names, "message")
            self.orderbook = self._pick(names, "orderbook", required=False)
            self.message = os.path.join(self.path, self.message)
            if self.orderbook:
                self.orderbook = os.path.join(self.path, self.orderbook)
        elif zipfile.is_zipfile(self.path):
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise LobsterError(f"{self.path}: cannot read the zip: {exc}") from None
            names = [n for n in self.zip.namelist() if not n.endswith("/")]
            self.message = self._pick(names, "message")
            self.orderbook = self._pick(names, "orderbook", required=False)
        else:
            self.message = self.path
            guess = self.path.replace("_message_", "_orderbook_")
            self.orderbook = guess if guess != self.path and os.path.exists(guess) else ""
        match = NAME.search(os.path.basename(self.message))
        self.symbol = match["symbol"] if match else "LOBSTER"
        self.date = match["date"] if match else "1970-01-01"
        year, month, day = (int(x) for x in self.date.split("-"))
        self.base_ns = calendar.timegm((year, month, day, 0, 0, 0)) * 1_000_000_000

    def _pick(self, names: list[str], kind: str, required: bool = True) -> str:
        found = [n for n in names if NAME.search(os.path.basename(n)) and f"_{kind}_" in os.path.basename(n)]
        if len(found) > 1:
            raise LobsterError(f"{self.path}: more than one {kind} file: {', '.join(found)}")
        if not found and required:
            raise LobsterError(f"{self.path}: no LOBSTER {kind} file (TICKER_DATE_START_END_{kind}_LEVELS.csv)")
        return found[0] if found else ""

    def _open(self, name: str) -> IO[str]:
        try:
            if self.zip is not None:
                return io.TextIOWrapper(self.zip.open(name), encoding="ascii", errors="replace", newline="")
            return open(name, encoding="ascii", errors="replace", newline="")
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise LobsterError(f"{self.path}: cannot open {name}: {exc}") from None

    def message_lines(self) -> Iterator[str]:
        with self._open(self.message) as f:
            yield from f

    def book_lines(self) -> Iterator[str]:
        if not self.orderbook:
            return
        with self._open(self.orderbook) as f:
            yield from f

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


# --- the report ------------------------------------------------------------------------


@dataclass
class Report:
    """What a LOBSTER replay did and how closely it tracked the orderbook file."""

    source: str
    symbol: str
    rows: int = 0  # message rows read
    by_type: Counter[str] = field(default_factory=Counter)  # rows per message type
    applied: Counter[str] = field(default_factory=Counter)  # rows turned into commands, per type
    not_applied: Counter[str] = field(default_factory=Counter)  # reason -> rows
    ignored: Counter[str] = field(default_factory=Counter)  # types 5, 6, 7
    drift: Counter[str] = field(default_factory=Counter)  # applied, but the book had drifted
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    seed_orders: int = 0
    commands: int = 0
    exec_short_shares: int = 0  # execution shares the replayed book could not match
    checked: int = 0  # rows whose top of book was compared
    bid_match: int = 0
    ask_match: int = 0
    both_match: int = 0
    exact_match: int = 0  # both prices and both sizes
    check_note: str = ""
    engine_seconds: float = 0.0
    wall_seconds: float = 0.0
    state_hash: str = ""
    tally: Tally = field(default_factory=Tally)
    instrument: Instrument | None = None

    def as_dict(self) -> dict[str, Any]:
        def frac(n: int) -> float:
            return round(n / self.checked, 4) if self.checked else 0.0

        return {
            "source": self.source, "symbol": self.symbol, "rows": self.rows,
            "by_type": dict(self.by_type), "applied": dict(self.applied),
            "not_applied": dict(self.not_applied.most_common()), "ignored": dict(self.ignored),
            "drift": dict(self.drift.most_common()), "exec_short_shares": self.exec_short_shares,
            "malformed": self.malformed, "malformed_examples": self.malformed_examples,
            "seed_orders": self.seed_orders, "commands": self.commands,
            "check": {
                "rows": self.checked, "bid_price": frac(self.bid_match), "ask_price": frac(self.ask_match),
                "both_prices": frac(self.both_match), "prices_and_sizes": frac(self.exact_match),
                "note": self.check_note,
            },
            "engine_seconds": round(self.engine_seconds, 6), "wall_seconds": round(self.wall_seconds, 6),
            "commands_per_second": round(self.commands / self.engine_seconds) if self.engine_seconds else 0,
            "state_hash": self.state_hash, **self.tally.as_dict(),
        }


# --- the replay ------------------------------------------------------------------------


class LobsterReplay:
    """Drives a fresh engine through a LOBSTER file; see the module docstring."""

    def __init__(
        self, path: str | os.PathLike[str], *, limit: int | None = None, check_every: int = 1,
        save: str | os.PathLike[str] | None = None,
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {check_every}")
        self.source = Source(path)
        self.limit = limit
        self.check_every = check_every
        self.save = save
        self.report = Report(self.source.path, self.source.symbol)

    # The rows to replay: the first ``limit`` of the message file.
    def _rows(self) -> Iterator[tuple[int, str]]:
        for number, line in enumerate(self.source.message_lines(), 1):
            if self.limit is not None and number > self.limit:
                return
            yield number, line

    def _malformed(self, number: int, what: str, exc: Exception) -> None:
        self.report.malformed += 1
        if len(self.report.malformed_examples) < EXAMPLES_MAX:
            self.report.malformed_examples.append(f"{what} line {number}: {exc}")

    def _opening_book(self, first: Message | None) -> dict[int, dict[int, int]]:
        """Row 0 with message 0 undone: {side: {LOBSTER price: size}}."""
        book: dict[int, dict[int, int]] = {BUY: {}, SELL: {}}
        try:
            line = next(iter(self.source.book_lines()), "")
        except LobsterError as exc:
            self.report.check_note = str(exc)
            return book
        if not line:
            self.report.check_note = "no orderbook file: no opening book and no top-of-book check"
            return book
        try:
            asks, bids = parse_book_row(line, LEVELS_MAX)
        except ValueError as exc:
            self._malformed(1, "orderbook", exc)
            return book
        book[SELL].update(asks)
        book[BUY].update(bids)
        if first is not None and first.type <= 4:
            levels = book[first.side]
            size = levels.get(first.price, 0) + (-first.size if first.type == 1 else first.size)
            if size > 0:
                levels[first.price] = size
            else:
                levels.pop(first.price, None)
        return book

    def _instrument(self, opening: dict[int, dict[int, int]]) -> Instrument:
        """Scan the rows to replay for their price range and largest size."""
        lo, hi, size_max = 0, 0, 1
        for levels in opening.values():
            for p, size in levels.items():
                if p % PRICE_PER_CENT == 0:
                    cents = p // PRICE_PER_CENT
                    lo, hi = (min(lo, cents) if lo else cents), max(hi, cents)
                    size_max = max(size_max, size)
        for _, line in self._rows():
            try:
                msg = parse_message(line)
            except ValueError:
                continue
            if msg.type <= 4 and msg.price % PRICE_PER_CENT == 0:
                cents = msg.price // PRICE_PER_CENT
                lo, hi = (min(lo, cents) if lo else cents), max(hi, cents)
                size_max = max(size_max, msg.size)
        if not hi:
            lo, hi = 1, 2
        margin = (hi - lo) // 10 + 10
        low, high = max(1, lo - margin), hi + margin
        if high - low > RANGE_MAX:  # keep the book's array bounded: centre on the opening
            bid = max(opening[BUY], default=0) // PRICE_PER_CENT
            ask = min(opening[SELL], default=0) // PRICE_PER_CENT
            mid = (bid + ask) // 2 if bid and ask else (lo + hi) // 2
            low, high = max(1, mid - RANGE_MAX // 2), max(1, mid - RANGE_MAX // 2) + RANGE_MAX
        bid = max(opening[BUY], default=0) // PRICE_PER_CENT
        ask = min(opening[SELL], default=0) // PRICE_PER_CENT
        ref = (bid + ask) // 2 if bid and ask else (low + high) // 2
        return Instrument(
            symbol=self.source.symbol, ref_price=max(ref, 1), tick=1, lot=1, qty_min=1, qty_max=size_max,
            band_bps=0, price_min=low, price_max=high, holds=False,
        )

    def run(self) -> Report:
        report = self.report
        started = time.perf_counter()
        try:
            self._run()
        finally:
            self.source.close()
        report.wall_seconds = time.perf_counter() - started
        return report

    def _run(self) -> None:
        report = self.report
        source = self.source
        first: Message | None = None
        row = next(self._rows(), None)
        if row is not None:
            try:
                first = parse_message(row[1], source.base_ns)
            except ValueError:
                first = None
        opening = self._opening_book(first)
        rules = self._instrument(opening)
        report.instrument = rules
        header = StreamHeader(
            version=STREAM_VERSION, instruments=[rules],
            description=f"LOBSTER {source.symbol} {source.date} from {os.path.basename(source.path)}",
        )
        engine = build_engine(header)
        writer = StreamWriter(self.save, header) if self.save else None
        try:
            self._replay(engine, opening, first, writer)
        finally:
            if writer is not None:
                writer.close()
        report.state_hash = engine.state_hash()

    def _replay(
        self, engine: Engine, opening: dict[int, dict[int, int]], first: Message | None, writer: StreamWriter | None,
    ) -> None:
        report = self.report
        symbol = self.source.symbol
        clock = ManualClock()
        sequencer = Sequencer(clock)
        tally = report.tally
        perf = time.perf_counter_ns
        engine_ns = 0
        events: list[Any] = engine.out

        def apply(cmd: Command) -> list[Any]:
            nonlocal engine_ns
            sequencer.stamp(cmd)
            t0 = perf()
            engine.apply(cmd)
            engine_ns += perf() - t0
            report.commands += 1
            if writer is not None:
                writer.write(cmd)
            got = list(events)
            tally.feed(got)
            events.clear()
            return got

        # The opening book: one SEED order per level, entered at the first row's time.
        clock.now = first.ts if first is not None else self.source.base_ns
        seeds: dict[tuple[int, int], int] = {}
        for side in (BUY, SELL):
            for price, size in opening[side].items():
                if price % PRICE_PER_CENT:
                    report.not_applied["opening book: price not on the cent tick"] += 1
                    continue
                cents = price // PRICE_PER_CENT
                got = apply(NewOrder(SEED, f"{side}-{cents}", symbol, side, size, cents))
                for ev in got:
                    if isinstance(ev, Accepted):
                        seeds[side, cents] = ev.order_id
                        report.seed_orders += 1
                    elif isinstance(ev, Rejected):
                        report.not_applied[f"opening book: engine rejected: {_reason(ev.reason)}"] += 1

        known: dict[int, int] = {}  # LOBSTER id -> engine order id

        def rejected(got: list[Any], what: str) -> bool:
            for ev in got:
                if isinstance(ev, Rejected):
                    report.not_applied[f"{what}: engine rejected: {_reason(ev.reason)}"] += 1
                    return True
            return False

        def reduce_seed(msg: Message, cents: int, what: str) -> None:
            oid = seeds.get((msg.side, cents))
            order = engine.order(oid) if oid is not None else None
            if order is None:
                report.not_applied[f"{what}: unknown order and no opening quantity at its price"] += 1
                return
            if msg.size < order.qty:
                got = apply(Amend(SEED, order.order_id, order.price, order.qty - msg.size))
            else:
                if msg.size > order.qty:
                    report.drift[f"{what}: unknown order larger than the opening quantity left"] += 1
                got = apply(Cancel(SEED, order.order_id))
            if not rejected(got, what):
                report.applied[what + " (opening quantity)"] += 1

        def remove_stale(side: int, price: int, inclusive: bool, what: str) -> None:
            """Cancel the orders of ``side`` priced better than ``price`` (or equal, when
            inclusive). The message file says none are there: their deletion happened
            beyond the ten levels LOBSTER records."""
            half_best = engine.depth(symbol, 1)[0 if side == BUY else 1]
            while half_best:
                best = half_best[0][0]
                if side == BUY and (best < price or (best == price and not inclusive)):
                    return
                if side == SELL and (best > price or (best == price and not inclusive)):
                    return
                for order in engine.level_orders(symbol, side, best):
                    apply(Cancel(order.member, order.order_id))
                    report.drift[f"{what}: stale order removed first"] += 1
                half_best = engine.depth(symbol, 1)[0 if side == BUY else 1]

        book_rows = self.source.book_lines()
        check_every = self.check_every
        checking = check_every > 0 and bool(self.source.orderbook)
        if check_every and not self.source.orderbook:
            report.check_note = "no orderbook file: no top-of-book check"
        executions = 0

        for number, line in self._rows():
            report.rows += 1
            book_line = next(book_rows, None) if checking else None
            try:
                msg = parse_message(line, self.source.base_ns)
            except ValueError as exc:
                self._malformed(number, "message", exc)
                msg = None
            if msg is not None:
                clock.now = msg.ts
                kind = msg.type
                what = TYPE_NAMES[kind]
                report.by_type[what] += 1
                if kind >= 5:
                    report.ignored[what] += 1
                elif msg.price % PRICE_PER_CENT:
                    report.not_applied[f"{what}: price not on the cent tick"] += 1
                else:
                    cents = msg.price // PRICE_PER_CENT
                    lid = msg.order_id
                    if kind == 1:
                        if lid in known:
                            report.not_applied["new order: order id used twice"] += 1
                        else:
                            # A type-1 row rests: whatever it would cross in the replay is stale.
                            remove_stale(3 - msg.side, cents, True, what)
                            got = apply(NewOrder(f"L{lid}", str(lid), symbol, msg.side, msg.size, cents))
                            if not rejected(got, what):
                                report.applied[what] += 1
                                for ev in got:
                                    if isinstance(ev, Accepted):
                                        known[lid] = ev.order_id
                                    elif isinstance(ev, Trade):
                                        report.drift["new order traded on entry"] += 1
                                        break
                    elif kind in (2, 3):
                        oid = known.get(lid)
                        if oid is None:
                            reduce_seed(msg, cents, what)
                        else:
                            order = engine.order(oid)
                            if order is None:
                                report.not_applied[f"{what}: order no longer in the replayed book"] += 1
                            elif kind == 2 and msg.size < order.qty:
                                got = apply(Amend(order.member, oid, order.price, order.qty - msg.size))
                                if not rejected(got, what):
                                    report.applied[what] += 1
                            else:
                                if kind == 2:
                                    report.drift["partial cancel of the whole open quantity"] += 1
                                got = apply(Cancel(order.member, oid))
                                if not rejected(got, what):
                                    report.applied[what] += 1
                    else:  # a visible execution: an IOC of the other side at its price and size
                        oid = known.get(lid)
                        seed = seeds.get((msg.side, cents))
                        if oid is None and (seed is None or engine.order(seed) is None):
                            report.not_applied[f"{what}: unknown order and no opening quantity at its price"] += 1
                        else:
                            # The aggressor took every better level before this one.
                            remove_stale(msg.side, cents, False, what)
                            executions += 1
                            got = apply(NewOrder(EXECUTOR, f"x{executions}", symbol, 3 - msg.side, msg.size, cents,
                                                 tif=TimeInForce.IOC))
                            if not rejected(got, what):
                                report.applied[what] += 1
                                fills = sum(ev.qty for ev in got if isinstance(ev, Trade))
                                if fills < msg.size:
                                    report.drift["execution not fully matched"] += 1
                                    report.exec_short_shares += msg.size - fills
            if book_line is None:
                if checking:
                    checking = False
                    report.check_note = f"the orderbook file ended before message line {number}"
                continue
            if number % check_every:
                continue
            try:
                asks, bids = parse_book_row(book_line)
            except ValueError as exc:
                self._malformed(number, "orderbook", exc)
                continue
            self._compare(engine, asks, bids)
        report.engine_seconds = engine_ns / 1e9

    def _compare(self, engine: Engine, asks: list[tuple[int, int]], bids: list[tuple[int, int]]) -> None:
        report = self.report
        bid_px, bid_qty, ask_px, ask_qty = engine.bbo(self.source.symbol)
        want_bid = bids[0] if bids else (0, 0)
        want_ask = asks[0] if asks else (0, 0)
        bid_ok = bid_px * PRICE_PER_CENT == want_bid[0]
        ask_ok = ask_px * PRICE_PER_CENT == want_ask[0]
        report.checked += 1
        report.bid_match += bid_ok
        report.ask_match += ask_ok
        if bid_ok and ask_ok:
            report.both_match += 1
            if bid_qty == want_bid[1] and ask_qty == want_ask[1]:
                report.exact_match += 1


def _reason(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return f"reason {code}"


def replay(path: str | os.PathLike[str], **kwargs: Any) -> Report:
    """Shorthand: ``LobsterReplay(path, **kwargs).run()``."""
    return LobsterReplay(path, **kwargs).run()


"""``etx replay FILE``: run an order stream (or a LOBSTER file) through a fresh engine and
print what happened: commands per second, trades, volume and the final state hash.

The stream format is ``engine.stream`` (docs/replay.md). The file's commands are
stamped in order by a sequencer whose clock is each command's own ``ts``; a command
that already carries a sequence number must carry its position in the file (1 for the
first command) and a time no earlier than the previous command's, or it is a bad
frame. Bad frames stop the replay (``--on-error stop``, the default) or are reported
and skipped (``--on-error skip``); either way the summary of what was applied is
printed. A LOBSTER zip, message CSV or folder is replayed by ``benchmarks.lobster``.

Exit status: 0 when every frame was applied, 1 when some were bad, 2 when the file
could not be read at all (missing, no valid header, not a LOBSTER source).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from engine.matching import Engine
from engine.messages import Command
from engine.sequencer import ManualClock, Sequencer
from engine.stream import StreamError, Tally, build_engine, read_stream

BATCH_MAX = 1 << 16  # commands per apply_batch call
ERRORS_SHOWN = 20  # bad frames quoted one by one; the rest are counted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="stream file (*.jsonl for JSON Lines), LOBSTER zip, message CSV or folder")
    parser.add_argument("--format", choices=("auto", "msgpack", "jsonl", "lobster"), default="auto",
                        help="input format (default: from the name: .jsonl, .zip/.csv/folder = lobster, else msgpack)")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="at a bad frame: stop there, or report it and go on (default stop)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="replay only the first N commands (LOBSTER: message rows)")
    parser.add_argument("--batch", type=int, default=4096, metavar="N",
                        help=f"commands per engine batch (1-{BATCH_MAX}, default 4096)")
    parser.add_argument("--check-every", type=int, default=1, metavar="N",
                        help="LOBSTER: compare the top of book with the orderbook file every N rows (0: never)")
    parser.add_argument("--save", metavar="STREAM",
                        help="LOBSTER: also write the commands replayed as a stream file")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def detect_format(path: str) -> str:
    if os.path.isdir(path) or path.endswith((".zip", ".csv")):
        return "lobster"
    return "jsonl" if path.endswith(".jsonl") else "msgpack"


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        print(f"etx replay: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return 2
    if not 1 <= args.batch <= BATCH_MAX:
        print(f"etx replay: --batch must be in [1, {BATCH_MAX}], got {args.batch}", file=sys.stderr)
        return 2
    fmt = detect_format(args.file) if args.format == "auto" else args.format
    if fmt == "lobster":
        return _run_lobster(args)
    return _run_stream(args, fmt)


# --- streams -----------------------------------------------------------------------------


class StreamReplay:
    """Replays one stream file into a fresh engine; ``run`` returns the summary."""

    def __init__(self, path: str, fmt: str, *, skip: bool = False, limit: int | None = None, batch: int = 4096) -> None:
        self.path = path
        self.fmt = fmt
        self.skip = skip
        self.limit = limit
        self.batch = batch
        self.errors: list[str] = []
        self.bad = 0
        self.undecodable = 0  # bad frames skipped before reaching the replay loop
        self.stopped = ""

    def _bad(self, message: str) -> None:
        self.bad += 1
        if len(self.errors) < ERRORS_SHOWN:
            self.errors.append(message)

    def _on_error(self, exc: StreamError) -> None:
        self._bad(str(exc))
        self.undecodable += 1
        if exc.fatal:
            self.stopped = str(exc)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        header, commands = read_stream(self.path, "jsonl" if self.fmt == "jsonl" else "msgpack",
                                       on_error=self._on_error if self.skip else None)
        engine = build_engine(header)
        clock = ManualClock()
        sequencer = Sequencer(clock)
        tally = Tally()
        out = engine.out
        perf = time.perf_counter_ns
        engine_ns = 0
        read = applied = 0
        batch: list[Command] = []
        size = self.batch
        last_ts = 0

        def flush() -> None:
            nonlocal engine_ns
            t0 = perf()
            engine.apply_batch(batch)
            engine_ns += perf() - t0
            tally.feed(out)
            out.clear()
            batch.clear()

        try:
            for cmd in commands:
                read += 1
                if self.limit is not None and read > self.limit:
                    read -= 1
                    break
                position = read + self.undecodable  # frames skipped still take a position
                seq, ts = cmd.seq, cmd.ts  # type: ignore[attr-defined]
                problem = ""
                if seq and seq != position:
                    problem = f"command {position}: sequence number {seq}, expected {position} (its position) or 0"
                elif seq and ts < last_ts:
                    problem = f"command {position}: time {ts} is before the previous command's {last_ts}"
                if problem:
                    self._bad(f"{self.path}: {problem}")
                    if not self.skip:
                        self.stopped = f"{self.path}: {problem}"
                        break
                    continue
                if ts > last_ts:
                    last_ts = ts
                clock.now = ts
                batch.append(sequencer.stamp(cmd))
                applied += 1
                if len(batch) >= size:
                    flush()
        except StreamError as exc:  # only without skip: the stream stops at the bad frame
            self._bad(str(exc))
            self.stopped = str(exc)
        finally:
            close = getattr(commands, "close", None)
            if close is not None:
                close()
        if batch:
            flush()
        wall = time.perf_counter() - started
        seconds = engine_ns / 1e9
        return {
            "source": self.path, "format": self.fmt,
            "instruments": [i.symbol for i in header.instruments],
            "description": header.description,
            "commands_read": read, "commands_applied": applied, "bad_frames": self.bad,
            "errors": self.errors, "stopped": self.stopped,
            "engine_seconds": round(seconds, 6), "wall_seconds": round(wall, 6),
            "commands_per_second": round(applied / seconds) if seconds else 0,
            **tally.as_dict(),
            "books": _books(engine),
            "state_hash": engine.state_hash(),
        }


def _books(engine: Engine) -> dict[str, dict[str, int]]:
    books = {}
    for symbol, market in sorted(engine.markets.items()):
        bid, bid_qty, ask, ask_qty = engine.bbo(symbol)
        books[symbol] = {
            "bid": bid, "bid_qty": bid_qty, "ask": ask, "ask_qty": ask_qty,
            "last": market.last_price, "open_orders": sum(1 for o in engine.orders.values() if o.instrument == symbol),
        }
    return books


def _run_stream(args: argparse.Namespace, fmt: str) -> int:
    replay = StreamReplay(args.file, fmt, skip=args.on_error == "skip", limit=args.limit, batch=args.batch)
    try:
        summary = replay.run()
    except StreamError as exc:  # the header or the file itself: nothing to replay
        print(f"etx replay: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_stream(summary)
    return 1 if summary["bad_frames"] else 0


def _n(x: int) -> str:
    return f"{x:,}"


def _print_rejections(tally: dict[str, Any]) -> str:
    reasons = ", ".join(f"{name} {_n(n)}" for name, n in tally["rejected_by_reason"].items())
    return f"{_n(tally['rejected'])} rejected" + (f" ({reasons})" if reasons else "")


def _print_stream(s: dict[str, Any]) -> None:
    print(f"etx replay {s['source']}")
    if s["description"]:
        print(f"  stream       {s['description']}")
    print(f"  format       {s['format']}, instruments {', '.join(s['instruments'])}")
    print(f"  commands     {_n(s['commands_read'])} read, {_n(s['commands_applied'])} applied, "
          f"{_n(s['bad_frames'])} bad")
    print(f"  speed        {_n(s['commands_per_second'])} commands/s in the engine "
          f"({s['engine_seconds']:.3f} s; {s['wall_seconds']:.3f} s with reading and decoding)")
    print(f"  orders       {_n(s['accepted'])} accepted, {_print_rejections(s)}")
    print(f"  trades       {_n(s['trades'])} trades, volume {_n(s['volume'])}, value {_n(s['value'])}")
    print(f"  cancels      {_n(s['cancelled'])} cancelled, {_n(s['amended'])} amended, {_n(s['expired'])} expired")
    for symbol, b in s["books"].items():
        print(f"  book {symbol:<8}bid {b['bid']} x {_n(b['bid_qty'])}, ask {b['ask']} x {_n(b['ask_qty'])}, "
              f"last {b['last']}, {_n(b['open_orders'])} open orders")
    print(f"  state hash   {s['state_hash']}")
    for error in s["errors"]:
        print(f"  bad frame    {error}")
    if s["bad_frames"] > len(s["errors"]):
        print(f"  bad frame    ... and {_n(s['bad_frames'] - len(s['errors']))} more")
    if s["stopped"]:
        print(f"  stopped      {s['stopped']}")


# --- LOBSTER -----------------------------------------------------------------------------


def _run_lobster(args: argparse.Namespace) -> int:
    # Imported here: LOBSTER replay lives with the benchmarks, and only this path needs it.
    from benchmarks.lobster import LobsterError, LobsterReplay

    if args.check_every < 0:
        print(f"etx replay: --check-every must be >= 0, got {args.check_every}", file=sys.stderr)
        return 2
    try:
        report = LobsterReplay(args.file, limit=args.limit, check_every=args.check_every, save=args.save).run()
    except LobsterError as exc:
        print(f"etx replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --save could not be written
        print(f"etx replay: {exc}", file=sys.stderr)
        return 2
    summary = report.as_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_lobster(summary)
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {_n(n)}" for name, n in counts.items()) or "none"


def _print_lobster(s: dict[str, Any]) -> None:
    check = s["check"]
    print(f"etx replay {s['source']} (LOBSTER {s['symbol']})")
    print(f"  rows         {_n(s['rows'])} read: {_counts(s['by_type'])}")
    print(f"  applied      {_counts(s['applied'])}; {_n(s['seed_orders'])} opening orders")
    print(f"  not applied  {_counts(s['not_applied'])}")
    print(f"  ignored      {_counts(s['ignored'])}")
    print(f"  drift        {_counts(s['drift'])}; {_n(s['exec_short_shares'])} execution shares unmatched")
    if s["malformed"]:
        print(f"  malformed    {_n(s['malformed'])} rows: {'; '.join(s['malformed_examples'])}")
    print(f"  commands     {_n(s['commands'])} applied: {_n(s['accepted'])} accepted, {_print_rejections(s)}")
    print(f"  speed        {_n(s['commands_per_second'])} commands/s in the engine "
          f"({s['engine_seconds']:.3f} s; {s['wall_seconds']:.3f} s in all)")
    print(f"  trades       {_n(s['trades'])} trades, volume {_n(s['volume'])} shares, "
          f"value {_n(s['value'])} cents")
    if check["rows"]:
        print(f"  top of book  {_n(check['rows'])} rows compared with the orderbook file: best bid price "
              f"{check['bid_price']:.1%}, best ask price {check['ask_price']:.1%}, both {check['both_prices']:.1%}, "
              f"both with sizes {check['prices_and_sizes']:.1%}")
    if check["note"]:
        print(f"  check        {check['note']}")
    print(f"  state hash   {s['state_hash']}")

"""``etx load``: load-test an exchange over TCP and write a report people can read.

Against an exchange it starts itself (``--spawn``: ``etx serve`` on a fresh temporary
folder, journal and SQLite registry included, its members funded through the registry;
the folder is removed afterwards unless ``--keep``) or a running one (``--data DIR`` or
``--exchange HOST:PORT``, with the member users' credentials files, ``--credentials``,
repeatable: never secrets on the command line).

- Open loop (``--rate N``): N commands a second whatever the exchange does; latency from
  each command's intended send time (benchmarks/loadgen.py). Closed loop (no
  ``--rate``): as fast as answered, ``--window`` unanswered per session.
- ``--mix``: the commands' shares (limit, market, IOC, FOK, hit, cancel, amend), the
  crossing share, sizes; ``--seed``; ``--seconds`` or ``--orders``.
- ``--ramp START:STEP[:MAX]``: open-loop steps of ``--step-seconds`` until the p99
  passes ``--p99-limit-ms`` or errors pass ``--error-limit``; the highest sustainable rate,
  then the latency at half of it.
- ``--lobster [FILE]``: the LOBSTER day through the gateway (benchmarks/lobster_feed.py)
  at its recorded pace, ``--speed`` times faster, or ``--speed max``.

A live progress line (elapsed, sent, answered, rate, p50/p99 of the last second,
errors) on a terminal; the report (JSON, Markdown, PNG charts: benchmarks/loadreport.py)
in ``--report DIR`` (default ``etx-load-YYYYMMDD-HHMMSS`` here). With ``--spawn`` the
counts are reconciled with the exchange's own after it stops: commands in its journal,
trades settled in its registry. Every mistake ends in one line saying what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from benchmarks import loadreport
from benchmarks.loadgen import Generator, Instrument, Mix, MixError, RunResult, Tick
from benchmarks.lobster import LobsterError
from benchmarks.spawn import Spawned
from gateway.credentials import CredentialsError, from_file

DEFAULT_LOBSTER = Path(__file__).resolve().parents[2] / "shared" / "data" / "lobster"


class LoadError(Exception):
    """A mistake in the command or its setting; the message says what to fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("the exchange")
    where.add_argument("--spawn", action="store_true", help="start an exchange (etx serve) of its own for the test")
    where.add_argument("--data", default="", help="the data folder of a running exchange (finds its address)")
    where.add_argument("--exchange", default="", metavar="HOST:PORT", help="the gateway of a running exchange")
    where.add_argument("--credentials", action="append", default=[], metavar="FILE",
                       help="a member user's credentials file (chmod 600: member, user, secret), one per session; "
                            "repeatable (etx init writes them)")
    where.add_argument("--members", type=int, default=2, help="member sessions of a spawned exchange (default 2)")
    where.add_argument("--instruments", type=int, default=1, help="instruments of a spawned exchange (default 1)")
    where.add_argument("--keep", action="store_true", help="keep the spawned exchange's folder (journal, registry)")
    where.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                       help="an extra argument for the spawned etx serve, e.g. --serve-arg=--no-snapshots")
    where.add_argument("--serve-log", metavar="FILE", help="append the spawned etx serve's output to FILE")
    where.add_argument("--replicate", default="", metavar="URL[,URL...]",
                       help="the spawned exchange replicates its journal to these NATS JetStream servers "
                            "(a stream of its own), as a primary with [replication] enabled")
    where.add_argument("--replicas", type=int, default=1, help="with --replicate: the stream's replicas (1 or 3)")
    flow = parser.add_argument_group("the flow")
    flow.add_argument("--rate", type=int, default=0, help="open loop: commands per second (0: closed loop)")
    flow.add_argument("--seconds", type=float, default=10.0, help="length of a run (default 10)")
    flow.add_argument("--orders", type=int, default=0, help="commands per run instead of --seconds")
    flow.add_argument("--window", type=int, default=2000, help="closed loop: unanswered commands per session")
    flow.add_argument("--mix", default="default",
                      help="limit=55,market=2,ioc=3,fok=1,hit=1,cancel=30,amend=8,cross=10,qty_max=10,levels=30 "
                           "(any subset), or 'orders' (new limit orders only)")
    flow.add_argument("--seed", type=int, default=1)
    flow.add_argument("--latency-at-half", action="store_true",
                      help="after a closed-loop run, an open-loop run at half the rate it reached")
    flow.add_argument("--ramp", default="", metavar="START:STEP[:MAX]", help="open-loop steps up to the limit")
    flow.add_argument("--step-seconds", type=float, default=5.0)
    flow.add_argument("--p99-limit-ms", type=float, default=10.0)
    flow.add_argument("--error-limit", type=float, default=0.01,
                      help="share of commands a ramp step may have refused by the gateway or unanswered (0.01: 1 %%)")
    flow.add_argument("--lobster", nargs="?", const=str(DEFAULT_LOBSTER), default="", metavar="FILE",
                      help="replay a LOBSTER day through the gateway (default: the sample day under ../shared)")
    flow.add_argument("--speed", default="1", help="LOBSTER pace: 1 as recorded, N times faster, or max")
    flow.add_argument("--lobster-rows", type=int, default=0, help="replay only the first N rows")
    out = parser.add_argument_group("the report")
    out.add_argument("--report", default="", metavar="DIR", help="folder of the report (default etx-load-DATE-TIME here)")
    out.add_argument("--no-progress", action="store_true", help="no live progress line")


def _check(args: argparse.Namespace) -> None:
    if args.spawn and (args.data or args.exchange or args.credentials):
        raise LoadError("--spawn starts its own exchange: leave out --data, --exchange and --credentials")
    if not args.spawn:
        if not (args.data or args.exchange):
            raise LoadError("give --spawn, or the exchange to test: --data DIR or --exchange HOST:PORT "
                            "with --credentials FILE for each member session")
        if not args.credentials:
            raise LoadError("name the member sessions: --credentials FILE (chmod 600, with member, user and secret; "
                            "etx init writes them), once per session")
    for name in ("rate", "orders", "window", "members", "instruments", "lobster_rows"):
        if getattr(args, name) < 0:
            raise LoadError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.seconds <= 0 and not args.orders:
        raise LoadError(f"--seconds must be above 0, got {args.seconds:g}")
    if args.window < 1:
        raise LoadError("--window must be at least 1")
    if args.spawn and args.members < 1:
        raise LoadError("--members must be at least 1")
    if args.spawn and not 1 <= args.instruments <= 26:
        raise LoadError("--instruments must be between 1 and 26")
    if args.ramp and args.lobster:
        raise LoadError("--ramp and --lobster are separate runs: give one")
    if args.speed != "max":
        try:
            if float(args.speed) <= 0:
                raise ValueError
        except ValueError:
            raise LoadError(f"--speed is a factor above 0 or 'max', got {args.speed!r}") from None


def parse_ramp(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise LoadError(f"--ramp is START:STEP[:MAX] in commands per second, got {text!r}") from None
    if len(numbers) not in (2, 3) or any(n <= 0 for n in numbers):
        raise LoadError(f"--ramp is START:STEP[:MAX], positive whole numbers, got {text!r}")
    start, step = numbers[0], numbers[1]
    top = numbers[2] if len(numbers) == 3 else 10_000_000
    if top < start:
        raise LoadError(f"--ramp: MAX {top:,} is below START {start:,}")
    return start, step, top


def _address(args: argparse.Namespace) -> tuple[str, int]:
    from gateway.datadir import exchange_address

    try:
        return exchange_address(args.data or "etx-data", args.exchange)
    except ValueError as e:
        raise LoadError(str(e)) from None


class Progress:
    """The live line: elapsed, sent, answered, rate, p50/p99 of the last second, errors."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.live: Any = None
        self.started = time.monotonic()
        self.label = ""

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.live import Live

            self.live = Live("", refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def tick(self, tick: Tick, totals: dict[str, Any]) -> None:
        if self.live is None:
            return
        from rich.text import Text

        self.live.update(Text(
            f"{self.label}  {time.monotonic() - self.started:6.1f}s  sent {totals['sent']:,}  answered "
            f"{totals['answered']:,}  {tick.answered:,}/s  p50 {tick.p50_us / 1000:.2f} ms  p99 "
            f"{tick.p99_us / 1000:.2f} ms  errors {totals['errors']:,}"))


def _line(name: str, r: RunResult) -> str:
    lat = r.latency_us
    what = f"open loop at {r.target_rate:,}/s" if r.target_rate else "closed loop"
    return (f"  {name}: {what}: {r.total_sent:,} sent, {r.total_answered:,} answered ({r.errors:,} rejected, "
            f"{r.unanswered:,} unanswered), {r.fills:,} fills in {r.seconds:.2f}s = {r.rate:,.0f}/s; latency p50 "
            f"{lat['p50'] / 1000:.2f} ms, p99 {lat['p99'] / 1000:.2f} ms, p99.9 {lat['p99_9'] / 1000:.2f} ms, "
            f"max {lat['max'] / 1000:.2f} ms")


async def _run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    mix = Mix.parse(args.mix) if not args.lobster else Mix()
    spawned: Spawned | None = None
    lobster_feed: Any = None
    if args.lobster:
        from benchmarks.lobster_feed import LobsterFeed

        lobster_feed = LobsterFeed(args.lobster, rows=args.lobster_rows or None)
    try:
        if args.spawn:
            instruments = ([lobster_feed.instrument_toml()] if lobster_feed is not None
                           else [f'symbol = "{_symbol(i)}"\nref_price = {100 - i}.00' for i in range(args.instruments)])
            extra = ""
            if args.replicate:
                servers = ", ".join(f'"{u.strip()}"' for u in args.replicate.split(","))
                extra = (f'[replication]\nenabled = true\nservers = [{servers}]\nreplicas = {args.replicas}\n'
                         f'stream = "LOAD-{os.getpid()}-{int(time.time())}"\nnode = "load"\n')
            spawned = Spawned(0, serve_args=args.serve_arg, log_path=args.serve_log,
                              members=2 if lobster_feed is not None else args.members, instruments=instruments,
                              extra_config=extra)
            try:
                port = await spawned.start()
            except RuntimeError as e:
                raise LoadError(f"the spawned exchange did not start: {e} (its output: --serve-log FILE)") from None
            host = "127.0.0.1"
            creds = [(m, u, s, 0) for m, u, s, _ in spawned.creds()]
            print(f"etx load: exchange spawned on {host}:{port} in {spawned.folder}"
                  + ("" if args.keep else " (removed at the end; --keep keeps it)"))
        else:
            host, port = _address(args)
            creds = []
            for path in args.credentials:
                c = from_file(path)
                creds.append((c.member, c.user, c.secret, 0))
        report["settings"].update({"exchange": f"spawned ({spawned.folder})" if spawned else f"{host}:{port}",
                                   "sessions": len(creds), "mix": mix.describe() if not lobster_feed else "LOBSTER",
                                   "mix_weights": msgspec_dict(mix)})
        if lobster_feed is not None:
            await lobster_feed.run(host, port, creds, args.speed, report, progress=not args.no_progress)
        else:
            gen_instruments = await _instruments(host, port, creds, spawned)
            gen = Generator(host, port, creds, gen_instruments, mix, seed=args.seed)
            await gen.connect()
            try:
                with Progress(not args.no_progress) as progress:
                    gen.on_tick = progress.tick
                    if args.ramp:
                        await _ramp(gen, args, report, progress)
                    else:
                        progress.label = "open loop" if args.rate else "closed loop"
                        result = await gen.run(rate=args.rate, seconds=args.seconds, commands=args.orders,
                                               window=args.window)
                        loadreport.add_run(report, "main", result)
                        print(_line("main", result))
                        if args.latency_at_half and not args.rate:
                            half = max(int(result.rate / 2), 1)
                            progress.label = f"open loop at {half:,}/s"
                            r2 = await gen.run(rate=half, seconds=args.seconds, commands=args.orders)
                            loadreport.add_run(report, "half", r2)
                            print(_line("half", r2))
            finally:
                await gen.close()
    finally:
        if spawned is not None:
            tail = spawned.stop().strip().splitlines()
            print("  exchange: " + (tail[-1] if tail else "(no output)"))
            try:
                if report["runs"] or report.get("lobster"):
                    report["reconciliation"] = reconcile(spawned.folder / "data", report)
            finally:
                if not args.keep:
                    spawned.remove()


def msgspec_dict(mix: Mix) -> dict[str, Any]:
    return msgspec.structs.asdict(mix)


def _symbol(i: int) -> str:
    return "CEA24" if i == 0 else f"CEA{24 - i}" if i < 10 else f"X{chr(65 + i)}"


async def _instruments(host: str, port: int, creds: list[tuple[str, str, str, int]],
                       spawned: Spawned | None) -> list[Instrument]:
    """The instruments to trade, with their reference prices and ticks, as the exchange
    says (a query of the first session's user)."""
    from gateway.client import CannotLogOn, Client, log_on

    m, u, s, _ = creds[0]
    client = Client(host, port, m, u, s, cod=2)
    try:
        await log_on(client)
    except CannotLogOn as e:
        raise LoadError(str(e)) from None
    try:
        infos = (await client.query_instruments()).instruments
    finally:
        await client.close()
    if not infos:
        raise LoadError(f"the exchange at {host}:{port} lists no instrument")
    return [Instrument(i.symbol, i.ref_price or (i.band_low + i.band_high) // 2, i.tick) for i in infos]


async def _ramp(gen: Generator, args: argparse.Namespace, report: dict[str, Any], progress: Progress) -> None:
    start, step, top = parse_ramp(args.ramp)
    steps: list[dict[str, Any]] = []
    sustainable = 0
    stopped_by = ""
    rate = start
    while rate <= top:
        progress.label = f"ramp {rate:,}/s"
        r = await gen.run(rate=rate, seconds=args.step_seconds, drain_s=10.0)
        # Errors of the exchange's capacity: refusals by the gateway (throttled, journal
        # unavailable ...) and commands never answered. A cancel that meets a filled order
        # or a hit of an order that left the best five is the market, not an error.
        refused = sum(n for k, n in r.rejected.items() if k.endswith(":gateway"))
        share = (refused + r.unanswered) / r.total_sent if r.total_sent else 0.0
        problems = []
        if r.latency_us["p99"] > args.p99_limit_ms * 1000:
            problems.append(f"p99 {r.latency_us['p99'] / 1000:.1f} ms over {args.p99_limit_ms:g} ms")
        if share > args.error_limit:
            problems.append(f"errors {share:.2%} over {args.error_limit:.2%}")
        if r.unanswered or r.total_answered < 0.95 * rate * args.step_seconds:
            problems.append(f"answered {r.total_answered:,} of {r.total_sent:,} sent")
        steps.append({**msgspec.to_builtins(r), "error_share": share, "passed": not problems})
        print(_line(f"ramp {rate:,}/s", r) + ("" if not problems else "  -> " + "; ".join(problems)))
        if problems:
            stopped_by = "; ".join(problems)
            break
        sustainable = rate
        rate += step
    report["ramp"] = {"start": start, "step": step, "max": top, "step_seconds": args.step_seconds,
                      "p99_limit_ms": args.p99_limit_ms, "error_limit": args.error_limit, "steps": steps,
                      "sustainable": sustainable, "stopped_by": stopped_by}
    print(f"  highest sustainable rate: {sustainable:,} commands/s" + (f" (next step: {stopped_by})" if stopped_by else ""))
    if sustainable:
        half = sustainable // 2
        progress.label = f"open loop at {half:,}/s"
        r = await gen.run(rate=half, seconds=args.seconds)
        loadreport.add_run(report, f"half of sustainable ({half:,}/s)", r)
        print(_line("half", r))


KIND_TO_COMMAND = {"limit": "NewOrder", "market": "NewOrder", "ioc": "NewOrder", "fok": "NewOrder",
                   "hit": "HitOrder", "cancel": "Cancel", "amend": "Amend",
                   "new": "NewOrder", "opening": "NewOrder", "execution": "NewOrder"}  # the LOBSTER feed's kinds


def reconcile(data: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The load's counts against the spawned exchange's own, once it has stopped: each
    kind of command in its journal (gateway refusals are never journaled), the trades
    settled in its registry store, two fills per trade."""
    from gateway.recovery import JOURNAL_DIR
    from tools.journal import collect_stats

    sent: dict[str, int] = {}
    refused = 0
    fills = trades = 0
    runs = list(report["runs"])
    if report.get("ramp"):
        runs = runs + report["ramp"]["steps"]
    for r in runs:
        for kind, n in r["sent"].items():
            sent[KIND_TO_COMMAND[kind]] = sent.get(KIND_TO_COMMAND[kind], 0) + n
            refused_kind = sum(v for k, v in r["rejected"].items() if k.startswith(kind + ":") and k.endswith(":gateway"))
            sent[KIND_TO_COMMAND[kind]] -= refused_kind
            refused += refused_kind
        fills += r["fills"]
        trades += r["trades"]
    journal = collect_stats(data / JOURNAL_DIR, None).types
    checks = {f"{name} commands journaled": {"load": n, "exchange": journal.get(name, 0)} for name, n in sent.items()}
    with sqlite3.connect(f"file:{data / 'registry.sqlite'}?mode=ro", uri=True) as db:
        settled = db.execute("SELECT count(*) FROM postings WHERE kind = 'trade'").fetchone()[0]
    checks["trades settled into the registry"] = {"load": trades, "exchange": int(settled)}
    checks["fills (two per trade)"] = {"load": fills, "exchange": 2 * int(settled)}
    equal = all(c["load"] == c["exchange"] for c in checks.values())
    note = f"{refused:,} commands refused by the gateway (not journaled) left out" if refused else ""
    for name, c in checks.items():
        print(f"  reconciled: {name}: load {c['load']:,}, exchange {c['exchange']:,}"
              + ("" if c["load"] == c["exchange"] else "  DIFFERENT"))
    return {"equal": equal, "checks": checks, "note": note}


def run(args: argparse.Namespace) -> int:
    folder = Path(args.report or f"etx-load-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    try:
        _check(args)
        if args.ramp:
            parse_ramp(args.ramp)
        Mix.parse(args.mix)
        if folder.exists() and any(folder.iterdir()):
            raise LoadError(f"the report folder {folder} exists and is not empty: name another with --report DIR")
        report = loadreport.new_report({"mode": "ramp" if args.ramp else "lobster" if args.lobster else
                                        ("open loop" if args.rate else "closed loop"),
                                        "command": "etx load " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["load"]
                                                                            else sys.argv[1:]),
                                        "rate": args.rate, "seconds": args.seconds, "orders": args.orders,
                                        "window": args.window, "seed": args.seed, "exchange": "", "sessions": 0,
                                        "mix": ""})
        try:
            asyncio.run(_run(args, report))
        finally:
            if report["runs"] or report.get("ramp") or report.get("lobster"):
                paths = loadreport.write(report, folder)
                print(f"etx load: report in {folder}/ ({', '.join(p.name for p in paths)})")
    except (LoadError, MixError, CredentialsError, ConnectionError, LobsterError) as e:
        print(f"etx load: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("etx load: interrupted", file=sys.stderr)
        return 130
    rec = report.get("reconciliation")
    if rec is not None and not rec["equal"]:
        print("etx load: the load's counts differ from the exchange's (see the report)", file=sys.stderr)
        return 1
    return 0

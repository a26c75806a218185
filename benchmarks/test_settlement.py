"""Settlement speed: ledger holds, in-memory settlement, and durable store writes.

    .venv/bin/pytest benchmarks/test_settlement.py --benchmark-only -p no:cacheprovider

Workloads come from ``benchmarks.settle_load`` (real ledger, 2000 accounts, trades
with trading and settlement fees and a reserve share: 7 legs each, recorded as compact
``TradePosting`` records whose legs are derived when the store writes them). Store
writes are durable commits (SQLite WAL synchronous=FULL; PostgreSQL synchronous_commit
on), one transaction per batch; each round writes into a fresh store. PostgreSQL is
the server ``ETX_PG_DSN`` names, else a private one started for the session
(tests/pgserver.py). The rate of each benchmark is in its ``extra_info`` (ops_per_s or
trades_per_s, from the round's median).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmarks.generator import generate
from benchmarks.settle_load import FEES, fresh_store, make_trades
from engine import ALWAYS_OPEN, CASH, Engine, Side, Trade
from settlement import Allocate, AnyPosting, Deposit, HolderType, Ledger, OpenAccount, RegistryDone
from settlement.store import RegistryStore

TRADES = 40_000
HOLD_PAIRS = 100_000
ENGINE_COMMANDS = int(os.environ.get("ETX_BENCH_N", "50000"))


@pytest.fixture(scope="module")
def workload() -> tuple[list[AnyPosting], list[AnyPosting]]:
    setup, trades, _ = make_trades(TRADES)
    return setup, trades


@pytest.fixture(scope="module")
def pg_target() -> Iterator[str]:
    from tests.pgserver import PgServer, fresh_database, wait_ready

    server = None
    admin = os.environ.get("ETX_PG_DSN")
    if not admin:
        server = PgServer()
        admin = server.start()
    try:
        wait_ready(admin)
        dsn, drop = fresh_database(admin)
        try:
            yield dsn
        finally:
            drop()
    finally:
        if server is not None:
            server.stop()


def test_hold_release(benchmark: Any) -> None:
    ledger = Ledger(FEES)
    names = [f"C{i}" for i in range(100)]
    for i, name in enumerate(names):
        ledger.execute(OpenAccount("clerk", name, 1, seq=2 * i + 1, ts=0))
        ledger.execute(Deposit("clerk", name, 10**12, seq=2 * i + 2, ts=0))
    hold, release = ledger.hold, ledger.release

    def loop() -> None:
        for i in range(HOLD_PAIRS):
            account = names[i % 100]
            hold(account, CASH, 1000)
            release(account, CASH, 1000)

    benchmark.pedantic(loop, rounds=5, iterations=1)
    benchmark.extra_info["ops_per_s"] = round(2 * HOLD_PAIRS / benchmark.stats.stats.median)
    assert ledger.held == {}


def test_settle_in_memory(benchmark: Any) -> None:
    n = 20_000

    def setup() -> tuple[tuple[Ledger, list[tuple[Trade, int]]], dict[str, Any]]:
        _, _, ledger = make_trades(1, accounts=200)
        ledger.take_postings()
        fills = []
        for k in range(n):
            buyer, seller = f"C{k % 200:05d}", f"C{(k * 7 + 1) % 200:05d}"
            if buyer == seller:
                seller = f"C{(k + 1) % 200:05d}"
            need = ledger.cash_required(10_000 * 10)
            ledger.hold(buyer, CASH, need)
            ledger.hold(seller, "CEA24", 10)
            fills.append((Trade(k + 10, 0, k + 10, "CEA24", 10_000, 10, int(Side.BUY), 1, seller, 2, buyer), need))
        return (ledger, fills), {}

    def settle_all(ledger: Ledger, fills: list[tuple[Trade, int]]) -> None:
        settle = ledger.settle
        for trade, need in fills:
            settle(trade, need)

    benchmark.pedantic(settle_all, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["trades_per_s"] = round(n / benchmark.stats.stats.median)


def test_engine_on_the_ledger(benchmark: Any) -> None:
    """The engine on the generator's mixed stream with holds (as benchmarks/test_engine.py's
    mixed-holds, ``ETX_BENCH_N`` commands) against this ledger with fees: holds,
    releases and the settlement of every fill, postings included. Next to that suite's
    SimpleLedger run it shows what settlement adds per command."""
    work = generate("mixed", ENGINE_COMMANDS, 1, holds=True)
    engines: list[Engine] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        ledger = Ledger(FEES)
        cmds: list[Any] = [OpenAccount("clerk", a, int(HolderType.COMPLIANCE)) for a in
                           sorted({a for a, _, _ in work.header.holds})]
        cmds += [Deposit("clerk", a, n) if asset == CASH else Allocate("mee", "AUTHORITY", a, asset, n)
                 for a, asset, n in work.header.holds]
        for seq, cmd in enumerate(cmds, start=1):
            cmd.seq = seq
            assert isinstance(ledger.execute(cmd), RegistryDone)
        engine = Engine(work.header.instruments, ledger, schedule=ALWAYS_OPEN, stp_default=work.header.stp_default)
        engine.apply_batch(work.warmup)
        engine.out.clear()
        ledger.take_postings()
        engines.append(engine)
        return (work.commands,), {}

    def measured(commands: list[Any]) -> None:
        engines[-1].apply_batch(commands)

    benchmark.pedantic(measured, setup=setup, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["commands_per_second"] = round(len(work.commands) / benchmark.stats.stats.median)
    ledger = engines[-1].ledger
    assert isinstance(ledger, Ledger)
    benchmark.extra_info["trades"] = sum(p.kind == "trade" for p in ledger.postings)
    engines[-1]._check()


def _write_all(connect: Callable[[], RegistryStore], setup: list[AnyPosting], trades: list[AnyPosting], batch: int) -> None:
    store = connect()
    try:
        for i in range(0, len(trades), batch):
            part = trades[i:i + batch]
            store.write_batch(part, part[-1].seq - 1)
    finally:
        store.close()


def _bench_store(benchmark: Any, target: str, workload: tuple[list[AnyPosting], list[AnyPosting]], batch: int) -> None:
    setup, trades = workload
    stores: list[Any] = []

    def prepare() -> tuple[tuple[Any, ...], dict[str, Any]]:
        context = fresh_store(target)
        connect = context.__enter__()
        stores.append(context)
        store = connect()
        store.migrate()
        store.write_batch(setup, setup[-1].seq)
        store.close()
        return (connect, setup, trades, batch), {}

    try:
        benchmark.pedantic(_write_all, setup=prepare, rounds=3, iterations=1)
    finally:
        for context in stores:
            context.__exit__(None, None, None)
    benchmark.extra_info["trades_per_s"] = round(len(trades) / benchmark.stats.stats.median)
    benchmark.extra_info["batch"] = batch


@pytest.mark.parametrize("batch", [2_000, 10_000, 20_000])
def test_store_sqlite(benchmark: Any, workload: tuple[list[AnyPosting], list[AnyPosting]], batch: int,
                      tmp_path: Any) -> None:
    _bench_store(benchmark, str(tmp_path), workload, batch)


@pytest.mark.parametrize("batch", [2_000, 10_000, 20_000])
def test_store_postgresql(benchmark: Any, pg_target: str, workload: tuple[list[AnyPosting], list[AnyPosting]],
                          batch: int) -> None:
    _bench_store(benchmark, pg_target, workload, batch)

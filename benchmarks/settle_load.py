"""Settlement load: how many trades per second settle durably into the registry store,
by batch size, and how many hold/release operations per second the ledger does.

    python -m benchmarks.settle_load [--store PATH_OR_URL] [--trades N] [--batches 1000,5000,10000]
                                     [--accounts 2000] [--repeat 3] [--via-settler]

Workload: ``--accounts`` compliance companies with cash and CEA24; trades between
random pairs at random prices and sizes, settled by the real ``Ledger`` with trading
and settlement fees (7 legs per trade: buyer and seller cash and allowances, exchange
fee, risk reserve, registry fee). The postings are built first; the timed part is
writing them: one transaction per batch, every commit durable (SQLite WAL with
synchronous=FULL; PostgreSQL with synchronous_commit on). ``--via-settler`` writes
through the background settler instead of calling the store directly. Each batch size
runs ``--repeat`` times into a fresh store; the median is reported.

``--store`` defaults to a SQLite file in a temporary directory; ``pg`` starts a private
PostgreSQL for the run (needs its packages, see tests/pgserver.py); a
``postgresql://`` URL uses that server (a fresh schema per run, dropped after).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine import CASH, Side, Trade
from settlement import Allocate, AnyPosting, Deposit, Fees, Ledger, OpenAccount
from settlement.settler import Settler
from settlement.store import RegistryStore, open_store

FEES = Fees(trading_ppm=500, settlement_ppm=100, reserve_share_ppm=200_000)


def make_trades(n: int, accounts: int = 2000, seed: int = 7) -> tuple[list[AnyPosting], list[AnyPosting], Ledger]:
    """(setup postings, n trade postings, the ledger) from the real ledger."""
    rng = random.Random(seed)
    ledger = Ledger(FEES)
    names = [f"C{i:05d}" for i in range(accounts)]
    seq = 0

    def stamp(cmd: object) -> None:
        nonlocal seq
        seq += 1
        cmd.seq, cmd.ts = seq, seq  # type: ignore[attr-defined]
        ledger.execute(cmd)

    for name in names:
        stamp(OpenAccount("clerk", name, 1))
        stamp(Deposit("clerk", name, 10**13))
        stamp(Allocate("mee", "AUTHORITY", name, "CEA24", 10**9))
    setup = ledger.take_postings()
    hold, settle, required = ledger.hold, ledger.settle, ledger.cash_required
    for trade_id in range(1, n + 1):
        buyer, seller = rng.sample(names, 2)
        price, qty = rng.randrange(9_000, 11_000), rng.randrange(1, 1000)
        need = required(price * qty)
        hold(buyer, CASH, need)
        hold(seller, "CEA24", qty)
        # Several fills share one command, as a sweep of the book does.
        seq += trade_id % 3 == 0
        settle(Trade(seq, seq, trade_id, "CEA24", price, qty, int(Side.BUY), 1, seller, 2, buyer), need)
    return setup, ledger.take_postings(), ledger


def hold_release_rate(ops: int = 2_000_000) -> float:
    """Hold and release operations per second, in a tight loop (the loop counted)."""
    ledger = Ledger(FEES)
    names = [f"C{i}" for i in range(100)]
    for i, name in enumerate(names):
        ledger.execute(OpenAccount("clerk", name, 1, seq=2 * i + 1, ts=0))
        ledger.execute(Deposit("clerk", name, 10**12, seq=2 * i + 2, ts=0))
    hold, release = ledger.hold, ledger.release  # bound once: the loop runs per operation
    t = time.perf_counter()
    for i in range(ops // 2):
        account = names[i % 100]
        hold(account, CASH, 1000)
        release(account, CASH, 1000)
    return ops / (time.perf_counter() - t)


@contextmanager
def fresh_store(target: str) -> Iterator[Callable[[], RegistryStore]]:
    """A factory of connections to a fresh, migrated store of the target's kind."""
    if target.startswith(("postgresql://", "postgres://")):
        import psycopg

        from tests.pgserver import schema_dsn

        schema = f"bench_{secrets.token_hex(5)}"
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        url = schema_dsn(target, schema)
        try:
            yield lambda: open_store(url)
        finally:
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        with tempfile.TemporaryDirectory(prefix="etx-bench-", dir=target or None) as d:
            path = str(Path(d) / "registry.sqlite")
            yield lambda: open_store(path)


def write_rate(target: str, setup: list[AnyPosting], trades: list[AnyPosting], batch: int, via_settler: bool) -> float:
    """Trades per second written durably in batches of ``batch``."""
    with fresh_store(target) as connect:
        store = connect()
        try:
            store.migrate()
            store.write_batch(setup, setup[-1].seq)
            if via_settler:
                settler = Settler(connect, batch_max=batch, pending_max=max(batch, len(trades))).start()
                t = time.perf_counter()
                settler.submit(trades, trades[-1].seq)
                settler.close()
            else:
                t = time.perf_counter()
                for i in range(0, len(trades), batch):
                    part = trades[i:i + batch]
                    store.write_batch(part, part[-1].seq - 1 if i + batch < len(trades) else part[-1].seq)
            rate = len(trades) / (time.perf_counter() - t)
            assert store.last_seq() == trades[-1].seq
            return rate
        finally:
            store.close()


@contextmanager
def target_for(store: str) -> Iterator[str]:
    if store != "pg":
        yield store
        return
    from tests.pgserver import PgServer, fresh_database, wait_ready

    server = PgServer()
    try:
        admin = server.start()
        wait_ready(admin)
        dsn, drop = fresh_database(admin)
        try:
            yield dsn
        finally:
            drop()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="settle_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="", help="SQLite directory (default: a temporary one), 'pg', or a URL")
    parser.add_argument("--trades", type=int, default=200_000)
    parser.add_argument("--batches", default="1000,5000,10000,20000")
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--via-settler", action="store_true")
    parser.add_argument("--skip-ledger", action="store_true", help="do not measure hold/release")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if not 1 <= args.trades <= 10_000_000 or not all(1 <= b <= 1_000_000 for b in batches) or args.repeat < 1:
        parser.error("trades in [1, 10M], batches in [1, 1M], repeat >= 1")
    if not args.skip_ledger:
        rates = [hold_release_rate() for _ in range(args.repeat)]
        print(f"ledger hold/release: median {statistics.median(rates):,.0f} ops/s "
              f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    t = time.perf_counter()
    setup, trades, _ = make_trades(args.trades, args.accounts)
    print(f"built {len(trades):,} trade postings for {args.accounts} accounts in {time.perf_counter() - t:.1f} s "
          f"(ledger settle {len(trades) / (time.perf_counter() - t):,.0f} trades/s incl. setup)")
    with target_for(args.store) as target:
        kind = "postgresql" if target.startswith("postgres") else "sqlite"
        for batch in batches:
            rates = [write_rate(target, setup, trades, batch, args.via_settler) for _ in range(args.repeat)]
            print(f"{kind} batch {batch:>7,}: median {statistics.median(rates):>9,.0f} trades/s "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())

"""A restart from a snapshot and the journal after it, with a member that missed
reports from both sides of the snapshot.

``etx serve`` (a subprocess, plain TCP, SQLite registry) takes a snapshot every
``EVERY`` commands (and never by time, so the journal tail below stays after the
snapshot the restart uses). One member (the laggard) leaves with orders resting; the operator
halts and resumes the market (reports to every member), the others trade through the
laggard's orders until a snapshot taken after it left is settled, trade on while the
operator cancels the laggard's orders and halts and resumes again (the journal tail,
with reports for the laggard), and the process is killed with SIGKILL. After the
restart:

- recovery started from that snapshot (or a newer one) and replayed the tail;
- the laggard logs on with the last seq_out it saw, which is older than its place in
  the snapshot, and receives every report it missed exactly once and in order -- the
  older ones from the snapshot's window, the newer ones made again from the journal
  -- and they are the journal's fills of its orders (``Soak.check``: no gap, no
  duplicate, same fills and acknowledged orders as a clean replay, same open orders);
- a fresh session replaying each member's history gets the reports its traders saw;
- retransmitting a client order id accepted before the snapshot is answered with the
  original outcome (``Resent``), not entered again;
- the registry audit finds nothing and every trade is settled exactly once.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from benchmarks.crash_soak import SECRET, SYMBOL, Soak
from engine.messages import Accepted, Halt, MassCancel, Resume, Side
from engine.snapshot import SnapshotStore
from gateway.client import Client
from gateway.protocol import CodMode, Resent
from gateway.recovery import SNAPSHOT_DIR
from gateway.streams import GatewayState
from settlement.store import open_store
from settlement.structs import ExchangeSnapshot

SEED = 20260507
EVERY = 3000  # commands between snapshots: far more than the tail and the trading while settlement catches up
WRITTEN = re.compile(r"snapshot \d+\.snapshot written \(seq (\d+)")


async def trade(s: Soak, seconds: float, traders: list[int]) -> None:
    tasks = [asyncio.create_task(s.traders[i].trade()) for i in traders]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for i in traders:  # a query round trip: everything queued before it has arrived
        await s.traders[i].client.query_instruments(timeout=30)
        s.traders[i].drain()


def written(s: Soak) -> list[int]:
    return [int(x) for x in WRITTEN.findall(s.serve.output())]


async def scenario(tmp_path: Path) -> None:
    s = Soak(1, SEED, tmp_path, snapshot_every=EVERY, snapshot_interval_s=3600.0, snapshot_history=5000)
    try:
        s.serve.start()
        await s.serve.ready()
        await s.connect_all()
        await s.fund()
        ops = Client("127.0.0.1", s.port, "EXCH", "ops", SECRET, cod=CodMode.OFF, coid_prefix="ops-")
        await ops.connect()

        async def halt_and_resume() -> None:
            ops.send(Halt(SYMBOL))
            ops.send(Resume(SYMBOL))
            await ops.query_instruments()

        await trade(s, 1.0, [0, 1, 2, 3])
        laggard = s.traders[3]
        for k in range(20):  # resting on both sides, for the others to trade through
            side = Side.BUY if k % 2 else Side.SELL
            laggard.client.new_order(SYMBOL, side, 5, 10_000 + (k - 10 if side == Side.BUY else 10 - k))
        await s.settle()
        left_at = laggard.client.last_seq
        early = next(iter(laggard.accepted.items()))  # (coid, order_id) accepted long before
        await laggard.client._drop()
        before = len(written(s))
        await halt_and_resume()  # reports the laggard misses, before the next snapshot

        # Trade on until a snapshot taken after the laggard left is written, and a
        # little more until the registry store has settled past it.
        deadline = time.monotonic() + 90
        store = open_store(str(s.data / "registry.sqlite"))
        try:
            while not written(s)[before:]:
                await trade(s, 0.1, [0, 1, 2])
                assert time.monotonic() < deadline, "no snapshot was written after the laggard left"
            target = written(s)[before:][0]
            while store.last_seq() < target:
                await trade(s, 0.05, [0, 1, 2])
                assert time.monotonic() < deadline, "settlement did not reach the snapshot"
        finally:
            store.close()
        assert len(written(s)[before:]) == 1, "the snapshot interval must leave the tail after the target"
        # The journal tail after the snapshot, with reports for the laggard.
        ops.send(MassCancel(laggard.member))
        await halt_and_resume()
        await trade(s, 0.05, [0, 1, 2])
        assert len(written(s)[before:]) == 1
        s.serve.kill()
        await ops._drop()
        for t in s.traders:
            await t.client._drop()
            t.drain()
            t.unanswered = 0
        for c in (s.clerk, s.auth):
            await c._drop()

        s.serve.start()
        seq, digest = await s.serve.ready()
        assert s.serve.snapshot_seq == target and s.serve.replayed > 0, (target, s.serve.snapshot_seq, s.serve.replayed)
        assert s.serve.snapshot_seq + s.serve.replayed == seq
        snap = dict(SnapshotStore(tmp_path / "data" / SNAPSHOT_DIR).list())[s.serve.snapshot_seq]
        state = SnapshotStore(tmp_path / "data" / SNAPSHOT_DIR).load(snap, ExchangeSnapshot, GatewayState).edge
        at_snapshot = {m.member: m.seq for m in state.members}[laggard.member]
        assert left_at < at_snapshot, "the laggard must have missed reports kept by the snapshot"

        await s.connect_all()  # each client logs on with the last seq_out it saw
        assert laggard.client.last_seq > at_snapshot, "and reports made again from the journal tail"
        missed = [n for n in laggard.reports if n > left_at]
        assert missed == list(range(left_at + 1, laggard.client.last_seq + 1))
        await s.check(seq, digest)  # continuity, fills, acknowledged and open orders, history, audit
        assert not s.problems, "\n".join(s.problems)

        coid, order_id = early
        # The day's records crossed the snapshot and the journal tail: the order accepted
        # long before is found by id and by client order id, every fill of the day is listed.
        status = await laggard.client.query_order_status(order_id)
        assert status is not None and status.coid == coid
        assert await laggard.client.query_order_status(coid=coid) == status
        day = {o.order_id for o in await laggard.client.query_day_orders()}
        assert set(laggard.accepted.values()) <= day
        trades = await laggard.client.query_all_trades()
        assert {(t.trade_id, t.order_id) for t in trades} == set(laggard.fills)
        laggard.client.new_order(SYMBOL, Side.BUY, 1, 10_000, coid=coid)
        again = await laggard.client.wait_for(lambda m: type(m) is Resent, 10)
        assert type(again.body) is Accepted and again.body.order_id == order_id and again.body.coid == coid
        assert again.seq_out <= left_at
        await s.finish()
        assert not s.problems, "\n".join(s.problems)
    finally:
        if s.serve.proc is not None and s.serve.proc.poll() is None:
            s.serve.kill()


def test_restart_from_snapshot_and_journal_tail(tmp_path: Path) -> None:
    print(f"seed {SEED}, work directory {tmp_path}")
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 300))


def test_settled_seq_follows_commands_without_postings(tmp_path: Path) -> None:
    """Orders and cancels that never trade give the settler nothing to write; the
    registry store's settled seq must still reach them (so that a restart may use a
    snapshot taken after them) without waiting for the next posting."""
    from benchmarks.crash_soak import TRADERS, write_config
    from gateway.config import load
    from gateway.serve import Service
    from settlement.messages import Deposit, HolderType, OpenAccount

    cfg = load(write_config(tmp_path, 0))

    async def main() -> None:
        service = Service(cfg, tmp_path / "data", market_data=False, snapshot_every=50, snapshot_every_s=3600.0)
        await service.start("127.0.0.1", 0)
        port = service.address[1]
        clerk = Client("127.0.0.1", port, "EXCH", "clerk", SECRET, cod=CodMode.OFF)
        trader = Client("127.0.0.1", port, TRADERS[0], f"t{TRADERS[0]}", SECRET, cod=CodMode.OFF)
        store = open_store(str(tmp_path / "data" / "registry.sqlite"))
        try:
            for c in (clerk, trader):
                await c.connect()
            clerk.send(OpenAccount("", TRADERS[0], int(HolderType.COMPLIANCE), "x"))
            clerk.send(Deposit("", TRADERS[0], 10**9))
            await clerk.query_instruments()
            with_postings = service.exchange.last_seq
            for k in range(60):
                coid = trader.new_order(SYMBOL, Side.BUY, 1, 9_900 - k)
                body = (await trader.wait_for(lambda m, coid=coid: getattr(m.body, "coid", "") == coid)).body
                trader.cancel(body.order_id)
            await trader.query_instruments()
            last = service.exchange.last_seq
            assert last > with_postings + 100
            deadline = time.monotonic() + 20
            while store.last_seq() < last:
                assert time.monotonic() < deadline, f"settled seq {store.last_seq()}, commands up to {last}"
                await asyncio.sleep(0.05)
            snapshots = service.snapshotter
            assert snapshots is not None and snapshots.last_written > with_postings
        finally:
            store.close()
            for c in (clerk, trader):
                await c.close()
            await service.stop(snapshot=False)
        again = Service(cfg, tmp_path / "data", market_data=False)
        try:
            assert again.recovery.report.snapshot_seq == snapshots.last_written  # not an older one
        finally:
            await again.stop(snapshot=False)

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.parametrize("argv, problem", [
    ([], None),
    (["--snapshot-every", "0"], "--snapshot-every must be at least 1, got 0"),
    (["--snapshot-interval", "0"], "--snapshot-interval must be a positive number of seconds, got 0.0"),
    (["--snapshot-interval", "nan"], "--snapshot-interval must be a positive number of seconds, got nan"),
    (["--snapshot-history", "-1"], "--snapshot-history must be at least 0, got -1"),
    (["--snapshot-history", "0", "--no-snapshots"], None),
])
def test_snapshot_options_are_checked(argv: list[str], problem: str | None) -> None:
    import argparse

    from gateway.serve import add_arguments, snapshot_options_problem

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert snapshot_options_problem(parser.parse_args(argv)) == problem

"""Snapshots written by the process that follows the journal (gateway/snapfollow.py).

- ``JournalTail`` reads what another process appends, up to the durable seq it is
  told, across segments, cut inside a record, never ahead of it; it waits at a record
  not yet whole on disk and stops at damage with more behind it.
- Every snapshot the follower writes for a running exchange (traders over TCP, the
  clerk and the authority, a halt, an end of day) is the exchange's state at its seq:
  the core's hash of a clean replay to that seq, and the member streams that a replay
  from seq 1 routes (the last one, at the clean stop, the live exchange's own streams);
  a restart from it recovers the exchange.
- A follower that dies is replaced; the snapshot asked meanwhile is taken by a fork.
- The follower ignores the terminal's interrupt and dies with a killed exchange.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks.crash_soak import TRADERS, Trader, write_config
from engine.journal import Journal, JournalCorrupt, JournalTail, command_decoder, list_segments, read_journal
from engine.messages import EndOfDay, Halt, Resume
from engine.snapshot import SnapshotStore
from gateway.client import Client
from gateway.config import load
from gateway.protocol import CodMode
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, core_factory, journal_command_types
from gateway.serve import Service
from gateway.streams import GatewayState, Router
from settlement.messages import Allocate, Deposit, HolderType, OpenAccount
from settlement.structs import ExchangeSnapshot
from tests.crash.workload import exchange_workload

SEED = 20261208
SECRET = "soak-secret"
SYMBOL = "CEA24"


# --- JournalTail --------------------------------------------------------------------


def test_journal_tail_follows_what_is_durable(tmp_path: Path) -> None:
    _, cmds = exchange_workload(3_000, SEED)
    journal = Journal(tmp_path, journal_command_types(), segment_bytes=32 << 10)  # rolls many times
    tail = JournalTail(tmp_path, command_decoder(journal_command_types()), 0)
    rng = random.Random(SEED)
    got: list[Any] = []
    i = 0
    while i < len(cmds):
        batch = cmds[i : i + rng.randint(1, 200)]
        journal.append_batch(batch)
        i += len(batch)
        upto = rng.randint(tail.applied, i)  # durable up to here, as told: may cut a record
        for part in tail.read(upto):
            assert part, "an empty part"
            got.extend(part)
        assert tail.applied == upto and [c.seq for c in got] == list(range(1, upto + 1))
    got.extend(c for part in tail.read(len(cmds)) for c in part)
    assert got == cmds
    assert len(list_segments(tmp_path)) > 3
    assert list(tail.read(len(cmds) + 5)) == []  # nothing more written: waits, yields nothing
    journal.close()


def journaled(directory: Path, n: int, upto: int, record: int) -> list[Any]:
    """``n`` commands of the workload, the first ``upto`` journaled ``record`` a record."""
    _, cmds = exchange_workload(n, SEED)
    journal = Journal(directory, journal_command_types())
    for k in range(0, upto, record):
        journal.append_batch(cmds[k : k + record])
    journal.close()
    return cmds


def test_journal_tail_starts_after_a_seq_and_waits_for_a_whole_record(tmp_path: Path) -> None:
    cmds = journaled(tmp_path, 500, 400, 50)
    tail = JournalTail(tmp_path, command_decoder(journal_command_types()), 120)  # inside the third record
    assert [c.seq for part in tail.read(400) for c in part] == list(range(121, 401))
    # A record written halfway (the writer's pwrite not yet whole): nothing of it yet.
    seg = list_segments(tmp_path)[-1][1]
    whole = seg.read_bytes()
    journal = Journal(tmp_path, journal_command_types())
    journal.append_batch(cmds[400:450])
    journal.close()
    full = seg.read_bytes()
    seg.write_bytes(full[: len(whole) + (len(full) - len(whole)) // 2])
    assert list(tail.read(450)) == [] and tail.applied == 400
    seg.write_bytes(full)
    assert [c.seq for part in tail.read(450) for c in part] == list(range(401, 451))


def test_journal_tail_stops_at_damage_with_more_behind_it(tmp_path: Path) -> None:
    journaled(tmp_path, 300, 300, 100)
    seg = list_segments(tmp_path)[-1][1]
    data = bytearray(seg.read_bytes())
    second = data.find(b"ETXR", 30)  # the second record's header
    data[second + 40] ^= 0xFF  # a byte of its body
    seg.write_bytes(bytes(data))
    tail = JournalTail(tmp_path, command_decoder(journal_command_types()), 0)
    parts = tail.read(300)
    assert [c.seq for c in next(parts)] == list(range(1, 101))
    with pytest.raises(JournalCorrupt, match="checksum"):
        next(parts)


# --- the follower beside a running exchange ---------------------------------------------


async def funded(port: int) -> tuple[list[Trader], Client, list[Client]]:
    """The traders, the operator and every client, connected, the members' accounts
    opened and funded by the clerk and the authority."""
    rng = random.Random(SEED)
    traders = [Trader(m, port, rng) for m in TRADERS]
    clerk, auth, ops = (Client("127.0.0.1", port, "EXCH", user, SECRET, cod=CodMode.OFF)
                        for user in ("clerk", "auth", "ops"))
    clients = [t.client for t in traders] + [clerk, auth, ops]
    for c in clients:
        await c.connect()
    await fund(clerk, auth)
    return traders, ops, clients


async def fund(clerk: Client, auth: Client) -> None:
    for m in TRADERS:
        clerk.send(OpenAccount("", m, int(HolderType.COMPLIANCE), f"{m} Ltd"))
        clerk.send(Deposit("", m, 10**13))
    await clerk.query_instruments(timeout=30)
    for m in TRADERS:
        auth.send(Allocate("", "AUTHORITY", m, SYMBOL, 10**8))
    await auth.query_instruments(timeout=30)


async def trade(traders: list[Trader], seconds: float) -> None:
    tasks = [asyncio.create_task(t.trade()) for t in traders]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in traders:
        await t.client.query_instruments(timeout=30)
        t.drain()


def replayed_to(cfg: Any, journal_dir: Path, members: list[str], staff: list[str], seq: int) -> tuple[str, Any]:
    """The core's hash and the member streams of a replay from seq 1 to ``seq``."""
    core = core_factory(cfg)()
    router = Router(core.engine, members, staff)
    for batch in read_journal(journal_dir, command_decoder(journal_command_types())):
        if batch[0].seq > seq:
            break
        part = batch[: seq - batch[0].seq + 1]
        core.apply_batch(part)
        router.rebuild(part, core.out)
        core.out.clear()
    assert core.last_seq == seq
    return core.state_hash(), streams_of(router.capture(1 << 30).encode())


def streams_of(state: Any) -> dict[str, Any]:
    """A snapshot's member streams (or a capture's, encoded), by member."""
    if isinstance(state, bytes):
        state = msgspec.msgpack.decode(state, type=GatewayState)
    return {m.member: m for m in state.members}


def test_follower_snapshots_are_the_exchange_at_their_seq(tmp_path: Path) -> None:
    cfg = load(write_config(tmp_path, 0))
    data = tmp_path / "data"
    history = 1 << 30  # every report: the streams compare whole

    async def main() -> tuple[list[str], list[str], str, dict[str, Any], int]:
        service = Service(cfg, data, market_data=False, snapshot_every=400, snapshot_every_s=3600.0,
                          snapshot_writer="follower",
                          snapshot_history=history)
        snapper = service.snapshotter
        assert snapper is not None and snapper.follower is not None and snapper.follower.alive()
        await service.start("127.0.0.1", 0)
        traders, ops, clients = await funded(service.address[1])
        try:
            await trade(traders, 1.0)
            ops.send(Halt(SYMBOL, "a test halt"))
            await ops.query_instruments(timeout=30)
            ops.send(Resume(SYMBOL))
            await trade(traders, 1.0)
            ops.send(EndOfDay())
            await ops.query_instruments(timeout=30)
            await trade(traders, 1.0)
        finally:
            for c in clients:
                await c.close()
        router = service.server.router
        members, staff = sorted(router.members), [k for k in router.streams if k not in router.members]
        follower_pid = snapper.follower.pid
        await service.stop()  # the clean stop's snapshot, by the follower too
        assert snapper.errors == 0 and snapper.written >= 4, (snapper.written, snapper.errors)
        assert snapper.follower.proc is not None and snapper.follower.proc.returncode == 0
        with pytest.raises(ProcessLookupError):
            os.kill(follower_pid, 0)
        live = streams_of(service.server.capture_streams(history).encode())
        return members, staff, service.exchange.state_hash(), live, service.exchange.last_seq

    members, staff, live_hash, live_streams, last = asyncio.run(asyncio.wait_for(main(), 180))
    store = SnapshotStore(data / SNAPSHOT_DIR, writer=False)
    snaps = store.list()
    assert snaps[-1][0] == last
    for seq, path in snaps:
        loaded = store.load(path, ExchangeSnapshot)
        want_hash, want_streams = replayed_to(cfg, data / JOURNAL_DIR, members, staff, seq)
        assert loaded.state_hash == want_hash, seq
        got_streams = streams_of(store.load(path, ExchangeSnapshot, GatewayState).edge)
        assert got_streams == want_streams, seq
        if seq == last:
            assert loaded.state_hash == live_hash
            assert got_streams == live_streams
    again = Service(cfg, data, market_data=False, snapshots=False)
    try:
        assert again.recovery.report.snapshot_seq == last and again.recovery.report.replayed == 0
        assert again.exchange.state_hash() == live_hash
    finally:
        asyncio.run(again.stop(snapshot=False))


def test_a_follower_that_dies_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load(write_config(tmp_path, 0))

    async def main() -> None:
        service = Service(cfg, tmp_path / "data", market_data=False, snapshot_every=200, snapshot_every_s=3600.0,
                          snapshot_writer="follower")
        snapper = service.snapshotter
        assert snapper is not None and snapper.follower is not None
        await service.start("127.0.0.1", 0)
        traders, _, clients = await funded(service.address[1])
        try:
            await trade(traders, 1.0)
            await until(lambda: snapper.written >= 1)
            first = snapper.follower.pid
            os.kill(first, signal.SIGKILL)
            await until(lambda: not snapper.follower.alive())
            written = snapper.written
            await trade(traders, 1.0)  # the snapshot due now is taken by a fork; a new follower starts
            await until(lambda: snapper.follower.starts == 2 and snapper.follower.ready_seq >= 0
                        and snapper.written >= written + 1)
            written = snapper.written
            await trade(traders, 1.0)
            await until(lambda: snapper.written >= written + 1)  # by the new follower
            assert snapper.follower.pid != first and snapper.follower.alive()
        finally:
            for c in clients:
                await c.close()
            await service.stop()
        assert "the snapshot follower is not running; starting another" in caplog.text
        assert f"the snapshot follower {first} ended with status -9" in caplog.text

    asyncio.run(asyncio.wait_for(main(), 120))


async def until(cond: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


FOLLOWER_PARENT = """
import signal, sys, time
from gateway.config import load
from gateway.serve import Service
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test's interrupt is for the follower
service = Service(load(sys.argv[1]), sys.argv[2], market_data=False, snapshot_writer="follower")
print(service.snapshotter.follower.pid, flush=True)
time.sleep(600)
"""


def test_the_follower_ignores_an_interrupt_and_dies_with_the_exchange(tmp_path: Path) -> None:
    config = write_config(tmp_path, 0)
    parent = subprocess.Popen([sys.executable, "-c", FOLLOWER_PARENT, str(config), str(tmp_path / "data")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                              start_new_session=True)  # a group of its own, as a terminal gives a command
    try:
        assert parent.stdout is not None
        follower = int(parent.stdout.readline())
        os.killpg(os.getpgid(parent.pid), signal.SIGINT)  # as Ctrl-C in a terminal: to the whole group
        time.sleep(1.0)
        assert gone(follower, 0.0) is False, "the follower died of an interrupt"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert gone(follower, 10.0), f"snapshot follower {follower} outlived its killed exchange"
    finally:
        if parent.poll() is None:
            parent.kill()
        if not gone(follower, 0.0):
            os.kill(follower, signal.SIGKILL)


def gone(pid: int, timeout_s: float) -> bool:
    """Whether the process has exited (a zombie counts: only its reaping is left)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)

"""pytest-benchmark suites for the journal: group-commit throughput with fsync, replay
speed, and the time to restart after a long journal with snapshots.

Run: ``.venv/bin/pytest benchmarks/test_journal.py --benchmark-only -p no:cacheprovider``

- ``test_append_*``: one ``Journal.append_batch`` (one pwrite + one fdatasync) of a
  batch of 1, 100 or 1,000 mixed-flow commands; ``extra_info`` has records (fsyncs)
  per second and commands per second of the median round.
- ``test_group_commit``: 256 asyncio tasks commit 1-3 commands each, 40 times, through
  one ``GroupCommitter``: what many sessions submitting at once get.
- ``test_read_decode``: read, verify (checksums, continuity) and decode a journal of
  ``ETX_BENCH_REPLAY_N`` (default 500,000) commands: the journal's share of replay.
- ``test_replay_apply``: the same plus applying every command to a fresh exchange core
  (engine and settlement ledger, pre-trade holds): replay end to end, which the
  engine's own speed bounds.
- ``test_restart``: the restart of ``etx serve`` -- the process started, its core and
  gateway recovered, listening -- on a directory
  holding ``ETX_BENCH_RESTART_N`` (default 1,000,000) journaled commands with a
  snapshot (core and members' streams, ``SNAPSHOT_HISTORY`` reports per member) every
  100,000 up to 900,000 and a registry store settled to the end, so recovery takes the
  900,000 snapshot, replays about 100,000 commands (the worst case of that interval),
  rebuilds the members' reports from their events and restores the streams.
  ``test_restart_core`` is the core's share alone (``gateway.recovery.recover``).
  Building the directory (through the same core, gateway routing and snapshot code)
  takes a few minutes, once.

The workload is ``tests.crash.workload.exchange_workload`` (``benchmarks.generator``'s
mixed flow, with the registry commands that fund it). The disk is whatever holds the
temporary directory; fsync cost is the machine's.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.journal import GroupCommitter, Journal, command_decoder, read_journal
from engine.snapshot import SnapshotStore, capture
from gateway.auth import Authenticator, hash_secret
from gateway.config import Config, load
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, collector_paused, core_factory, journal_command_types, recover
from gateway.serve import SNAPSHOT_HISTORY
from gateway.server import Server
from settlement.store import open_store
from tests.crash.workload import exchange_workload

REPLAY_N = int(os.environ.get("ETX_BENCH_REPLAY_N", "500000"))
RESTART_N = int(os.environ.get("ETX_BENCH_RESTART_N", "1000000"))
SNAPSHOT_EVERY = int(os.environ.get("ETX_BENCH_SNAPSHOT_EVERY", "100000"))
SEED = 1
BATCH = 1000  # commands per group commit when building journals


def _per_second(benchmark: Any, n: int, unit: str) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info[f"{unit}_per_s"] = round(n / median)


_work: dict[int, Any] = {}


def workload(n: int) -> Any:
    if n not in _work:
        _work[n] = exchange_workload(n, SEED)
    return _work[n]


@pytest.mark.parametrize("batch", [1, 100, 1000])
def test_append(benchmark: Any, tmp_path: Path, batch: int) -> None:
    _, cmds = workload(50_000)
    journal = Journal(tmp_path, journal_command_types())
    parts = iter([cmds[i : i + batch] for i in range(0, len(cmds) - batch, batch)])
    benchmark.pedantic(lambda: journal.append_batch(next(parts)), rounds=min(200, len(cmds) // batch - 1),
                       warmup_rounds=1)
    _per_second(benchmark, 1, "records")
    _per_second(benchmark, batch, "commands")
    journal.close()


def test_group_commit(benchmark: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, cmds = workload(50_000)
    tasks, each = 256, 40
    rng = random.Random(SEED)
    sizes = [rng.randint(1, 3) for _ in range(tasks * each)]
    total = sum(sizes)
    assert total <= len(cmds)

    def one_round() -> None:
        journal = Journal(tmp_path_factory.mktemp("gc"), journal_command_types())
        committer = GroupCommitter(journal)

        async def main() -> None:
            # Commands are handed over in sequence order (as the server's sequencer
            # stamps them); every task awaits its own commit.
            futures = []
            i = 0
            for k in sizes:
                futures.append(asyncio.ensure_future(committer.commit(cmds[i : i + k])))
                i += k
            await asyncio.gather(*futures)

        asyncio.run(main())
        committer.close()
        benchmark.extra_info["commands_per_fsync"] = round(committer.commands / committer.commits, 1)
        journal.close()

    benchmark.pedantic(one_round, rounds=3, warmup_rounds=0)
    _per_second(benchmark, total, "commands")
    _per_second(benchmark, len(sizes), "submissions")


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, cmds = workload(REPLAY_N)
    path = tmp_path_factory.mktemp("replay")
    journal = Journal(path, journal_command_types())
    for i in range(0, len(cmds), BATCH):
        journal.append_batch(cmds[i : i + BATCH])
    journal.close()
    return path


def test_read_decode(benchmark: Any, replay_dir: Path) -> None:
    _, cmds = workload(REPLAY_N)
    decoder = command_decoder(journal_command_types())

    def read() -> int:
        return sum(len(b) for b in read_journal(replay_dir, decoder))

    assert benchmark.pedantic(read, rounds=5, warmup_rounds=1) == len(cmds)
    _per_second(benchmark, len(cmds), "commands")


def test_replay_apply(benchmark: Any, replay_dir: Path) -> None:
    make_core, cmds = workload(REPLAY_N)
    decoder = command_decoder(journal_command_types())

    def replay() -> int:
        # As recover() replays: the cycle collector paused.
        core = make_core()
        out = core.out
        with collector_paused():
            for batch in read_journal(replay_dir, decoder):
                core.apply_batch(batch)
                out.clear()
        return int(core.last_seq)

    assert benchmark.pedantic(replay, rounds=3, warmup_rounds=0) == len(cmds)
    _per_second(benchmark, len(cmds), "commands")


MEMBERS = [f"M{i:02d}" for i in range(1, 9)]  # the workload's


def workload_config(directory: Path) -> Config:
    """``etx serve``'s configuration for the workload: its instrument, members, fees."""
    digest = hash_secret("bench-secret", n=1 << 10)
    lines = ['[exchange]', 'registry = "registry.sqlite"', 'schedule = "always"', "",
             "[fees]", "trading_rate = 0.0003", "registry_rate = 0.0001", "",
             "[[instrument]]", 'symbol = "CEA24"', "ref_price = 100.00", "band_pct = 10", ""]
    for m in MEMBERS:
        lines += ["[[member]]", f'id = "{m}"', ""]
    lines += ["[[user]]", 'member = "EXCH"', 'user = "clerk"', 'role = "clerk"', f'secret_hash = "{digest}"', ""]
    path = directory / "etx.toml"
    path.write_text("\n".join(lines))
    return load(path)


@pytest.fixture(scope="module")
def restart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory as ``etx serve`` leaves it: journal, snapshots with the
    members' streams, the registry store. Built through the service's own parts: the
    core from ``core_factory``, the gateway's routing (``Server.rebuild``, as at a
    restart), ``capture`` with ``Server.capture_streams``."""
    _, cmds = workload(RESTART_N)
    path = tmp_path_factory.mktemp("restart")
    cfg = workload_config(path)
    core = core_factory(cfg)()
    server = Server(core, Authenticator([]), MEMBERS, cfg.session, operator_member="EXCH")
    journal = Journal(path / JOURNAL_DIR, journal_command_types())
    store = SnapshotStore(path / SNAPSHOT_DIR, keep=3)
    registry = open_store(str(path / "registry.sqlite"))
    registry.migrate()
    last_snapshot = len(cmds) - SNAPSHOT_EVERY
    for i in range(0, len(cmds), BATCH):
        batch = cmds[i : i + BATCH]
        journal.append_batch(batch)
        core.apply_batch(batch)
        server.rebuild(batch, core.out)
        core.out.clear()
        registry.write_batch(core.ledger.take_postings(), core.last_seq)
        if journal.last_seq % SNAPSHOT_EVERY < BATCH and journal.last_seq <= last_snapshot:
            store.write(capture(core, edge=server.capture_streams(SNAPSHOT_HISTORY)))
            store.retire(journal.directory, keep_seq_from=core.last_seq + 1)
    journal.close()
    registry.close()
    return path


def test_restart(benchmark: Any, restart_dir: Path) -> None:
    """``etx serve`` started as a process on the directory, timed until it listens,
    then killed (SIGKILL: nothing is written, so every round starts from the same
    directory)."""
    _, cmds = workload(RESTART_N)
    recovered = re.compile(r"recovered from snapshot \S+ \(seq (\d+)\) and (\d+) journaled commands in ([0-9.]+) s: "
                           r"last seq (\d+)")
    lines: list[str] = []

    def restart() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "serve", "--config", str(restart_dir / "etx.toml"),
             "--data", str(restart_dir), "--listen", "127.0.0.1:0", "--no-market-data"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if "etx serving on" in line:
                    break
            else:
                raise AssertionError("etx serve stopped before listening:\n" + "".join(lines[-20:]))
        finally:
            proc.kill()
            proc.wait()

    benchmark.pedantic(restart, rounds=5, warmup_rounds=1)
    found = recovered.findall("".join(lines))
    assert found, "".join(lines[-20:])
    snapshot_seq, replayed, seconds, last = (int(found[-1][0]), int(found[-1][1]), float(found[-1][2]),
                                             int(found[-1][3]))
    assert last == len(cmds) and replayed < 2 * SNAPSHOT_EVERY
    benchmark.extra_info["journaled_commands"] = len(cmds)
    benchmark.extra_info["snapshot_seq"] = snapshot_seq
    benchmark.extra_info["replayed"] = replayed
    benchmark.extra_info["recovery_s_last_round"] = seconds


def test_restart_core(benchmark: Any, restart_dir: Path) -> None:
    _, cmds = workload(RESTART_N)
    make_core = core_factory(load(restart_dir / "etx.toml"))
    reports = []

    def restart() -> None:
        rec = recover(restart_dir, make_core)
        rec.journal.close()
        reports.append(rec.report)

    benchmark.pedantic(restart, rounds=5, warmup_rounds=0)
    report = reports[-1]
    assert report.last_seq == len(cmds) and report.snapshot
    benchmark.extra_info["journaled_commands"] = len(cmds)
    benchmark.extra_info["snapshot_seq"] = report.snapshot_seq
    benchmark.extra_info["replayed"] = report.replayed

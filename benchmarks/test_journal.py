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
- ``test_restart``: ``gateway.recovery.recover`` on a data directory holding
  ``ETX_BENCH_RESTART_N`` (default 1,000,000) journaled commands with a snapshot every
  100,000 up to 900,000 (so about 100,000 commands replay after the newest snapshot,
  the worst case of that interval). Building it takes about a minute, once.

The workload is ``tests.crash.workload.exchange_workload`` (``benchmarks.generator``'s
mixed flow, with the registry commands that fund it). The disk is whatever holds the
temporary directory; fsync cost is the machine's.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest

from engine.journal import GroupCommitter, Journal, command_decoder, read_journal
from engine.snapshot import SnapshotStore, capture
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, journal_command_types, recover
from tests.crash.workload import exchange_workload

REPLAY_N = int(os.environ.get("ETX_BENCH_REPLAY_N", "500000"))
RESTART_N = int(os.environ.get("ETX_BENCH_RESTART_N", "1000000"))
SNAPSHOT_EVERY = 100_000
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
        core = make_core()
        out = core.out
        for batch in read_journal(replay_dir, decoder):
            core.apply_batch(batch)
            out.clear()
        return int(core.last_seq)

    assert benchmark.pedantic(replay, rounds=3, warmup_rounds=0) == len(cmds)
    _per_second(benchmark, len(cmds), "commands")


@pytest.fixture(scope="module")
def restart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    make_core, cmds = workload(RESTART_N)
    path = tmp_path_factory.mktemp("restart")
    journal = Journal(path / JOURNAL_DIR, journal_command_types())
    store = SnapshotStore(path / SNAPSHOT_DIR, keep=3)
    core = make_core()
    last_snapshot = len(cmds) - SNAPSHOT_EVERY
    for i in range(0, len(cmds), BATCH):
        batch = cmds[i : i + BATCH]
        journal.append_batch(batch)
        core.apply_batch(batch)
        core.out.clear()
        if journal.last_seq % SNAPSHOT_EVERY < BATCH and journal.last_seq <= last_snapshot:
            store.write(capture(core))
            store.retire(journal.directory)
    journal.close()
    return path


def test_restart(benchmark: Any, restart_dir: Path) -> None:
    make_core, cmds = workload(RESTART_N)
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

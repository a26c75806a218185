"""The crash test: ``etx serve`` under load from real clients, killed with SIGKILL at
random moments 20 times; after every restart nothing acknowledged is lost, no trade is
lost or settled twice, the registry audit passes, members get what they missed, and
the recovered state hash equals a clean replay of the journal. The harness and every
check are in ``benchmarks/crash_soak.py`` (which runs 200 kills as a soak)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from benchmarks.crash_soak import soak

SEED = int(os.environ.get("ETX_CRASH_SEED", "20260505"))
KILLS = 20


def test_sigkill_under_load(tmp_path: Path) -> None:
    print(f"seed {SEED}, work directory {tmp_path}")
    s = asyncio.run(soak(KILLS, SEED, tmp_path, history_every=1))
    print(s.summary())
    assert not s.problems, "\n".join(s.problems)
    assert len(s.recovered_seq) == KILLS
    assert s.recovered_seq == sorted(s.recovered_seq), "a restart lost journaled commands"
    assert s.replay.trades, "the load must trade"

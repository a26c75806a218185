"""``etx journal verify|inspect|stats`` on a real data directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.crash_soak import write_config
from engine.journal import list_segments
from engine.snapshot import Capture, SnapshotStore, decode_snapshot_header, encode_snapshot
from gateway.config import load
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, core_factory
from tests.crash.test_recovery import run
from tests.crash.workload import exchange_workload
from tools.cli import main

SEED = 20260504


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    print(f"seed {SEED}")
    make_core, cmds = exchange_workload(3_000, SEED)
    path = tmp_path_factory.mktemp("data")
    run(path, make_core, cmds, snapshot_at=(1500,), segment_bytes=32 << 10)
    return path, cmds


def copy(src: Path, dst: Path) -> Path:
    for sub in (JOURNAL_DIR, SNAPSHOT_DIR):
        (dst / sub).mkdir(parents=True)
        for p in (src / sub).iterdir():
            (dst / sub / p.name).write_bytes(p.read_bytes())
    return dst


def test_stats(data: tuple[Path, list[Any]], capsys: pytest.CaptureFixture[str]) -> None:
    path, cmds = data
    assert main(["journal", "stats", str(path), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["commands"] == len(cmds) and st["first_seq"] == 1 and st["last_seq"] == len(cmds)
    counts: dict[str, int] = {}
    for c in cmds:
        counts[type(c).__name__] = counts.get(type(c).__name__, 0) + 1
    assert st["types"] == counts and {"NewOrder", "Cancel", "OpenAccount", "Deposit", "EndOfDay"} <= set(counts)
    assert st["first_ts"] == cmds[0].ts and st["last_ts"] == cmds[-1].ts
    assert len(st["snapshots"]) == 1 and st["snapshots"][0]["seq"] >= 1500 and not st["damage"]
    assert main(["journal", "stats", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"total: {len(cmds)} commands" in text and "NewOrder:" in text


def test_verify_clean_torn_and_damaged(data: tuple[Path, list[Any]], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path, cmds = data
    assert main(["journal", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"journal: {len(cmds)} commands, seq 1..{len(cmds)}" in out and out.rstrip().endswith("verified")
    torn = copy(path, tmp_path / "torn")
    seg = list_segments(torn / JOURNAL_DIR)[-1][1]
    seg.write_bytes(seg.read_bytes()[:-3])
    assert main(["journal", "verify", str(torn)]) == 0
    assert "warning: torn tail" in capsys.readouterr().out
    assert seg.stat().st_size > 0, "verify reads only"
    bad = copy(path, tmp_path / "bad")
    seg = list_segments(bad / JOURNAL_DIR)[1][1]
    raw = bytearray(seg.read_bytes())
    raw[100] ^= 1
    seg.write_bytes(bytes(raw))
    (snap,) = [p for _, p in SnapshotStore(bad / SNAPSHOT_DIR).list()]
    raw = bytearray(snap.read_bytes())
    raw[-1] ^= 1
    snap.write_bytes(bytes(raw))
    assert main(["journal", "verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"damaged: journal corrupt in {seg}" in out and "body checksum mismatch" in out
    assert out.rstrip().endswith("NOT verified")


def test_inspect(data: tuple[Path, list[Any]], capsys: pytest.CaptureFixture[str]) -> None:
    path, cmds = data
    assert main(["journal", "inspect", str(path / JOURNAL_DIR), "--from", "100", "--to", "120"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == list(range(100, 121))
    assert rows[0]["type"] == type(cmds[99]).__name__
    assert main(["journal", "inspect", str(path), "--type", "Deposit", "--limit", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["type"] == "Deposit" and r["amount"] > 0 for r in rows)


def test_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "stats", str(tmp_path / "nope")]) == 2
    assert "no journal directory" in capsys.readouterr().err


def test_verify_with_config_replays_and_checks_snapshot_hashes(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, 0)
    make_core = core_factory(load(config))
    _, cmds = exchange_workload(2_000, SEED)
    data = tmp_path / "data"
    run(data, make_core, cmds, snapshot_at=(700, 1400), segment_bytes=16 << 10)
    clean = make_core()
    clean.apply_batch(cmds)
    assert main(["journal", "verify", str(data), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("state hash matches the replay") == 2
    assert f"replayed to seq {len(cmds)}: state hash {clean.state_hash()}" in out
    # A snapshot whose checksums are fine but whose recorded hash is not the replay's.
    (seq, path), _ = SnapshotStore(data / SNAPSHOT_DIR).list()
    body = path.read_bytes()
    start = decode_snapshot_header(body, path)[2]
    path.write_bytes(encode_snapshot(Capture(seq, "f" * 32, body[start:])))
    assert main(["journal", "verify", str(data), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"damaged: snapshot {path.name} records {'f' * 32}" in out and "NOT verified" in out

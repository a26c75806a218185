"""Snapshots: capture, atomic write, verified load, restore with the same state hash,
and the retention of snapshots and journal segments."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks.generator import generate
from engine.journal import Journal, list_segments
from engine.matching import Engine, EngineSnapshot
from engine.messages import ENGINE_COMMANDS
from engine.snapshot import (
    SNAPSHOT_HEADER,
    SnapshotCorrupt,
    SnapshotStore,
    capture,
    snapshot_name,
)
from engine.stream import build_engine

SEED = 20260502


@pytest.fixture(scope="module")
def work() -> Any:
    print(f"seed {SEED}")
    return generate("mixed", 4_000, SEED)


def engine_after(work: Any, n: int) -> Engine:
    e = build_engine(work.header)
    e.apply_batch(work.all()[:n])
    e.out.clear()
    return e


def test_write_load_restore(tmp_path: Path, work: Any) -> None:
    store = SnapshotStore(tmp_path)
    e = engine_after(work, 3000)
    assert e.orders, "the snapshot must carry resting orders"
    cap = capture(e)
    path = store.write(cap)
    assert path.name == snapshot_name(3000) and store.list() == [(3000, path)]
    loaded = store.load(path, EngineSnapshot)
    assert loaded.last_seq == 3000 and loaded.state_hash == e.state_hash()
    fresh = build_engine(work.header)
    fresh.restore(loaded.state)
    fresh._check()
    assert fresh.state_hash() == e.state_hash()
    # The restored engine goes on exactly as the original does.
    rest = work.all()[3000:]
    e.apply_batch(rest)
    fresh.apply_batch(rest)
    assert fresh.out == e.out and fresh.state_hash() == e.state_hash()


def test_capture_is_independent_of_later_changes(tmp_path: Path, work: Any) -> None:
    e = engine_after(work, 2000)
    cap = capture(e)
    e.apply_batch(work.all()[2000:3000])  # orders captured above are filled and cancelled
    store = SnapshotStore(tmp_path)
    loaded = store.load(store.write(cap), EngineSnapshot)
    fresh = build_engine(work.header)
    fresh.restore(loaded.state)
    assert fresh.state_hash() == cap.state_hash == engine_after(work, 2000).state_hash()


@pytest.mark.parametrize("damage", ["body", "header", "hash", "truncated", "empty", "renamed"])
def test_damaged_snapshot_is_refused(tmp_path: Path, work: Any, damage: str) -> None:
    store = SnapshotStore(tmp_path)
    path = store.write(capture(engine_after(work, 1000)))
    data = bytearray(path.read_bytes())
    if damage == "body":
        data[-10] ^= 0x01
    elif damage == "header":
        data[12] ^= 0x01  # last_seq
    elif damage == "hash":
        data[SNAPSHOT_HEADER.size + 3] ^= 0x01
    elif damage == "truncated":
        del data[len(data) // 2 :]
    elif damage == "empty":
        data = bytearray()
    if damage == "renamed":
        renamed = path.with_name(snapshot_name(999))
        path.rename(renamed)
        path = renamed
    else:
        path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt) as e:
        store.load(path, EngineSnapshot)
    assert path.name in str(e.value)


class Note(msgspec.Struct, array_like=True):
    """Edge state of the test: what a gateway would keep beside the core."""

    seq: int
    lines: list[str]


class NoteEdge:
    """Taken on the core's thread as references, encoded by the writer."""

    def __init__(self, seq: int, lines: list[str]) -> None:
        self.seq, self.lines = seq, list(lines)
        self.encoded = 0

    def encode(self) -> bytes:
        self.encoded += 1
        return msgspec.msgpack.encode(Note(self.seq, self.lines))


def test_edge_state_travels_with_the_core(tmp_path: Path, work: Any) -> None:
    store = SnapshotStore(tmp_path)
    e = engine_after(work, 2500)
    edge = NoteEdge(2500, ["a", "b"])
    cap = capture(e, edge=edge)
    assert edge.encoded == 0, "the edge state is encoded by the writer, not at capture"
    path = store.write(cap)
    assert edge.encoded == 1
    loaded = store.load(path, EngineSnapshot, Note)
    assert loaded.edge == Note(2500, ["a", "b"]) and loaded.last_seq == 2500
    assert loaded.state_hash == e.state_hash(), "the state hash is the core's alone"
    core_only = store.load(path, EngineSnapshot)  # a reader without the edge's type
    assert core_only.edge is None and core_only.state == loaded.state
    fresh = build_engine(work.header)
    fresh.restore(loaded.state)
    assert fresh.state_hash() == e.state_hash()
    plain = store.load(store.write(capture(engine_after(work, 2600))), EngineSnapshot, Note)
    assert plain.edge is None  # a snapshot without edge state says so
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # inside the edge state: the body checksum covers it
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match="checksum"):
        store.load(path, EngineSnapshot, Note)


def test_leftover_temporary_files_are_removed(tmp_path: Path, work: Any) -> None:
    (tmp_path / (snapshot_name(5) + ".tmp")).write_bytes(b"half a snapshot")
    store = SnapshotStore(tmp_path)
    assert not list(tmp_path.iterdir()) and store.list() == []


def test_retire_snapshots_and_segments(tmp_path: Path, work: Any) -> None:
    cmds = work.all()
    journal = Journal(tmp_path / "journal", ENGINE_COMMANDS, segment_bytes=16 << 10)
    store = SnapshotStore(tmp_path / "snapshots", keep=2)
    rng = random.Random(SEED)
    e = build_engine(work.header)
    i = 0
    for mark in (1000, 2000, 3000, 3500):
        while i < mark:
            k = min(rng.randint(1, 200), mark - i)
            journal.append_batch(cmds[i : i + k])
            e.apply_batch(cmds[i : i + k])
            i += k
        store.write(capture(e))
    segments_before = list_segments(journal.directory)
    assert len(segments_before) > 5
    # A reader needs everything from seq 800 on and no snapshot lies below it: a
    # restart would replay from seq 1, so no segment may go.
    retired = store.retire(journal.directory, keep_seq_from=800)
    assert [Path(p).name for p in retired.snapshots] == [snapshot_name(1000), snapshot_name(2000)]
    assert not retired.segments and list_segments(journal.directory) == segments_before
    for seq in (1000, 2000):  # as they were
        journal_state = build_engine(work.header)
        journal_state.apply_batch(cmds[:seq])
        store.write(capture(journal_state))
    # A reader still needs everything from seq 1500 on: the snapshot a restart then
    # starts from (1000) stays beyond the keep count, and so do the segments after it.
    retired = store.retire(journal.directory, keep_seq_from=1500)
    assert [Path(p).name for p in retired.snapshots] == [snapshot_name(2000)]
    assert [s for s, _ in store.list()] == [1000, 3000, 3500]
    left = list_segments(journal.directory)
    assert left[0][0] <= 1001 and retired.segments
    for path in retired.segments:  # only segments entirely at or below seq 1000 went
        nxt = min(first for first, p in segments_before if first > int(Path(path).name[:20]))
        assert nxt - 1 <= 1000
    retired = store.retire(journal.directory)
    left = list_segments(journal.directory)
    assert left[0][0] <= 3001 and (len(left) == 1 or left[1][0] > 3001)
    for path in retired.segments:  # only segments entirely at or below seq 3000 went
        nxt = min(first for first, p in segments_before if first > int(Path(path).name[:20]))
        assert nxt - 1 <= 3000
    # Recovery from the oldest kept snapshot still has its journal.
    loaded = store.load(store.list()[0][1], EngineSnapshot)
    fresh = build_engine(work.header)
    fresh.restore(loaded.state)
    for batch in journal.replay(loaded.last_seq):
        fresh.apply_batch(batch)
    assert fresh.state_hash() == e.state_hash()
    journal.close()


def test_retire_never_removes_the_newest_segment(tmp_path: Path, work: Any) -> None:
    cmds = work.all()[:500]
    journal = Journal(tmp_path / "journal", ENGINE_COMMANDS)
    journal.append_batch(cmds)
    store = SnapshotStore(tmp_path / "snapshots", keep=1)
    store.write(capture(engine_after(work, 500)))
    assert store.retire(journal.directory).segments == []
    assert len(list_segments(journal.directory)) == 1
    journal.close()


"""Recovery at start, on the real exchange core (engine and settlement ledger):
snapshot plus journal gives the state of a clean replay; torn tails are cut; damaged
or missing snapshots fall back; damage before the tail stops the start; the gateway's
member streams restored from a snapshot and continued by the replay are those a
replay from seq 1 builds."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.journal import Journal, JournalCorrupt, list_segments
from engine.snapshot import SNAPSHOT_HEADER, Capture, SnapshotStore, capture, encode_snapshot, snapshot_name
from gateway import recovery
from gateway.auth import Authenticator
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, Snapshotter, journal_command_types, recover, snapshot_type_of
from gateway.server import Server
from gateway.streams import GatewayState
from tests.crash.workload import exchange_workload

SEED = 20260503
N = 6_000


@pytest.fixture(scope="module")
def work() -> tuple[Any, list[Any]]:
    print(f"seed {SEED}")
    return exchange_workload(N, SEED)


def clean_hash(make_core: Any, cmds: list[Any]) -> str:
    core = make_core()
    core.apply_batch(cmds)
    return str(core.state_hash())


def journaled(journal: Journal, core: Any, cmds: list[Any]) -> Iterator[int]:
    """Journal the commands in seeded random batches of 1-250, applying each after it
    is durable; after each batch yields how many commands are applied, with the
    batch's events in ``core.out`` (cleared when the caller resumes)."""
    rng = random.Random(SEED)
    i = 0
    while i < len(cmds):
        batch = cmds[i : i + rng.randint(1, 250)]
        journal.append_batch(batch)
        core.apply_batch(batch)
        i += len(batch)
        yield i
        core.out.clear()


def run(data: Path, make_core: Any, cmds: list[Any], snapshot_at: tuple[int, ...] = (),
        segment_bytes: int = 64 << 10) -> None:
    """Journal the commands in random batches, applying each after it is durable, and
    snapshot after the batches that cross the given sequence numbers."""
    journal = Journal(data / JOURNAL_DIR, journal_command_types(), segment_bytes=segment_bytes)
    store = SnapshotStore(data / SNAPSHOT_DIR, keep=10)
    core = make_core()
    marks = list(snapshot_at)
    for i in journaled(journal, core, cmds):
        while marks and i >= marks[0]:
            marks.pop(0)
            store.write(capture(core))
    journal.close()


def test_recover_from_snapshot_and_journal(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(2000, 4000))
    snaps = SnapshotStore(tmp_path / SNAPSHOT_DIR).list()
    assert len(snaps) == 2
    events: list[Any] = []
    rec = recover(tmp_path, make_core, on_replayed=lambda batch, out: events.extend(out))
    assert rec.report.snapshot_seq == snaps[-1][0] and rec.report.snapshot.endswith(snaps[-1][1].name)
    assert rec.last_seq == len(cmds) and rec.report.replayed == len(cmds) - snaps[-1][0]
    assert rec.report.state_hash == clean_hash(make_core, cmds) == rec.core.state_hash()
    assert events and events[0].seq > snaps[-1][0] and events[-1].seq <= len(cmds)
    rec.core._check()
    assert any("recovered from snapshot" in line for line in rec.report.lines())
    # The journal goes on where it stopped.
    rec.journal.append_batch([])
    assert rec.journal.last_seq == len(cmds)
    rec.journal.close()


def test_events_from_seq_replays_from_an_older_snapshot(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(2000, 4000))
    older, newer = (s for s, _ in SnapshotStore(tmp_path / SNAPSHOT_DIR).list())
    seqs: list[int] = []
    rec = recover(tmp_path, make_core, events_from_seq=older + 10,
                  on_replayed=lambda batch, out: seqs.extend(e.seq for e in out))
    assert rec.report.snapshot_seq == older and rec.report.replayed == len(cmds) - older
    assert seqs[0] == older + 1 and rec.report.state_hash == clean_hash(make_core, cmds)
    rec.journal.close()


def test_missing_snapshot_replays_the_whole_journal(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(3000,))
    for _, p in SnapshotStore(tmp_path / SNAPSHOT_DIR).list():
        p.unlink()
    rec = recover(tmp_path, make_core)
    assert rec.report.snapshot == "" and rec.report.replayed == len(cmds)
    assert rec.report.state_hash == clean_hash(make_core, cmds)
    rec.journal.close()


@pytest.mark.parametrize("damage", ["checksum", "wrong_hash", "ahead_of_journal"])
def test_bad_newest_snapshot_falls_back(tmp_path: Path, work: Any, damage: str) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(2000, 4000))
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR)
    (older, _), (newer, path) = store.list()
    if damage == "checksum":
        data = bytearray(path.read_bytes())
        data[SNAPSHOT_HEADER.size + 40] ^= 0x08
        path.write_bytes(bytes(data))
    elif damage == "wrong_hash":
        # Checksums fine, but the state it restores is not the state it claims.
        core = make_core()
        core.apply_batch(cmds[:newer])
        cap = capture(core)
        path.write_bytes(encode_snapshot(Capture(cap.last_seq, "0" * 32, cap.body)))
    else:
        core = make_core()
        core.apply_batch(cmds)
        cap = capture(core)
        future = Capture(len(cmds) + 5, cap.state_hash, cap.body)
        (tmp_path / SNAPSHOT_DIR / snapshot_name(len(cmds) + 5)).write_bytes(encode_snapshot(future))
    rec = recover(tmp_path, make_core)
    assert len(rec.report.skipped) == 1
    expect = newer if damage == "ahead_of_journal" else older
    assert rec.report.snapshot_seq == expect
    assert rec.report.state_hash == clean_hash(make_core, cmds)
    assert any("snapshot skipped" in line for line in rec.report.lines())
    rec.journal.close()


def test_torn_tail_is_cut_and_reported(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(3000,), segment_bytes=1 << 30)
    seg = list_segments(tmp_path / JOURNAL_DIR)[-1][1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 7)  # the newest record lost its last bytes
    rec = recover(tmp_path, make_core)
    (torn,) = rec.report.torn
    assert torn.segment == str(seg) and torn.offset + torn.bytes == size - 7
    assert seg.stat().st_size == torn.offset
    kept = rec.last_seq
    assert kept < len(cmds) and rec.report.state_hash == clean_hash(make_core, cmds[:kept])
    assert any("torn tail" in line for line in rec.report.lines())
    # The commands of the torn record were never acknowledged; sent again, all is well.
    rec.journal.append_batch(cmds[kept:])
    rec.journal.close()
    rec2 = recover(tmp_path, make_core)
    assert rec2.report.state_hash == clean_hash(make_core, cmds) and not rec2.report.torn
    rec2.journal.close()


def test_corruption_before_the_tail_stops_the_start(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(1000,), segment_bytes=32 << 10)
    segments = list_segments(tmp_path / JOURNAL_DIR)
    victim = segments[-2][1]  # after the snapshot, before the newest segment
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x20
    victim.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as e:
        recover(tmp_path, make_core)
    assert victim.name in str(e.value) and "at byte" in str(e.value)


def test_journal_retired_past_the_only_usable_snapshot(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    run(tmp_path, make_core, cmds, snapshot_at=(2000, 4000), segment_bytes=32 << 10)
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR, keep=1)
    store.retire(tmp_path / JOURNAL_DIR)  # the journal now starts after seq 2000
    (_, newest), = store.list()
    newest.write_bytes(newest.read_bytes()[:-1])
    with pytest.raises(JournalCorrupt, match="is needed"):
        recover(tmp_path, make_core)


def test_empty_directory_starts_empty(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    rec = recover(tmp_path / "new", make_core)
    assert rec.last_seq == 0 and rec.report.replayed == 0
    rec.journal.append_batch(cmds[:10])
    rec.journal.close()
    rec = recover(tmp_path / "new", make_core)
    assert rec.last_seq == 10
    rec.journal.close()


@pytest.mark.parametrize("fork", [True, False], ids=["process", "thread"])
def test_snapshotter_periodic_and_end_of_day(tmp_path: Path, work: Any, fork: bool) -> None:
    make_core, cmds = work
    journal = Journal(tmp_path / JOURNAL_DIR, journal_command_types(), segment_bytes=16 << 10)
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR, keep=2)
    core = make_core()
    snapper = Snapshotter(core, store, journal.directory, every_commands=1500, day=lambda: core.engine.day,
                          fork=fork)
    eod_seq = next(c.seq for c in cmds if type(c).__name__ == "EndOfDay")
    for _ in journaled(journal, core, cmds):
        snapper.after_batch(core.out)
        assert snapper.wait()  # each due snapshot is taken (none skipped as busy): a fixed outcome
    snapper.close()
    journal.close()
    assert not snapper.children
    assert snapper.errors == 0 and snapper.written == snapper.taken >= len(cmds) // 1500
    assert len(snapper.pauses_s) == snapper.taken
    snaps = store.list()
    eod = store.newest_end_of_day()
    assert eod is not None and eod >= eod_seq and eod in {s for s, _ in snaps}
    assert len(snaps) == 3 and eod < snaps[-2][0], "the end-of-day snapshot outlives the keep count"
    assert store.load(dict((s, p) for s, p in snaps)[eod], snapshot_type_of(core)).end_of_day
    # Journal segments from the oldest kept snapshot (the end of day) on are kept.
    rec = recover(tmp_path, make_core, events_from_seq=eod + 1)
    assert rec.report.snapshot_seq == eod and rec.report.state_hash == clean_hash(make_core, cmds)
    rec.journal.close()


@pytest.mark.parametrize("fork", [True, False], ids=["process", "thread"])
def test_snapshotter_write_failure_does_not_stop_trading(tmp_path: Path, work: Any, fork: bool) -> None:
    make_core, cmds = work
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR)
    core = make_core()
    snapper = Snapshotter(core, store, every_commands=100, fork=fork)
    (tmp_path / SNAPSHOT_DIR).rmdir()  # the snapshot directory is gone: writes fail
    core.apply_batch(cmds[:300])
    snapper.after_batch()
    snapper.close()
    assert snapper.taken == 1 and snapper.errors == 1 and snapper.written == 0
    core.apply_batch(cmds[300:400])  # the core goes on
    assert core.last_seq == 400


def gateway(core: Any) -> Server:
    """A server over the core, not listening: its member streams are all this uses."""
    return Server(core, Authenticator([]), [f"M{i:02d}" for i in range(1, 9)], operator_member="EXCH")


@pytest.mark.parametrize("history", [0, 150, 1 << 30])
def test_member_streams_continue_from_a_snapshot(tmp_path: Path, work: Any, history: int) -> None:
    """Streams captured with a snapshot (keeping ``history`` reports per member),
    restored and continued by the replay after it, equal the streams routed from seq 1:
    the same last seq_out, the same reports over the window kept, the same outcomes of
    the day's client order ids, the same tracking of open orders."""
    make_core, cmds = work
    eod = next(c.seq for c in cmds if type(c).__name__ == "EndOfDay")
    marks = [eod - 700, eod + 900]  # one snapshot with the day before the end, one after
    journal = Journal(tmp_path / JOURNAL_DIR, journal_command_types())
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR, keep=10)
    core = make_core()
    full = gateway(core)
    done = 0
    for i in journaled(journal, core, cmds):
        full.rebuild(cmds[done:i], list(core.out))
        done = i
        if marks and i >= marks[0]:
            marks.pop(0)
            store.write(capture(core, edge=full.capture_streams(history)))
    journal.close()
    snaps = [seq for seq, _ in store.list()]
    for upto in reversed(snaps):  # newest first: each round removes the newer one
        for seq, path in store.list():
            if seq > upto:
                path.unlink()  # recovery must start from the snapshot at upto
        opened: list[Any] = []
        events: list[list[Any]] = []
        rec = recover(tmp_path, make_core, edge_type=GatewayState,
                      on_restored=lambda c, edge, opened=opened: opened.extend(
                          (o.order_id, o.member, o.coid, o.side, o.qty) for o in c.engine.orders.values()),
                      on_replayed=lambda batch, out, events=events: events.append((batch, list(out))))
        rec.journal.close()
        assert rec.report.snapshot_seq == upto and rec.edge is not None
        again = gateway(rec.core)
        windows = {ms.member: (len(ms.history), ms.seq) for ms in rec.edge.members}
        again.restore_streams(rec.edge, opened)  # takes over the snapshot's lists
        for batch, batch_events in events:
            again.rebuild(batch, batch_events)
        again._check()
        for member, want in full.streams.items():
            got = again.streams[member]
            assert got.seq == want.seq, member
            assert got.coids == want.coids, member
            assert got.open.keys() == want.open.keys(), member
            kept = got.seq - got.base
            assert kept == len(got.history) and got.history == want.history[len(want.history) - kept:], member
            kept_then, seq_then = windows[member]
            assert kept_then == min(history, seq_then) and kept >= kept_then
        assert {k: v[:3] for k, v in again.track.items()} == {k: v[:3] for k, v in full.track.items()}


def test_snapshotter_by_time_only_while_commands_are_applied(tmp_path: Path, work: Any) -> None:
    make_core, cmds = work
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR)
    core = make_core()
    snapper = Snapshotter(core, store, every_commands=10**9, every_s=0.05)
    core.apply_batch(cmds[:100])
    snapper.after_batch()
    assert snapper.taken == 0  # neither enough commands nor enough time
    time.sleep(0.06)
    snapper.after_batch()
    assert snapper.taken == 1
    time.sleep(0.06)
    snapper.after_batch()  # time passed, but nothing was applied since
    assert snapper.taken == 1
    snapper.close()
    assert [s for s, _ in store.list()] == [100] and snapper.last_written == 100
    with pytest.raises(ValueError, match="every_s"):
        Snapshotter(core, store, every_s=0)


class Clock:
    """Stands in for the ``time`` module inside gateway.recovery: the snapshotter's
    monotonic and performance clocks read ``now``, which only the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now


class TimedStore:
    """A snapshot store whose every write takes ``cost`` seconds of the test's clock."""

    def __init__(self, store: SnapshotStore, clock: Clock, cost: float) -> None:
        self.store, self.clock, self.cost = store, clock, cost

    def write(self, cap: Any) -> Path:
        self.clock.now += self.cost
        return self.store.write(cap)

    def retire(self, journal_dir: Any, keep_seq_from: Any = None) -> Any:
        return self.store.retire(journal_dir, keep_seq_from=keep_seq_from)


@pytest.mark.parametrize("growth", [1, 3])
def test_snapshots_keep_their_gap_as_the_state_grows(tmp_path: Path, work: Any, growth: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A periodic snapshot waits gap_ratio times the last one's cost after it was
    durable, that cost scaled by how much the state has grown since it was taken
    (estimated once: it then waits no more, however the state grows on)."""
    make_core, cmds = work
    clock = Clock()
    monkeypatch.setattr(recovery, "time", clock)
    size = [1_000]
    store = TimedStore(SnapshotStore(tmp_path / SNAPSHOT_DIR, keep=10), clock, cost=2.0)
    core = make_core()
    snapper = Snapshotter(core, store, every_commands=10, every_s=None, gap_ratio=3.0, fork=False,
                          size=lambda: size[0])
    applied = 0

    def batch() -> None:
        nonlocal applied
        core.apply_batch(cmds[applied:applied + 10])
        applied += 10
        core.out.clear()
        snapper.after_batch()

    batch()
    assert snapper.wait() and snapper.taken == 1
    durable = clock.now  # the write took 2 s of the clock: the next waits 3 x 2 s x growth
    size[0] *= growth
    for at, taken in ((5.9, 1), (6.1, 1 if growth > 1 else 2), (17.9, 1 if growth > 1 else 2), (18.1, 2)):
        clock.now = durable + at
        if at == 17.9:
            size[0] *= 10  # grown again: the estimate made at 6.1 s stands
        batch()
        assert snapper.taken == taken, (at, snapper.taken)
    assert snapper.wait()
    snapper.close()
    assert snapper.written == 2 and snapper.errors == 0


def test_resident_bytes_reads_this_process() -> None:
    assert recovery.resident_bytes() > 1 << 20  # a Python process with etx loaded: megabytes


class SlowEdge:
    """Edge state whose encoding waits for a file to appear: it keeps a snapshot
    being written for as long as a test needs."""

    def __init__(self, gate: Path) -> None:
        self.gate = gate

    def encode(self) -> bytes:
        deadline = time.monotonic() + 30
        while not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return b"\x90"  # msgpack: an empty array


def test_snapshotter_skips_periodic_snapshots_while_one_is_written(tmp_path: Path, work: Any) -> None:
    """A periodic snapshot is not started while the previous one is being written; an
    end of day is snapshotted regardless, and both become durable."""
    make_core, cmds = work
    store = SnapshotStore(tmp_path / SNAPSHOT_DIR, keep=10)
    core = make_core()
    gate = tmp_path / "go"
    snapper = Snapshotter(core, store, every_commands=100, day=lambda: core.engine.day,
                          edge=lambda: SlowEdge(gate), fork=True)
    eod = next(i for i, c in enumerate(cmds) if type(c).__name__ == "EndOfDay")
    core.apply_batch(cmds[:100])
    snapper.after_batch()
    assert snapper.taken == 1 and len(snapper.children) == 1
    core.apply_batch(cmds[100:eod])
    snapper.after_batch()
    assert snapper.taken == 1  # still writing the first: skipped
    core.apply_batch(cmds[eod : eod + 1])
    snapper.after_batch()
    assert snapper.taken == 2 and len(snapper.children) == 2  # the end of day is not skipped
    core.out.clear()
    gate.touch()
    assert snapper.wait()
    snapper.close()
    assert snapper.written == 2 and snapper.errors == 0 and not snapper.children
    assert [s for s, _ in store.list()] == [100, eod + 1] and store.newest_end_of_day() == eod + 1


def test_snapshot_process_holds_no_socket_of_the_parent(tmp_path: Path, work: Any) -> None:
    """While a snapshot process runs, a listening address the exchange closed is free
    again (the child closed its inherited copy): a restart can bind it."""
    import socket

    make_core, cmds = work
    core = make_core()
    core.apply_batch(cmds[:50])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    gate = tmp_path / "go"
    snapper = Snapshotter(core, SnapshotStore(tmp_path / SNAPSHOT_DIR), every_commands=10**9,
                          edge=lambda: SlowEdge(gate), fork=True)
    try:
        snapper.take()
        assert snapper.children
        listener.close()
        # The child closes its copy as it starts; a child that kept it would hold the
        # address until its edge state is released (after this test's deadline).
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_server(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        assert snapper.children, "the snapshot process was still writing: the address was freed by it, not its exit"
    finally:
        gate.touch()
        snapper.close()
    assert snapper.written == 1 and snapper.errors == 0


CHILD_PARENT = """
import sys, time
from pathlib import Path
from engine.snapshot import SnapshotStore
from gateway.recovery import Snapshotter
from tests.crash.test_recovery import SlowEdge
from tests.crash.workload import exchange_workload

make_core, cmds = exchange_workload(300, 7)
core = make_core()
core.apply_batch(cmds)
snapper = Snapshotter(core, SnapshotStore(sys.argv[1]), edge=lambda: SlowEdge(Path(sys.argv[2])), fork=True)
snapper.take()
print(*snapper.children, flush=True)
time.sleep(60)
"""


def test_snapshot_process_dies_with_the_exchange(tmp_path: Path) -> None:
    """An exchange killed with SIGKILL leaves no snapshot process behind to race the
    restarted one."""
    import os
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", CHILD_PARENT, str(tmp_path / "snaps"), str(tmp_path / "never")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive, writing (its edge state waits for a file that never comes)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # a zombie also counts as gone: it is waiting only for init to reap it
            try:
                with open(f"/proc/{child}/stat") as f:
                    if f.read().split(") ")[1].startswith("Z"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"snapshot process {child} outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
    assert not list((tmp_path / "snaps").glob("*.snapshot"))


def test_replay_pauses_the_cycle_collector_and_restores_it(tmp_path: Path, work: Any) -> None:
    """Recovery replays with the collector paused and leaves it as it found it (on or
    off), also when the replay fails."""
    import gc

    from gateway.recovery import collector_paused

    make_core, cmds = work
    run(tmp_path, make_core, cmds[:500])
    seen: list[bool] = []
    was_on = gc.isenabled()
    try:
        rec = recover(tmp_path, make_core, on_replayed=lambda batch, out: seen.append(gc.isenabled()))
        rec.journal.close()
        assert seen and not any(seen) and gc.isenabled()
        gc.disable()
        with collector_paused():
            pass
        assert not gc.isenabled()  # off before, off after
        gc.enable()
        with pytest.raises(RuntimeError), collector_paused():
            raise RuntimeError("a replay that fails")
        assert gc.isenabled()
    finally:
        if was_on:
            gc.enable()
        else:
            gc.disable()

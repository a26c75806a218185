"""Recovery at start: the newest valid snapshot, then the journal after it.

Contract of ``recover(data_dir, make_core, ...)``:
- Opens the journal in ``data_dir/journal`` for appending. A torn tail (a crash in
  the middle of a write, which was therefore never acknowledged) is cut and reported.
- Loads the newest snapshot in ``data_dir/snapshots`` that verifies, restores it into
  a fresh ``make_core()`` and checks the core's ``state_hash()`` against the hash
  recorded with the snapshot. A snapshot that fails any of this is reported and
  skipped; the next older one is tried, and at last an empty core. With
  ``edge_type`` (``etx serve``: the gateway's member streams) only snapshots that
  carry edge state are used, and ``on_restored(core, edge)`` receives the decoded
  edge state once its snapshot is restored, before anything is replayed.
- Replays every journaled command after the snapshot through ``core.apply_batch``,
  handing each batch and its events to ``on_replayed`` (the gateway rebuilds its
  members' outbound reports from them, settlement re-settles what the registry store
  has not committed). ``events_from_seq`` makes recovery start from a snapshot taken
  before that sequence, so every event from it on is regenerated (``etx serve``
  passes the registry store's last settled seq + 1).
- Damage anywhere but the tail raises ``JournalCorrupt`` (segment and byte offset in
  the message), as does a journal that does not reach back to the snapshot: the
  exchange must not start on state it cannot prove.
- Returns a ``Recovery``: the core, the open journal (appends continue at
  ``last_seq + 1``), the snapshot store and a ``RecoveryReport`` for the log.

``Snapshotter`` takes the running core's snapshots: every ``every_commands`` commands,
every ``every_s`` seconds (when something was applied) and after each end of day.
Where the platform can fork (``fork=True``, the default there), the core's thread
forks between two batches and the child process, which sees the core frozen at that
sequence number by copy-on-write, hashes, encodes and writes the snapshot while the
parent trades on: the pause is the fork. Otherwise the snapshot is captured on the
core's thread and written on a thread of its own. With a ``follower``
(gateway/snapfollow.py), a process that follows the journal with a core of its own
writes them, and the core's thread only asks. Either way old snapshots and journal
segments are retired by the exchange once the snapshot is durable.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import stat
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from engine.journal import SEGMENT_BYTES_DEFAULT, Journal, JournalCorrupt, TornTail
from engine.messages import ENGINE_COMMANDS
from engine.snapshot import KEEP_DEFAULT, Capture, EdgeState, SnapshotCorrupt, SnapshotStore, capture, write_all
from gateway.datadir import close_inherited

log = logging.getLogger("etx.recovery")

JOURNAL_DIR = "journal"
SNAPSHOT_DIR = "snapshots"


class Core(Protocol):
    """What recovery needs of the exchange's core (``settlement.Exchange``, or an
    ``Engine`` for engine-only replays)."""

    out: list[Any]

    @property
    def last_seq(self) -> int: ...

    def apply_batch(self, cmds: Sequence[Any]) -> None: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...

    def state_hash(self) -> str: ...


class SkippedSnapshot(msgspec.Struct):
    path: str
    reason: str


class RecoveryReport(msgspec.Struct):
    snapshot: str = ""  # the snapshot restored, "" for an empty start
    snapshot_seq: int = 0
    skipped: list[SkippedSnapshot] = msgspec.field(default_factory=list)
    torn: list[TornTail] = msgspec.field(default_factory=list)
    replayed: int = 0  # commands replayed from the journal
    last_seq: int = 0
    state_hash: str = ""
    seconds: float = 0.0
    notes: list[str] = msgspec.field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as operator log lines."""
        out = []
        for t in self.torn:
            what = "removed the segment" if t.removed_segment else f"cut {t.bytes} bytes at offset {t.offset}"
            out.append(f"journal: torn tail in {t.segment} ({t.reason}): {what}")
        for s in self.skipped:
            out.append(f"snapshot skipped: {s.path}: {s.reason}")
        out.extend(self.notes)
        base = f"snapshot {self.snapshot} (seq {self.snapshot_seq})" if self.snapshot else "an empty state"
        out.append(
            f"recovered from {base} and {self.replayed} journaled commands in {self.seconds:.3f} s: "
            f"last seq {self.last_seq}, state hash {self.state_hash}"
        )
        return out


class Recovery(typing.NamedTuple):
    core: Any
    journal: Journal
    snapshots: SnapshotStore
    last_seq: int
    report: RecoveryReport
    edge: Any = None  # the restored snapshot's edge state (None: an empty start, or none asked for)


def journal_command_types() -> tuple[type, ...]:
    """Every command type the exchange journals: the engine's and the registry's."""
    from settlement.messages import REGISTRY_COMMANDS

    return tuple(ENGINE_COMMANDS) + tuple(REGISTRY_COMMANDS)


def core_factory(cfg: Any) -> Callable[[], Any]:
    """``make_core`` for a ``gateway.config.Config``: a fresh ``settlement.Exchange``
    with the configuration's instruments, fees, schedule and self-trade prevention.
    The one composition of the core, for ``etx serve``, ``etx journal verify`` and the
    crash tests alike: a replay is only proof when it runs into the same core."""
    from settlement import Exchange, Fees, Ledger

    trading_ppm, registry_ppm = cfg.fee_rates_ppm()
    fees = Fees(trading_ppm=trading_ppm, settlement_ppm=registry_ppm)
    rules = cfg.compliance_rules()
    instruments, schedule = cfg.instruments(), cfg.schedule()
    stp, member_stp = cfg.stp_default(), cfg.member_stp()

    def make_core() -> Exchange:
        return Exchange(instruments, Ledger(fees, rules), schedule=schedule, stp_default=stp, member_stp=member_stp)

    return make_core


def snapshot_type_of(core: Any) -> Any:
    """The type ``core.snapshot()`` returns: the core class's ``SNAPSHOT_TYPE``, else
    the method's return annotation (a compiled method has none)."""
    declared = getattr(type(core), "SNAPSHOT_TYPE", None)
    if declared is not None:
        return declared
    hints = typing.get_type_hints(type(core).snapshot)
    if "return" not in hints:
        raise TypeError(f"{type(core).__name__}.snapshot has no return annotation; pass snapshot_type")
    return hints["return"]


def recover(
    data_dir: Path | str,
    make_core: Callable[[], Any],
    *,
    command_types: Sequence[type] | None = None,
    snapshot_type: Any = None,
    events_from_seq: int | None = None,
    on_replayed: Callable[[list[Any], list[Any]], None] | None = None,
    segment_bytes: int = SEGMENT_BYTES_DEFAULT,
    keep_snapshots: int = KEEP_DEFAULT,
    edge_type: Any = None,
    on_restored: Callable[[Any, Any], None] | None = None,
) -> Recovery:
    """See the module docstring. ``on_replayed(batch, out)`` receives each replayed
    batch and the core's ``out`` list after it, and must not keep ``out`` (it is
    cleared afterwards)."""
    started = time.perf_counter()
    data = Path(data_dir)
    report = RecoveryReport()
    journal = Journal(
        data / JOURNAL_DIR, command_types or journal_command_types(), segment_bytes=segment_bytes
    )
    try:
        report.torn = list(journal.repair)
        store = SnapshotStore(data / SNAPSHOT_DIR, keep=keep_snapshots)
        journal_empty = not journal.segments()
        core, snap_seq, edge = restore_newest(
            store, make_core, edge_type, journal.last_seq, report, snapshot_type=snapshot_type,
            journal_empty=journal_empty, events_from_seq=events_from_seq)
        if on_restored is not None:
            on_restored(core, edge)
        if journal_empty:
            if snap_seq:
                report.notes.append(f"the journal is empty; it continues after the snapshot's seq {snap_seq}")
            journal.rebase(snap_seq)
        out = core.out
        apply_batch = core.apply_batch
        replayed = 0
        with collector_paused():
            for batch in journal.replay(after_seq=snap_seq):
                apply_batch(batch)
                replayed += len(batch)
                if on_replayed is not None:
                    on_replayed(batch, out)
                out.clear()
        if core.last_seq != journal.last_seq:
            raise JournalCorrupt(
                str(journal.directory), 0,
                f"replay ended at seq {core.last_seq} but the journal's newest segment ends at {journal.last_seq}",
            )
    except BaseException:
        journal.close()
        raise
    report.replayed = replayed
    report.last_seq = core.last_seq
    report.state_hash = core.state_hash()
    report.seconds = time.perf_counter() - started
    return Recovery(core, journal, store, core.last_seq, report, edge)


def restore_newest(
    store: SnapshotStore,
    make_core: Callable[[], Any],
    edge_type: Any,
    journal_end: int,
    report: RecoveryReport,
    *,
    snapshot_type: Any = None,
    journal_empty: bool = False,
    events_from_seq: int | None = None,
) -> tuple[Any, int, Any]:
    """The newest usable snapshot at or below the journal's end ``journal_end`` (any,
    with ``journal_empty``) restored into a fresh core, with its edge state and its
    seq; or a fresh core, seq 0 and None. What was skipped, and why, goes into
    ``report``."""
    newer = 0
    for seq, path in reversed(store.list()):
        if events_from_seq is not None and seq >= events_from_seq:
            newer += 1  # events from events_from_seq on must be regenerated by replay
            continue
        if not journal_empty and seq > journal_end:
            report.skipped.append(SkippedSnapshot(str(path), f"seq {seq} is past the journal's end {journal_end}"))
            continue
        core = make_core()
        try:
            kind = snapshot_type if snapshot_type is not None else snapshot_type_of(core)
            loaded = store.load(path, kind, edge_type)
            if edge_type is not None and loaded.edge is None:
                report.skipped.append(SkippedSnapshot(str(path), "it carries no edge state (member streams)"))
                continue
            core.restore(loaded.state)
        except (SnapshotCorrupt, ValueError, AssertionError) as e:
            report.skipped.append(SkippedSnapshot(str(path), str(e)))
            continue
        if core.last_seq != loaded.last_seq:
            report.skipped.append(SkippedSnapshot(str(path), f"restored seq {core.last_seq}, header says {loaded.last_seq}"))
            continue
        found = core.state_hash()
        if found != loaded.state_hash:
            report.skipped.append(
                SkippedSnapshot(str(path), f"state hash after restore {found} differs from the recorded {loaded.state_hash}")
            )
            continue
        report.snapshot, report.snapshot_seq = str(path), seq
        _note_newer(report, newer, events_from_seq)
        return core, seq, loaded.edge
    _note_newer(report, newer, events_from_seq)
    return make_core(), 0, None


def open_orders(core: Any) -> list[tuple[int, str, str, int, int]]:
    """The orders open in a restored exchange core, as the member streams' ``restore``
    takes them: (order id, member, client order id, side, open quantity)."""
    return [(o.order_id, o.member, o.coid, o.side, o.qty) for o in core.engine.orders.values()]


def _note_newer(report: RecoveryReport, newer: int, events_from_seq: int | None) -> None:
    if newer:
        report.notes.append(f"{newer} newer snapshots not used: events from seq {events_from_seq} on "
                            "must be regenerated (the registry store has settled only what is before it)")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for a replay (as ``recover`` does; ``etx journal
    verify`` and the replay benchmark too). The core makes no reference cycles, yet the
    collector's passes over what a replay allocates cost about 4 % of it; it resumes
    (if it was on) when the replay ends, and collects what cycles there are then."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class Snapshotter:
    """Snapshots of the running core, without stopping trading for long.

    ``after_batch(events)`` is called on the core's thread after each applied batch
    (it has the signature of the server's ``on_events`` listeners). It takes a
    snapshot when ``every_commands`` commands have been applied since the last one,
    when ``every_s`` seconds have passed since the last one and something was applied,
    or when ``day()`` changed (an end of day: that snapshot is flagged, and retention
    keeps the newest such snapshot). ``edge()`` gives the state beside the core at the
    same sequence number (e.g. the gateway's member streams, as references encoded
    later).

    With ``fork`` (the default where ``os.fork`` exists) a snapshot is a child
    process: the fork is the whole pause trading sees (``pauses_s``); the child hashes
    and encodes the core, encodes the edge state, writes and syncs the file and exits,
    and dies with the exchange if that is killed first. Without it, the core is hashed
    and encoded on the core's thread (the pause) and the rest runs on the snapshot
    thread. With a ``follower`` (``gateway.snapfollow.SnapshotFollower``, started
    here), the core's thread tells it how far the journal is durable (at most every
    ``FOLLOWER_TELL_S``) and asks it for each snapshot at the core's seq, which it
    writes from a core of its own that follows the journal; its CPU time for the
    capture and write is the snapshot's cost. A snapshot it cannot be asked for (it
    has ended) is taken the other way, and a new follower started. Either way the
    parent retires old snapshots and journal segments
    (``store.retire`` with ``keep_seq_from()``: e.g. the registry store's last settled
    seq + 1, so recovery can still regenerate what settlement lacks) once the
    snapshot is durable; ``write_s`` holds the time from the pause to that point.
    ``take`` must be called from a thread that lives as long as the snapshots it
    starts (the core's): a child is killed when the thread that forked it ends.

    A periodic snapshot is skipped while the previous one is still being written (the
    next batch tries again), and until ``gap_ratio`` times its cost has passed since it
    was durable. The cost of a snapshot process is the CPU time it used (it runs at a
    lower priority than the exchange, so its wall time stretches when the machine is
    busy); on a thread, the time from the pause to durable. A snapshot costs in
    proportion to the state it copies, so when the state has grown since the last one
    (``size()``, by default the process's resident memory, read when a snapshot is
    otherwise due), that cost is scaled by the growth first, once per snapshot: a
    snapshot never waits more than one such estimate. On a busy day with a deep book,
    even a growing one, snapshots so space themselves to about 1 / (1 + gap_ratio) of
    a core, and a restart replays correspondingly more. An end-of-day snapshot is
    always taken.
    Write errors are logged and counted; trading goes on and the next snapshot tries
    again.
    """

    def __init__(
        self,
        core: Any,
        store: SnapshotStore,
        journal_dir: Path | str | None = None,
        *,
        every_commands: int = 100_000,
        every_s: float | None = None,
        day: Callable[[], int] | None = None,
        keep_seq_from: Callable[[], int] | None = None,
        edge: Callable[[], EdgeState] | None = None,
        fork: bool | None = None,
        gap_ratio: float = 0.0,
        size: Callable[[], int] | None = None,
        follower: Any = None,
    ) -> None:
        if every_commands < 1:
            raise ValueError(f"every_commands must be positive, got {every_commands}")
        if every_s is not None and every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        if not gap_ratio >= 0:  # also refuses nan
            raise ValueError(f"gap_ratio must be at least 0, got {gap_ratio}")
        if fork and not hasattr(os, "fork"):
            raise ValueError("fork=True needs os.fork, which this platform lacks")
        self.core, self.store, self.journal_dir = core, store, journal_dir
        self.every_commands, self.every_s = every_commands, every_s
        self.day, self.keep_seq_from, self.edge = day, keep_seq_from, edge
        self.fork = hasattr(os, "fork") if fork is None else fork
        self.gap_ratio = gap_ratio
        self.size = size if size is not None else resident_bytes
        self._next_at = 0.0  # monotonic time before which no periodic snapshot starts (gap_ratio)
        # The last durable snapshot's cost, the state's size when it was taken and when it
        # became durable; whether the next one's cost has been estimated from the growth.
        self._cost, self._cost_size, self._durable_at, self._estimated = 0.0, 0, 0.0, True
        self._day = day() if day is not None else 0
        self._last = core.last_seq
        self._last_at = time.monotonic()
        self._cond = threading.Condition()
        self._queue: list[tuple[Capture, float, float, int]] = []  # with its pause, when it started, the size
        self._pending = 0  # snapshots taken and not yet durable (or failed)
        self._closed = False
        self._retire_lock = threading.Lock()
        self._reapers: list[threading.Thread] = []
        self.children: set[int] = set()  # pids of snapshot processes still running
        self.taken = 0
        self.written = 0
        self.errors = 0
        self.last_written = 0  # seq of the newest snapshot written
        self.written_at = 0.0  # when it became durable (monotonic; 0: none yet)
        self.pauses_s: list[float] = []  # the pause trading sees for each snapshot
        self.write_s: list[float] = []  # from the pause to the snapshot being durable and retired
        self._thread: threading.Thread | None = None
        # With a follower (gateway.snapfollow.SnapshotFollower): the snapshots asked of
        # it and not yet reported, by seq, as (end of day, pause, started, size).
        self.follower = follower
        self._asked: dict[int, tuple[bool, float, float, int]] = {}
        self._tell_at = 0.0
        self._restart_at = 0.0  # no new follower before this (monotonic), after one ended
        if follower is not None:
            follower.start(core.last_seq, self._follower_said)
        if not self.fork:
            self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
            self._thread.start()

    def after_batch(self, events: Any = None) -> None:
        core = self.core
        if self.follower is not None:
            now = time.monotonic()
            if now >= self._tell_at:
                self._tell_at = now + FOLLOWER_TELL_S
                self.follower.tell(core.last_seq)
        end_of_day = False
        if self.day is not None:
            today = self.day()
            if today != self._day:
                self._day, end_of_day = today, True
        if not end_of_day:
            if self._pending or (self.gap_ratio and time.monotonic() < self._next_at):
                return
            done = core.last_seq - self._last
            if done < self.every_commands and not (
                    done and self.every_s is not None and time.monotonic() - self._last_at >= self.every_s):
                return
            if not self._estimated:
                self._estimated = True
                grown = self.size() / self._cost_size if self._cost_size > 0 else 1.0
                due = self._durable_at + self.gap_ratio * self._cost * grown
                if grown > 1.0 and time.monotonic() < due:
                    self._next_at = due
                    return
        self.take(end_of_day)

    def take(self, end_of_day: bool = False) -> None:
        """Take a snapshot of the core as it is now (on the core's thread)."""
        size = self.size() if self.gap_ratio else 0
        started = time.perf_counter()
        if self.follower is not None and self._ask(end_of_day, started, size):
            return
        if self.fork:
            self._fork(end_of_day, started, size)
            return
        cap = capture(self.core, end_of_day, self.edge() if self.edge is not None else None)
        pause = time.perf_counter() - started
        self._taken(cap.last_seq, pause)
        with self._cond:
            self._queue.append((cap, pause, started, size))
            self._cond.notify()

    def _ask(self, end_of_day: bool, started: float, size: int) -> bool:
        """Ask the follower for this snapshot; False if it cannot be asked (it has
        ended: a new one is started, at most every FOLLOWER_RESTART_S, and this snapshot
        is taken the other way)."""
        follower, last_seq = self.follower, self.core.last_seq
        with self._cond:  # its answer (on the reader thread) waits until the request is counted
            if follower.alive() and follower.request(last_seq, end_of_day):
                pause = time.perf_counter() - started
                self._asked[last_seq] = (end_of_day, pause, started, size)
                self._taken(last_seq, pause)
                return True
        now = time.monotonic()
        if not follower.alive() and now >= self._restart_at:
            self._restart_at = now + FOLLOWER_RESTART_S
            log.error("the snapshot follower is not running; starting another (this snapshot is taken by the exchange)")
            self._fail_asked("the snapshot follower ended before writing it")
            follower.start(last_seq, self._follower_said)
        return False

    def _fail_asked(self, why: str) -> None:
        """Fail every snapshot asked of the follower and not yet reported."""
        with self._cond:
            lost = sorted(self._asked)
            self._asked.clear()
        for seq in lost:
            self._failed(seq, why)

    def _follower_said(self, kind: str, seq: int, cpu_s: float, text: str) -> None:
        """From the follower's reader thread: a snapshot written or failed, the
        follower ready, or ended (whatever was asked of it and not reported fails)."""
        if kind == "ready":
            log.info("the snapshot follower is ready at seq %d", seq)
            return
        if kind == "ended":
            if not self._closed:
                log.error("%s", text)
            self._fail_asked(text)
            return
        with self._cond:
            asked = self._asked.pop(seq, None)
        if asked is None:
            log.error("the snapshot follower reported seq %d, which was not asked of it: %s %s", seq, kind, text)
        elif kind == "ok":
            end_of_day, pause, started, size = asked
            self._written(text, seq, end_of_day, pause, started, size, cpu_s)
        else:
            self._failed(seq, text)

    def _taken(self, last_seq: int, pause: float) -> None:
        self.pauses_s.append(pause)
        self._last = last_seq
        self._last_at = time.monotonic()
        self.taken += 1
        with self._cond:
            self._pending += 1

    def _fork(self, end_of_day: bool, started: float, size: int) -> None:
        core, store, edge = self.core, self.store, self.edge
        last_seq = core.last_seq
        parent = os.getpid()
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError as e:  # no memory or process slots for a child: trading goes on
            os.close(read_fd)
            os.close(write_fd)
            self.errors += 1
            log.error("snapshot at seq %d not taken: cannot fork: %s", last_seq, e)
            return
        if pid == 0:
            os.close(read_fd)
            _snapshot_child(parent, write_fd, lambda: store.write(
                capture(core, end_of_day, edge() if edge is not None else None)))
        os.close(write_fd)
        pause = time.perf_counter() - started
        self._taken(last_seq, pause)
        self.children.add(pid)
        reaper = threading.Thread(target=self._reap, args=(pid, read_fd, last_seq, end_of_day, pause, started, size),
                                  name=f"snapshot-{pid}", daemon=True)
        self._reapers = [t for t in self._reapers if t.is_alive()]
        self._reapers.append(reaper)
        reaper.start()

    def _reap(self, pid: int, read_fd: int, last_seq: int, end_of_day: bool, pause: float, started: float,
              size: int) -> None:
        """Wait for a snapshot child (on a thread of its own), then retire."""
        with os.fdopen(read_fd, "rb") as pipe:
            said = pipe.read()  # returns when the child has exited (or closed the pipe)
        _, status, usage = os.wait4(pid, 0)
        cpu_s = usage.ru_utime + usage.ru_stime
        self.children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code == 0 and said.startswith(b"ok "):
            self._written(said[3:].decode(errors="replace"), last_seq, end_of_day, pause, started, size, cpu_s)
        else:
            why = said.decode(errors="replace") or f"the snapshot process ended with status {code}"
            self._failed(last_seq, why)

    def _written(self, path: str, last_seq: int, end_of_day: bool, pause: float, started: float, size: int,
                 cost_s: float | None = None) -> None:
        """Retire after a durable snapshot; ``cost_s`` (default: the time since
        ``started``) and ``size``, the state's when it was taken, space the next
        periodic one."""
        try:
            with self._retire_lock:
                keep = self.keep_seq_from() if self.keep_seq_from is not None else None
                retired = self.store.retire(self.journal_dir, keep_seq_from=keep)
                self.written += 1
                self.last_written = max(self.last_written, last_seq)
                self.written_at = time.monotonic()
                took = time.perf_counter() - started
                self.write_s.append(took)
                cost = took if cost_s is None else cost_s
                now = time.monotonic()
                self._next_at = max(self._next_at, now + self.gap_ratio * cost)
                self._cost, self._cost_size, self._durable_at, self._estimated = cost, size, now, False
            log.info("snapshot %s written (seq %d%s) %.3f s after a %.3f s pause; "
                     "retired %d snapshots and %d journal segments",
                     Path(path).name, last_seq, ", end of day" if end_of_day else "", took,
                     pause, len(retired.snapshots), len(retired.segments))
        except Exception as e:
            self._failed(last_seq, f"written, but retiring failed: {e}", pending=False)
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def _failed(self, last_seq: int, why: str, pending: bool = True) -> None:
        self.errors += 1
        log.error("snapshot at seq %d not written: %s", last_seq, why)
        if pending:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Wait until every snapshot taken is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout_s)

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish what was taken (write what is queued, wait for snapshot processes),
        then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        deadline = time.monotonic() + timeout_s
        for t in [*self._reapers, *([self._thread] if self._thread is not None else [])]:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.follower is not None:
            self.wait(max(0.0, deadline - time.monotonic()))
            self.follower.close(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                cap, pause, started, size = self._queue.pop(0)
            try:
                path = self.store.write(cap)
            except Exception as e:  # a full disk must not stop trading: the journal still has it all
                self._failed(cap.last_seq, str(e))
                continue
            self._written(str(path), cap.last_seq, cap.end_of_day, pause, started, size)


def resident_bytes() -> int:
    """The process's resident memory in bytes (Linux: ``/proc/self/statm``); 0 where
    it cannot be read, which leaves a snapshot's cost unscaled."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


FOLLOWER_TELL_S = 0.05  # how often the follower hears how far the journal is durable, at most
FOLLOWER_RESTART_S = 10.0  # at most one new follower in this time, after one ended
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _snapshot_child(parent: int, write_fd: int, work: Callable[[], Path]) -> typing.NoReturn:
    """The body of a snapshot process: ``work()`` writes the snapshot; its path (or
    what went wrong) goes to the parent through ``write_fd``. Never returns.

    First the child arranges to be killed when its parent dies (a restarted exchange
    must not race an orphan writing snapshots), and closes the sockets it inherited:
    a connection the parent closes, and its listening address, must not stay open
    in here. The collector is off: the child only reads the parent's objects, and
    no finalizer of theirs may run here."""
    code = 1
    try:
        gc.disable()
        os.nice(SNAPSHOT_NICE)
        die_with(parent)
        _close_sockets(keep=write_fd)
        close_inherited()  # the data folder's lock stays the exchange's alone
        path = work()
        write_all(write_fd, b"ok " + str(path).encode())
        code = 0
    except BaseException as e:
        try:
            write_all(write_fd, f"{type(e).__name__}: {e}".encode(errors="replace"))
        except OSError:
            pass
    finally:
        os._exit(code)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
SNAPSHOT_NICE = 10  # a snapshot process yields the CPU to the exchange and its members


def _find_prctl() -> Any:
    """libc's prctl (Linux), or None. Looked up in the parent, once: a child of a
    threaded process must not take the dynamic loader's lock, which another thread may
    have held at the fork."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def die_with(parent: int) -> None:
    """Have the kernel kill this process when the thread that forked it ends (Linux);
    elsewhere nothing. Exits at once if the parent is already gone."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _close_sockets(keep: int) -> None:
    """Close every socket this process holds (from /proc/self/fd; nothing where that
    does not exist)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd == keep:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass  # the directory's own descriptor, already closed

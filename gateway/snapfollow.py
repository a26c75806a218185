"""Snapshots written by a process that follows the journal, not by a fork of the exchange.

A forked snapshot pauses trading for the fork (30-70 ms with a million resting orders)
and then copies, page by page, most of the exchange's heap while it writes, because
CPython writes an object's reference count even to read it: seconds of a core, half
of it in the kernel, taken from the exchange on a busy day. The follower instead keeps
a copy of the core of its own, built the way recovery builds one, and moves it along
the journal as the exchange makes it durable; a snapshot is its own state, written by
it, and costs the exchange one line down a pipe.

The exchange's end (``SnapshotFollower``, driven by ``gateway.recovery.Snapshotter``)
spawns ``python -m gateway.snapfollow DATA_DIR`` and talks to it in lines:

- exchange to follower, on its stdin: first a ``Hello`` (JSON: the configuration the
  core is made from, the members and staff users whose streams the snapshots carry, the
  history kept per stream, the exchange's pid); then ``at SEQ``, every command up to
  ``SEQ`` is durable in the journal (sent at most every ``FOLLOWER_TELL_S`` while trading), and
  ``snap SEQ`` or ``snap SEQ eod``, write a snapshot at ``SEQ`` (the core was there when
  it was asked: everything up to it is durable, since the exchange applies only what the
  journal holds). End of input: the exchange stopped; the follower exits.
- follower to exchange, on its stdout: ``ready SEQ`` once it has restored the newest
  snapshot and followed the journal to ``SEQ``; ``ok SEQ CPU_S PATH`` when a snapshot is
  durable (``CPU_S``: the CPU time it took to capture and write, which spaces the next
  one); ``failed SEQ WHY``.

The follower restores the newest snapshot that verifies (with its member streams),
then reads the journal with ``engine.journal.JournalTail`` up to what the exchange says
is durable, applying each record through the same core and the same routing of events
into the members' streams as a replay at start (``Router.rebuild``), and dropping the
postings (the exchange's settler has them). It runs at a lower priority (nice 10),
ignores the terminal's interrupt (the exchange stops it by closing its stdin, after the
clean stop's snapshot), and dies with the exchange. The exchange retires old snapshots
and journal segments itself once a snapshot is reported durable, as with a fork.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from engine.snapshot import write_all
from gateway.config import Config

log = logging.getLogger("etx.snapfollow")


class Hello(msgspec.Struct, kw_only=True):
    config: Config  # without its users: the core and the streams need none of their secrets
    members: list[str]
    staff: list[str]
    history: int
    parent: int


class SnapshotFollower:
    """The exchange's end of the follower process (see the module docstring).

    ``start(seq, said)`` spawns it; ``said(kind, seq, cpu_s, text)`` is called on a
    thread of this object's for each ``ready``, ``ok`` and ``failed`` line and, with kind
    ``ended``, once when the process has exited (``text``: why). ``tell`` and ``request``
    are for the core's thread and never block: a request that cannot be written at once
    returns False (the caller takes that snapshot another way)."""

    def __init__(self, data_dir: Path | str, hello: Hello, *, python: str = sys.executable) -> None:
        self.data_dir = Path(data_dir)
        self.hello = hello
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._in = -1
        self._told = 0
        self._reader: threading.Thread | None = None
        self.starts = 0
        self.ready_seq = -1  # the seq the running follower was ready at (-1: not yet)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._in >= 0

    def start(self, seq: int, said: Callable[[str, int, float, str], None]) -> None:
        """Spawn the follower; every command up to ``seq`` is durable. One started
        before is stopped first (what was asked of it is the caller's to fail)."""
        self.close(timeout_s=1.0)
        proc = subprocess.Popen(
            [self.python, "-m", "gateway.snapfollow", str(self.data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            start_new_session=True)  # a terminal's Ctrl-C is for the exchange, which stops it after its last snapshot
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.starts += 1
        self._in = proc.stdin.fileno()
        self._told = 0
        self.ready_seq = -1
        hello = msgspec.json.encode(self.hello) + b"\n" + f"at {seq}\n".encode()
        try:
            write_all(self._in, hello)  # before the descriptor is made non-blocking: it must all go
        except OSError:
            pass  # the follower is gone already: its reader reports how it ended
        os.set_blocking(self._in, False)
        self._told = seq
        self._reader = threading.Thread(target=self._read, args=(proc, said), name=f"snapfollow-{proc.pid}",
                                        daemon=True)
        self._reader.start()

    def tell(self, seq: int) -> None:
        """Every command up to ``seq`` is durable (dropped when the pipe is full: a later
        one says as much)."""
        if seq > self._told and self._send(f"at {seq}\n".encode()):
            self._told = seq

    def request(self, seq: int, end_of_day: bool) -> bool:
        """Ask for a snapshot at ``seq``; False if the follower cannot be asked now."""
        if not self._send(f"snap {seq}{' eod' if end_of_day else ''}\n".encode()):
            return False
        self._told = max(self._told, seq)
        return True

    def _send(self, line: bytes) -> bool:
        if self._in < 0:
            return False
        try:
            return os.write(self._in, line) == len(line)  # a pipe takes a short line whole or not at all
        except BlockingIOError:
            return False
        except OSError:  # the follower has gone: its reader says how
            return False

    def _read(self, proc: subprocess.Popen[bytes], said: Callable[[str, int, float, str], None]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            kind, _, rest = line.partition(" ")
            try:
                if kind == "ok":
                    seq, cpu, path = rest.split(" ", 2)
                    said("ok", int(seq), float(cpu), path)
                elif kind in ("failed", "ready"):
                    seq, _, why = rest.partition(" ")
                    if kind == "ready" and proc is self.proc:
                        self.ready_seq = int(seq)
                    said(kind, int(seq), 0.0, why)
                else:
                    log.error("snapshot follower %d said %r", proc.pid, line)
            except ValueError:
                log.error("snapshot follower %d said %r", proc.pid, line)
        code = proc.wait()
        if proc is self.proc:  # not one replaced by a new follower (its snapshots were failed then)
            said("ended", 0, 0.0, f"the snapshot follower {proc.pid} ended with status {code}")

    def close(self, timeout_s: float = 60.0) -> None:
        """Close the follower's input (it exits) and wait for it; kill it after the
        timeout."""
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        self._in = -1
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout_s)


# --- the follower process -------------------------------------------------------------


class _Follower:
    """The core, the member streams and the journal's tail, in the follower process."""

    def __init__(self, data_dir: Path, hello: Hello, durable: int) -> None:
        from engine.journal import JournalTail, command_decoder
        from engine.snapshot import SnapshotStore
        from gateway.recovery import (
            JOURNAL_DIR,
            SNAPSHOT_DIR,
            RecoveryReport,
            core_factory,
            journal_command_types,
            open_orders,
            restore_newest,
        )
        from gateway.streams import GatewayState, Router

        self.hello = hello
        self.store = SnapshotStore(data_dir / SNAPSHOT_DIR, writer=False)
        report = RecoveryReport()
        core, snap_seq, edge = restore_newest(self.store, core_factory(hello.config), GatewayState, durable, report)
        self.core = core
        self.router = Router(core.engine, hello.members, hello.staff)
        if edge is not None:
            self.router.restore(edge, open_orders(core))
        self.tail = JournalTail(data_dir / JOURNAL_DIR, command_decoder(journal_command_types()), snap_seq)
        for skipped in report.skipped:
            print(f"etx snapshot follower: skipped {skipped.path}: {skipped.reason}", file=sys.stderr, flush=True)

    def follow(self, upto: int) -> None:
        core, rebuild, ledger = self.core, self.router.rebuild, self.core.ledger
        for cmds in self.tail.read(upto):
            core.apply_batch(cmds)
            rebuild(cmds, core.out)
            core.out.clear()
            ledger.take_postings()  # the exchange's settler has them

    def snapshot(self, seq: int, end_of_day: bool) -> str:
        """Follow to ``seq`` and write the snapshot there: 'ok ...' or 'failed ...'."""
        from engine.snapshot import capture

        try:
            self.follow(seq)
            if self.core.last_seq != seq:
                return f"failed {seq} the follower reached seq {self.core.last_seq} in the journal, not {seq}"
            started = time.process_time()  # the snapshot's own cost, not the following's
            path = self.store.write(capture(self.core, end_of_day, self.router.capture(self.hello.history)))
        except Exception as e:
            return f"failed {seq} {type(e).__name__}: {e}"
        return f"ok {seq} {time.process_time() - started:.6f} {path}"


def main(argv: list[str] | None = None) -> int:
    from gateway.recovery import SNAPSHOT_NICE, die_with

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gateway.snapfollow DATA_DIR (started by etx serve, which talks to it on stdin)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the exchange stops it, after the clean stop's snapshot
    lines = _Lines(sys.stdin.fileno())
    first = lines.ready()
    if first is None:
        return 0
    hello = msgspec.json.decode(first[0], type=Hello)
    die_with(hello.parent)
    os.nice(SNAPSHOT_NICE)
    got = first[1:] or lines.ready()  # the journal's durable end comes with the hello
    if got is None:
        return 0
    durable = _parse(got[0])[1]
    follower = _Follower(Path(args[0]), hello, durable)
    follower.follow(durable)
    gc.freeze()  # what was restored stays out of the collector's passes
    _say(f"ready {follower.core.last_seq}")
    got = got[1:]  # what came meanwhile
    while True:
        for line in got:  # in order: a snapshot is asked before the exchange goes on past it
            snap, seq, end_of_day = _parse(line)
            if snap:
                _say(follower.snapshot(seq, end_of_day))
            durable = max(durable, seq)
        follower.follow(durable)
        got = lines.ready()
        if got is None:
            return 0  # the exchange closed our input: it stopped


def _parse(line: bytes) -> tuple[bool, int, bool]:
    """One line from the exchange: (a snapshot asked, the seq, at an end of day)."""
    words = line.split()
    if len(words) == 2 and words[0] == b"at":
        return False, int(words[1]), False
    if len(words) in (2, 3) and words[0] == b"snap" and (len(words) == 2 or words[2] == b"eod"):
        return True, int(words[1]), len(words) == 3
    raise ValueError(f"the exchange said {line!r}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Lines:
    """The lines of a descriptor, as they come."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def ready(self) -> list[bytes] | None:
        """Every whole line that has come, waiting for one if none has; None at the end
        of input."""
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return done


if __name__ == "__main__":
    sys.exit(main())

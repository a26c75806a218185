"""The settler: takes postings from the ledger's outbox and writes them to the store in
batches, in a background thread, so the core never waits for a database.

Contract:
- The core's thread calls ``pump(ledger, through_seq)`` after applying commands up to
  ``through_seq``: the outbox then holds every posting of those commands. ``pump``
  hands the outbox over and returns at once. When more than ``pending_max`` postings
  are waiting it takes nothing and returns False (the postings stay in the outbox):
  the caller slows its intake and pumps again later. Nothing is ever dropped.
- The writer takes up to ``batch_max`` postings per database transaction, together
  with the highest sequence number all of whose postings are in that batch or before
  it (a chunk larger than a batch is split; its earlier parts record the sequence
  number before the first posting left behind).
- ``durable_seq`` is the store's last settled sequence number as far as this settler
  knows. ``flush()`` waits until everything handed over is durable.
- A store that cannot be written *now* (``StoreUnavailable``: a connection lost, a
  server down, a disk error) is retried, the same batch, with waits doubling from
  RETRY_FIRST_S to RETRY_MAX_S, for as long as it takes; each failed try and the
  recovery are told to ``on_trouble(text)`` ("" when the store works again).
  Meanwhile postings queue up to ``pending_max`` and then wait in the ledger's outbox:
  trading goes on, settlement catches up. A store that *refuses* a batch
  (``StoreError``: a posting id stored with another content, a constraint) stops the
  writer: ``flush``, ``pump`` and ``close`` raise ``SettlerError`` with it (so does a
  store still unavailable when ``close`` gives up waiting).
- ``resume_after``: after a restart the core replays the journal from the beginning,
  and the postings of commands up to the store's last settled sequence number are
  already stored: they are dropped here (genesis postings, ``seq`` 0, always pass;
  the store recognises them). A batch cut off by a crash is written again whole.
- Where the writing runs: a store named by its URL (a SQLite path or a PostgreSQL
  URL) is written by a child process (``python -m settlement.settler``), so that
  preparing rows and binding them to the database never takes the core's interpreter
  lock: this process only encodes each handed-over chunk (one msgspec call) and
  pipes it over, and the child reports each durable batch back. The child dies with
  this process (a Linux parent-death signal, else at the end of its input), so a
  killed exchange never leaves a writer behind. A store given as a factory is written
  by a thread here. Either way the contract above is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import msgspec

from settlement.ledger import Ledger
from settlement.messages import AnyPosting
from settlement.store import RegistryStore, StoreUnavailable, open_store

BATCH_MAX = 10_000
PENDING_MAX = 1_000_000
RETRY_FIRST_S = 0.5  # the first wait before writing again to an unavailable store ...
RETRY_MAX_S = 30.0  # ... doubling up to this
START_TIMEOUT_S = 60.0  # the child must open the store (and migrate it) within this


class _Chunk(msgspec.Struct, array_like=True, gc=False, tag=1):
    """Parent to child: postings that complete every command up to ``through_seq``."""

    through_seq: int
    postings: list[AnyPosting]


class _Progress(msgspec.Struct, array_like=True, gc=False, tag=2):
    """Child to parent: a batch of ``postings`` is durable, through ``durable_seq``."""

    durable_seq: int
    postings: int


class _Failed(msgspec.Struct, array_like=True, gc=False, tag=3):
    """Child to parent: the writer stopped on this error; nothing after the last
    durable batch is stored."""

    error: str


class _Trouble(msgspec.Struct, array_like=True, gc=False, tag=4):
    """Child to parent: the store is unavailable (``error``), the writer tries again;
    "" once it works again."""

    error: str


_HEADER = struct.Struct(">I")


class SettlerError(Exception):
    """The writer stopped on an error; nothing after the last durable batch is stored."""


class Settler:
    def __init__(
        self,
        store: str | Callable[[], RegistryStore],
        *,
        batch_max: int = BATCH_MAX,
        pending_max: int = PENDING_MAX,
        resume_after: int = 0,
        process: bool | None = None,
        on_progress: Callable[[int, int, BaseException | None], None] | None = None,
        on_trouble: Callable[[str], None] | None = None,
    ) -> None:
        """``process``: write from a child process (the default for a store named by
        its URL; a factory is always written by a thread). ``on_progress(durable_seq,
        postings, error)`` is called from the writing thread after each durable batch
        (error None) and once when the writer stops on an error."""
        if batch_max < 1 or pending_max < batch_max:
            raise ValueError(f"need 1 <= batch_max <= pending_max, got {batch_max}, {pending_max}")
        if process and not isinstance(store, str):
            raise ValueError("a settler process needs the store's URL, not a factory")
        self.url = store if isinstance(store, str) else ""
        self.process = isinstance(store, str) if process is None else process
        self._open: Callable[[], RegistryStore] = (lambda: open_store(store)) if isinstance(store, str) else store
        self.on_progress = on_progress
        self.on_trouble = on_trouble
        self.trouble = ""  # why the store cannot be written now ("" when it can)
        self.batch_max = batch_max
        self.pending_max = pending_max
        self.resume_after = resume_after
        self.durable_seq = resume_after
        self.batches = 0  # transactions written
        self.written = 0  # postings written
        self.error: BaseException | None = None
        self._chunks: deque[tuple[Sequence[AnyPosting], int]] = deque()
        self._pending = 0  # postings handed over and not yet durable
        self._taken_seq = resume_after  # complete through this seq, as far as chunks were taken
        self._latest = resume_after  # the last through_seq handed over
        self._submitted = resume_after  # the last through_seq queued for writing
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send if self.process else self._run, name="settler",
                                         daemon=True)
        self._child: subprocess.Popen[bytes] | None = None

    def start(self) -> Settler:
        self._thread.start()
        return self

    @property
    def pending(self) -> int:
        return self._pending

    # --- the core's side --------------------------------------------------------------

    def pump(self, ledger: Ledger, through_seq: int) -> bool:
        """Hand the ledger's outbox over; False when the queue is full (retry later)."""
        if self.error is not None:
            raise SettlerError(f"settler stopped: {self.error!r}") from self.error
        if not ledger.postings:
            self._latest = max(self._latest, through_seq)
            return True
        if self._pending >= self.pending_max:
            return False
        return self.submit(ledger.take_postings(), through_seq)

    def submit(self, postings: Sequence[AnyPosting], through_seq: int) -> bool:
        """Queue postings that complete every command up to ``through_seq``."""
        if postings and postings[0].seq <= self.resume_after:
            after = self.resume_after
            postings = [p for p in postings if p.seq == 0 or p.seq > after]
        with self._cond:
            if self._pending >= self.pending_max:
                return False
            self._latest = max(self._latest, through_seq)
            if postings or through_seq > self._submitted:
                self._chunks.append((postings, through_seq))
                self._submitted = max(self._submitted, through_seq)
                self._pending += len(postings)
                self._cond.notify_all()
        return True

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait until everything handed over is durable; returns ``durable_seq``."""
        with self._cond:
            if self._latest > self._submitted:
                self._chunks.append(((), self._latest))
                self._submitted = self._latest
                self._cond.notify_all()
            deadline = time.monotonic() + timeout_s
            while (self._chunks or self._pending or self.durable_seq < self._submitted) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SettlerError(f"flush timed out with {self._pending} postings pending")
                self._cond.wait(left)
            if self.error is not None:
                raise SettlerError(f"settler stopped: {self.error!r}") from self.error
            return self.durable_seq

    def close(self, timeout_s: float = 60.0) -> int:
        """Flush, then stop the writer."""
        try:
            if self._thread.is_alive():
                self.flush(timeout_s)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            if self._thread.is_alive():
                self._thread.join(timeout_s)
            child = self._child
            if child is not None and child.poll() is None:
                try:
                    child.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        if self.error is not None:
            raise SettlerError(f"settler stopped: {self.error!r}") from self.error
        return self.durable_seq

    # --- the writer's side ------------------------------------------------------------

    def _take(self) -> tuple[list[AnyPosting], int]:
        """The next batch and the sequence number it completes (under the lock)."""
        batch: list[AnyPosting] = []
        room = self.batch_max
        last = self._taken_seq
        chunks = self._chunks
        while chunks and room > 0:
            postings, through = chunks[0]
            if len(postings) <= room:
                chunks.popleft()
                batch.extend(postings)
                room -= len(postings)
                last = max(last, through)
            else:
                rest = postings[room:]
                batch.extend(postings[:room])
                chunks[0] = (rest, through)
                last = max(last, rest[0].seq - 1)
                room = 0
        self._taken_seq = last
        return batch, last

    def _run(self) -> None:
        store: RegistryStore | None = None
        try:
            store = self._retrying(None, None)
            while True:
                with self._cond:
                    while not self._chunks and not self._closing:
                        self._cond.wait()
                    if not self._chunks:
                        return
                    batch, last = self._take()
                store = self._retrying(store, (batch, last))
                self._durable(last, len(batch))
        except BaseException as exc:  # noqa: BLE001 - reported through flush/pump, never lost
            self._failed(exc)
        finally:
            if store is not None:
                store.close()

    def _retrying(self, store: RegistryStore | None,
                  batch: tuple[list[AnyPosting], int] | None) -> RegistryStore:
        """Open the store (when ``store`` is None) and write the batch, trying again
        while the store is unavailable (see the module docstring); the open store."""
        wait = RETRY_FIRST_S
        while True:
            try:
                if store is None:
                    store = self._open()
                    store.migrate()
                if batch is not None:
                    store.write_batch(*batch)
                if self.trouble:
                    self._trouble("")
                return store
            except StoreUnavailable as exc:
                self._trouble(str(exc) or type(exc).__name__)
                if store is not None:
                    with contextlib.suppress(Exception):
                        store.close()
                    store = None
                with self._cond:
                    if self._closing or self._cond.wait_for(lambda: self._closing, wait):
                        raise  # closing and still unavailable: what is not durable stays in the journal
                wait = min(2 * wait, RETRY_MAX_S)

    def _trouble(self, text: str) -> None:
        self.trouble = text
        if self.on_trouble is not None:
            self.on_trouble(text)

    def _durable(self, last: int, postings: int) -> None:
        with self._cond:
            self._pending -= postings
            self.durable_seq = max(self.durable_seq, last)
            self.batches += 1
            self.written += postings
            self._cond.notify_all()
        if self.on_progress is not None:
            self.on_progress(self.durable_seq, postings, None)

    def _failed(self, exc: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = exc
            self._cond.notify_all()
        if self.on_progress is not None:
            self.on_progress(self.durable_seq, 0, exc)

    # --- the child process (the default for a store named by its URL) ---------------

    def _send(self) -> None:
        """Start the child and pipe every chunk to it, in order (a thread of its own:
        the child's parent-death signal is tied to the thread that started it, and this
        one lives as long as the settler)."""
        try:
            child = self._spawn()
        except BaseException as exc:  # noqa: BLE001 - reported through flush/pump
            self._failed(exc)
            return
        reader = threading.Thread(target=self._receive, args=(child,), name="settler-progress", daemon=True)
        reader.start()
        assert child.stdin is not None
        encode = msgspec.msgpack.Encoder().encode
        try:
            while True:
                with self._cond:
                    while not self._chunks and not self._closing and self.error is None:
                        self._cond.wait()
                    if self.error is not None or not self._chunks:
                        return
                    chunks = list(self._chunks)
                    self._chunks.clear()
                # Encoded and written outside the lock; the pipe write releases the
                # interpreter lock while the child is busy.
                for postings, through in chunks:
                    body = encode(_Chunk(through, list(postings)))
                    child.stdin.write(_HEADER.pack(len(body)))
                    child.stdin.write(body)
                child.stdin.flush()
        except BaseException as exc:  # noqa: BLE001 - a broken pipe: the child's own error follows
            self._failed(SettlerError(f"settler process unreachable: {exc!r}"))
        finally:
            try:
                child.stdin.close()  # end of input: the child writes what it has and exits
            except OSError:
                pass
            reader.join()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The child imports this module as the parent does: same interpreter, same path.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        args = [sys.executable, "-m", "settlement.settler", self.url, "--batch-max", str(self.batch_max),
                "--resume-after", str(self.resume_after), "--parent", str(os.getpid())]
        # A session of its own: a Ctrl-C at the terminal stops the exchange gracefully,
        # and the exchange, not the signal, tells the child when its input ends.
        child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
        self._child = child
        return child

    def _receive(self, child: subprocess.Popen[bytes]) -> None:
        """Apply the child's reports until its output ends."""
        assert child.stdout is not None
        decode = msgspec.msgpack.Decoder(_Progress | _Failed | _Trouble).decode
        try:
            for body in _frames(child.stdout):
                msg = decode(body)
                if isinstance(msg, _Progress):
                    self._durable(msg.durable_seq, msg.postings)
                elif isinstance(msg, _Trouble):
                    self._trouble(msg.error)
                else:
                    self._failed(SettlerError(msg.error))
                    return
        except BaseException as exc:  # noqa: BLE001 - reported through flush/pump
            self._failed(SettlerError(f"settler process output unreadable: {exc!r}"))
            return
        code = child.wait()
        with self._cond:
            unfinished = bool(self._chunks or self._pending or self.durable_seq < self._submitted)
        if code or unfinished:
            self._failed(SettlerError(f"settler process exited with code {code}"
                                      + (" before writing everything" if unfinished else "")))


def _frames(stream: IO[bytes]) -> Iterator[bytes]:
    """The length-prefixed frames of a pipe, until it ends."""
    while True:
        head = stream.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(head)
        body = stream.read(size)
        if len(body) < size:
            return
        yield body


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the thread that started it ends (the parent
    dying); elsewhere the end of the input stops it."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def child_main(argv: list[str] | None = None) -> int:
    """The settler process: chunks in on standard input, a thread settler writing them,
    each durable batch (or the error that stopped it) reported on standard output."""
    parser = argparse.ArgumentParser(prog="python -m settlement.settler")
    parser.add_argument("store")
    parser.add_argument("--batch-max", type=int, default=BATCH_MAX)
    parser.add_argument("--resume-after", type=int, default=0)
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)
    if args.parent:
        _die_with_parent(args.parent)
    # Stopped by the end of its input (a graceful stop writes everything first) or by
    # its parent's death, never by a stop signal meant for the whole service.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the report pipe
    lock = threading.Lock()
    encode = msgspec.msgpack.Encoder().encode

    def send(msg: Any) -> None:
        body = encode(msg)
        with lock:
            out.write(_HEADER.pack(len(body)) + body)
            out.flush()

    def report(durable_seq: int, postings: int, error: BaseException | None) -> None:
        send(_Progress(durable_seq, postings) if error is None else _Failed(f"{error!r}"))

    # The parent bounds what is pending; here the queue only ever holds what it sent.
    settler = Settler(args.store, batch_max=args.batch_max, pending_max=sys.maxsize, resume_after=args.resume_after,
                      process=False, on_progress=report, on_trouble=lambda text: send(_Trouble(text))).start()
    decode = msgspec.msgpack.Decoder(_Chunk).decode
    for body in _frames(sys.stdin.buffer):
        chunk = decode(body)
        settler.submit(chunk.postings, chunk.through_seq)
    try:
        settler.close()
    except SettlerError:
        return 1  # already reported
    return 0


if __name__ == "__main__":
    sys.exit(child_main())

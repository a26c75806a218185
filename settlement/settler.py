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
  knows. ``flush()`` waits until everything handed over is durable. A failed write
  stops the writer: ``flush``, ``pump`` and ``close`` raise ``SettlerError`` with it.
- ``resume_after``: after a restart the core replays the journal from the beginning,
  and the postings of commands up to the store's last settled sequence number are
  already stored: they are dropped here (genesis postings, ``seq`` 0, always pass;
  the store recognises them). A batch cut off by a crash is written again whole.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from settlement.ledger import Ledger
from settlement.messages import AnyPosting
from settlement.store import RegistryStore, open_store

BATCH_MAX = 10_000
PENDING_MAX = 1_000_000


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
    ) -> None:
        if batch_max < 1 or pending_max < batch_max:
            raise ValueError(f"need 1 <= batch_max <= pending_max, got {batch_max}, {pending_max}")
        self._open: Callable[[], RegistryStore] = (lambda: open_store(store)) if isinstance(store, str) else store
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
        self._thread = threading.Thread(target=self._run, name="settler", daemon=True)

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
            store = self._open()
            store.migrate()
            while True:
                with self._cond:
                    while not self._chunks and not self._closing:
                        self._cond.wait()
                    if not self._chunks:
                        return
                    batch, last = self._take()
                store.write_batch(batch, last)
                with self._cond:
                    self._pending -= len(batch)
                    self.durable_seq = max(self.durable_seq, last)
                    self.batches += 1
                    self.written += len(batch)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported through flush/pump, never lost
            with self._cond:
                self.error = exc
                self._cond.notify_all()
        finally:
            if store is not None:
                store.close()

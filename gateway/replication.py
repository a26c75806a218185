"""The replicated journal on NATS JetStream, the hot standby and failover (issue 15).

The stream is the history. A primary publishes each group commit (the same msgpack
record its local journal writes) to ``{stream}.batch`` **before** it writes the record
locally, with ``Nats-Expected-Last-Subject-Sequence`` set to the stream sequence of its
own previous batch: only one writer can ever append, and a former primary that comes
back is refused by the stream itself (fenced) and stops. A command is acknowledged to
a member only once both the stream and the local journal have it (the group
commit's ``done``). A publish that is not confirmed is retried with the same message id
(JetStream drops the duplicate) until ``confirm_s``; after that the primary stops
rather than guess: whatever the stream has, the next primary applies.

A standby (``etx serve --standby``) recovers from its own journal and snapshots, then
follows the stream from the batch after its journal's end: each batch is written to its
own journal and applied to its own core exactly as a replay at start applies it (the
members' streams, settlement into its own registry store, snapshots). About every
``check_s`` the primary marks a batch for a state-hash check (header ``Etx-Check``) and
publishes its state hash at that batch's end once it has applied it
(``{stream}.hash``); the standby computes its own hash right after applying the marked
batch and compares when the primary's arrives: a difference is logged and raised as an
operator alert.

Leadership is a lease in the key-value bucket ``{stream}-lease`` (key ``primary``):
the primary renews it every ``lease_s / 3`` with a compare-and-set on the entry's
revision; a standby that sees it unrenewed past its expiry takes it with the same
compare-and-set, finishes applying what the stream holds, and starts its gateway. A
primary whose renewal fails, or whose publish is fenced, stops taking orders.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from engine.journal import JournalUnavailable

log = logging.getLogger("etx.replication")
T = TypeVar("T")

POSITION_EVERY_S = 0.5  # how often a standby writes its position for the operators
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-last-sequence condition


class Fenced(JournalUnavailable):
    """Another primary appends to the stream (or holds the lease): this one must stop."""


class Lease(msgspec.Struct):
    node: str
    until_ns: int  # the holder's promise: renewed before this instant


class Position(msgspec.Struct):
    """A standby's position, written to the lease bucket (key ``standby.<node>``)."""

    seq: int  # the last command applied
    ts_ns: int  # that command's timestamp (the primary's clock)
    at_ns: int  # when this was written


class Link:
    """One NATS connection with its own event loop on a thread, so that the journal
    thread (synchronous) and the service's loop can both use it."""

    def __init__(self, servers: Sequence[str], stream: str, replicas: int = 1, connect_s: float = 5.0) -> None:
        self.servers = list(servers)
        self.stream = stream
        self.replicas = replicas
        self.batch_subject = f"{stream}.batch"
        self.hash_subject = f"{stream}.hash"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.call(self._connect(connect_s), connect_s + 5)

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def call(self, coro: Awaitable[T], timeout: float) -> T:
        """Run on the link's loop and wait (from any thread but the link's)."""
        return self.submit(coro).result(timeout)

    async def run(self, coro: Awaitable[T]) -> T:
        """Run on the link's loop, awaited from another loop."""
        return await asyncio.wrap_future(self.submit(coro))

    async def _connect(self, connect_s: float) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        self.nc = await nats.connect(servers=self.servers, connect_timeout=connect_s, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2)
        self.js = self.nc.jetstream(timeout=connect_s)
        config = StreamConfig(name=self.stream, subjects=[f"{self.stream}.>"], num_replicas=self.replicas,
                              storage=StorageType.FILE, duplicate_window=120.0)
        # A cluster just started (or electing its meta leader) refuses to place a
        # replicated stream for a moment: try again until connect_s has passed.
        deadline = time.monotonic() + connect_s
        while True:
            try:
                try:
                    await self.js.stream_info(self.stream)
                except Exception:
                    await self.js.add_stream(config)
                self.kv = await self.js.create_key_value(bucket=f"{self.stream}-lease", history=1,
                                                         replicas=self.replicas)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def close(self) -> None:
        if self.nc is not None:
            try:
                self.call(self.nc.close(), 5)
            except Exception:  # closing a connection already gone
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # --- the stream ---------------------------------------------------------------------

    async def last_batch(self) -> tuple[int, int]:
        """(stream sequence, last command seq) of the newest batch; (0, 0) when none."""
        from nats.js.errors import NotFoundError

        try:
            msg = await self.js.get_last_msg(self.stream, self.batch_subject)
        except NotFoundError:
            return 0, 0
        headers = msg.headers or {}
        return msg.seq, int(headers["Etx-First"]) + int(headers["Etx-Count"]) - 1

    async def publish_batch(self, body: bytes, first: int, count: int, expect: int, msg_id: str,
                            confirm_s: float, check: bool = False) -> int:
        """Append one batch after the batch at stream sequence ``expect``; its stream
        sequence. Fenced when another writer appended; JournalUnavailable when not
        confirmed within ``confirm_s`` (retried meanwhile with the same message id)."""
        from nats.js.errors import APIError

        headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(expect),
                   "Etx-First": str(first), "Etx-Count": str(count)}
        if check:
            headers["Etx-Check"] = "1"
        deadline = time.monotonic() + confirm_s
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                ack = await self.js.publish(self.batch_subject, body, stream=self.stream, headers=headers,
                                            timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return int(ack.seq)
            except APIError as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    raise Fenced(f"another primary appends to the stream {self.stream}: this exchange stops "
                                 f"taking orders ({e.description})") from None
                last_error = e
            except Exception as e:  # a timeout, no quorum, a reconnect: try again
                last_error = e
            await asyncio.sleep(0.05)
        raise JournalUnavailable(f"the replicated journal (JetStream stream {self.stream}) did not confirm a batch "
                                 f"within {confirm_s:.0f} s: {last_error!r}")

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        await self.js.publish(subject, body, stream=self.stream, headers=headers)

    async def cluster(self) -> dict[str, Any]:
        """The cluster as the operators see it (``etx ops cluster``)."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        info = await self.js.stream_info(self.stream)
        batch_seq, last_cmd = await self.last_batch()
        last_ts = 0
        if batch_seq:
            msg = await self.js.get_msg(self.stream, batch_seq)
            cmds = msgspec.msgpack.decode(msg.data)
            last_ts = int(cmds[-1][-1]) if cmds and isinstance(cmds[-1], list) else 0
        lease, revision = await self.read_lease()
        # The standbys' keys from the lease bucket's stream state (one request), not the
        # KV client's keys(): its listing can end early while other keys are written
        # (nats-py issue 842), and the lease and the positions are written all the time.
        bucket = f"{self.stream}-lease"
        keys = f"$KV.{bucket}."  # a key's subject in the bucket's stream
        held = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"{keys}standby.>")
        standbys: dict[str, Position] = {}
        for subject in sorted(held.state.subjects or {}):
            key = subject.removeprefix(keys)
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue
            if entry.value:
                standbys[key.removeprefix("standby.")] = msgspec.json.decode(entry.value, type=Position)
        c = info.cluster
        return {"stream": self.stream, "replicas": info.config.num_replicas, "messages": info.state.messages,
                "leader": getattr(c, "leader", None) or "-",
                "peers": [(p.name, bool(p.current), float(p.active or 0) / 1e9, int(p.lag or 0))
                          for p in (getattr(c, "replicas", None) or [])],
                "last_batch": batch_seq, "last_seq": last_cmd, "last_ts": last_ts, "lease": lease,
                "revision": revision, "standbys": standbys}

    async def put_position(self, node: str, position: Position) -> None:
        await self.kv.put(f"standby.{node}", msgspec.json.encode(position))

    # --- the lease ----------------------------------------------------------------------

    async def read_lease(self) -> tuple[Lease | None, int]:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.kv.get("primary")
        except KeyNotFoundError:
            return None, 0
        return msgspec.json.decode(entry.value, type=Lease), int(entry.revision)

    async def release_lease(self, node: str, revision: int) -> bool:
        """A primary stopping on purpose hands over at once: its lease, still at
        ``revision``, is marked expired (compare-and-set)."""
        from nats.js.errors import APIError, KeyWrongLastSequenceError

        try:
            await self.kv.update("primary", msgspec.json.encode(Lease(node, 0)), last=revision)
            return True
        except (KeyWrongLastSequenceError, APIError):
            return False

    async def take_lease(self, node: str, lease_s: float, revision: int) -> int | None:
        """Compare-and-set the lease to ``node`` (``revision`` 0: create it); the new
        revision, or None when someone else changed it first."""
        from nats.js.errors import APIError, KeyWrongLastSequenceError

        value = msgspec.json.encode(Lease(node, time.time_ns() + int(lease_s * 1e9)))
        try:
            if revision == 0:
                return int(await self.kv.create("primary", value))
            return int(await self.kv.update("primary", value, last=revision))
        except (KeyWrongLastSequenceError, APIError):
            return None


class ReplicatedJournal:
    """The local journal with the stream in front of it (see the module docstring);
    GroupCommitter uses it as its journal."""

    def __init__(self, journal: Any, link: Link, node: str, term: int, last_batch: int, confirm_s: float,
                 check_s: float = 1.0) -> None:
        self.local = journal
        self.link = link
        self.node = node
        self.term = term  # the lease revision this primary took: part of every message id
        self.last_batch = last_batch  # stream sequence of the newest batch (ours or the one we followed to)
        self.confirm_s = confirm_s
        self.fenced: JournalUnavailable | None = None
        self.check_s = check_s
        self._next_check = time.monotonic() + check_s
        self.checks: set[int] = set()  # ends of batches marked for a hash check, not yet hashed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    @property
    def last_seq(self) -> int:
        return int(self.local.last_seq)

    def append_batch(self, cmds: Sequence[Any]) -> None:
        if self.fenced is not None:
            raise self.fenced
        if not cmds:
            return
        first, count = cmds[0].seq, len(cmds)
        # The record's checks before the stream has it: the group committer splits a
        # group on RecordTooLarge, which must not come after the publish.
        body = self.local.encode_batch(cmds)
        check = time.monotonic() >= self._next_check
        if check:
            self._next_check = time.monotonic() + self.check_s
            self.checks.add(first + count - 1)  # before the core can apply it
        try:
            self.last_batch = self.link.call(
                self.link.publish_batch(body, first, count, self.last_batch, f"{self.node}-{self.term}-{first}",
                                        self.confirm_s, check), self.confirm_s + 5)
        except Fenced as e:
            self.fenced = e
            raise
        except JournalUnavailable as e:
            # What the stream holds is not known: the next primary decides. Never guess.
            self.fenced = e
            raise
        except concurrent.futures.TimeoutError:
            self.fenced = JournalUnavailable("the replicated journal did not answer")
            raise self.fenced from None
        try:
            self.local.append_batch(cmds, body)  # the bytes the stream has, not encoded again
        except JournalUnavailable as e:
            # The stream has the batch and this journal does not: stop; a restart
            # catches up from the stream.
            self.fenced = JournalUnavailable(f"the local journal refused a batch the stream holds ({e.reason}); "
                                             "restart to catch up from the stream")
            raise self.fenced from e

    def probe(self) -> bool:
        return self.fenced is None and bool(self.local.probe())


class Follower:
    """A standby's side: apply the stream's batches after ``after_seq`` with ``apply``
    (write locally, then apply to the core), compare state hashes at the marks, and
    watch the lease. ``run`` returns (the lease revision taken, the stream sequence of
    the last batch applied) when this node becomes the primary."""

    def __init__(self, link: Link, node: str, lease_s: float, apply: Callable[[list[Any]], Awaitable[None]],
                 state_hash: Callable[[], str], last_seq: Callable[[], int], decode: Callable[[bytes], list[Any]],
                 on_mismatch: Callable[[str], None]) -> None:
        self.link = link
        self.node = node
        self.lease_s = lease_s
        self.apply = apply
        self.state_hash = state_hash
        self.last_seq = last_seq
        self.decode = decode
        self.on_mismatch = on_mismatch
        self.applied_batch = 0  # stream sequence of the last batch applied
        self.mine: dict[int, str] = {}  # seq -> this node's state hash at a mark
        self.checked = 0
        self.mismatches = 0
        self.applied_ts = 0  # timestamp of the last command applied
        self._reported = 0.0

    async def run(self) -> tuple[int, int]:
        """Follow until this node takes the lease. A NATS server lost or a reconnect
        only delays it: the subscription starts again after the last batch applied."""
        link = self.link
        poll = max(0.05, self.lease_s / 4)
        sub: Any = None
        try:
            while True:
                try:
                    if sub is None:
                        sub = await link.run(self._subscribe())
                    msgs = await link.run(self._fetch(sub, poll))
                except Exception as e:  # the connection, a server, a timeout: follow again
                    log.warning("replication: following the stream failed (%r); following again", e)
                    if sub is not None:
                        with contextlib.suppress(Exception):
                            await link.run(sub.unsubscribe())
                        sub = None
                    await asyncio.sleep(0.2)
                    continue
                for msg in msgs:
                    await self._handle(msg)
                if time.monotonic() - self._reported > POSITION_EVERY_S:
                    self._reported = time.monotonic()
                    with contextlib.suppress(Exception):  # the position is for the operators only
                        await link.run(link.put_position(self.node, Position(self.last_seq(), self.applied_ts,
                                                                             time.time_ns())))
                if not msgs:
                    try:
                        revision = await self._lease_expired()
                    except Exception as e:
                        log.warning("replication: the lease could not be read (%r)", e)
                        continue
                    if revision is not None:
                        # The fetch came back empty after the lease ran out: take over
                        # (the caller applies what the stream got meanwhile).
                        return revision, self.applied_batch
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await link.run(sub.unsubscribe())

    async def catch_up(self) -> int:
        """Apply every batch the stream holds now; the stream sequence of its newest
        batch (0: none). For a primary starting: nothing acknowledged is left out.

        A NATS server lost, a reconnect or a request timing out while the cluster elects
        new leaders only delays it, as it delays ``run``: it starts again after the last
        batch applied (found when a standby that had just taken the lease exited on a
        consumer request timing out). A history that does not fit (RuntimeError) ends
        it."""
        while True:
            try:
                return await self._catch_up()
            except RuntimeError:
                raise
            except Exception as e:  # the connection, a server, a timeout: catch up again
                log.warning("replication: catching up with the stream failed (%r); catching up again", e)
                await asyncio.sleep(0.2)

    async def _catch_up(self) -> int:
        link = self.link
        target, last_cmd = await link.run(link.last_batch())
        if last_cmd <= self.last_seq():
            if last_cmd and last_cmd < self.last_seq():
                raise RuntimeError(f"this journal ends at seq {self.last_seq()}, beyond the stream's last batch "
                                   f"(seq {last_cmd}): it holds a history the stream does not")
            return target
        sub = await link.run(self._subscribe())
        try:
            while self.applied_batch < target:
                for msg in await link.run(self._fetch(sub, 1.0)):
                    await self._handle(msg)
        finally:
            with contextlib.suppress(Exception):  # a connection gone: the consumer lapses by itself
                await link.run(sub.unsubscribe())
        return target

    async def _subscribe(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        start = await self._start_sequence()
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=start, inactive_threshold=30.0)
        return await self.link.js.pull_subscribe(f"{self.link.stream}.>", stream=self.link.stream, config=config)

    async def _start_sequence(self) -> int:
        """The stream sequence of the first batch after this node's journal (a binary
        search over the batches' headers), or the stream's next sequence."""
        js, stream, last_seq = self.link.js, self.link.stream, self.last_seq()
        info = await js.stream_info(stream)
        lo, hi = int(info.state.first_seq), int(info.state.last_seq)
        if hi == 0:
            return 1
        answer = hi + 1
        while lo <= hi:
            mid = (lo + hi) // 2
            seq = mid
            msg = None
            while seq <= hi:  # the nearest batch at or after mid
                try:
                    candidate = await js.get_msg(stream, seq)
                except Exception:
                    seq += 1
                    continue
                if candidate.subject == self.link.batch_subject:
                    msg = candidate
                    break
                seq += 1
            if msg is None:
                hi = mid - 1
                continue
            first = int(msg.headers["Etx-First"])
            if first > last_seq:
                answer = min(answer, seq)
                hi = mid - 1
            else:
                lo = seq + 1
        return answer

    async def _fetch(self, sub: Any, timeout: float) -> list[Any]:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            return list(await sub.fetch(256, timeout=timeout))
        except (TimeoutError, NatsTimeout):
            return []

    async def _handle(self, msg: Any) -> None:
        subject, headers = msg.subject, msg.headers or {}
        if subject == self.link.batch_subject:
            first = int(headers["Etx-First"])
            count = int(headers["Etx-Count"])
            last = self.last_seq()
            if first + count - 1 <= last:
                self.applied_batch = msg.metadata.sequence.stream
                return  # in this node's journal already
            if first != last + 1:
                raise RuntimeError(f"the stream's batch starts at seq {first}, this journal ends at {last}")
            cmds = self.decode(msg.data)
            await self.apply(cmds)
            self.applied_ts = cmds[-1].ts
            self.applied_batch = msg.metadata.sequence.stream
            if "Etx-Check" in headers:
                self.mine[first + count - 1] = self.state_hash()
        elif subject == self.link.hash_subject:
            seq, theirs = int(headers["Etx-Seq"]), msg.data.decode()
            mine = self.mine.pop(seq, None)
            if mine is not None:
                self.checked += 1
                if mine == theirs:
                    log.info("replication: state hash at seq %d equals the primary's", seq)
                else:
                    self.mismatches += 1
                    self.on_mismatch(f"state hash differs from the primary's at seq {seq}: primary {theirs}, "
                                     f"standby {mine}")

    async def _lease_expired(self) -> int | None:
        lease, revision = await self.link.run(self.link.read_lease())
        if lease is not None and lease.until_ns > time.time_ns():
            return None
        taken = await self.link.run(self.link.take_lease(self.node, self.lease_s, revision))
        if taken is not None:
            log.warning("lease of %s expired (%s): %s takes over", lease.node if lease else "nobody",
                        "never held" if lease is None else f"until {lease.until_ns}", self.node)
        return taken


class Primary:
    """The primary's side: renew the lease, mark records for hash checks and publish
    its hashes. ``lost`` is set when the lease is lost or the stream fences it."""

    def __init__(self, link: Link, node: str, lease_s: float, revision: int, journal: ReplicatedJournal) -> None:
        self.link = link
        self.node = node
        self.lease_s = lease_s
        self.revision = revision
        self.journal = journal
        self.lost = asyncio.Event()
        self.why = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def release(self) -> None:
        """Hand the lease over (a stop on purpose: everything is journaled and published).
        The lease's revision is read again first: a renewal cancelled by ``stop`` may
        still have completed in the link's thread, leaving ``revision`` behind the
        store (the release then failed, and the standby waited for the lease to run
        out). The compare-and-set at the read revision still refuses a lease that another
        node took meanwhile."""
        if not self.lost.is_set():
            with contextlib.suppress(Exception):
                lease, revision = await self.link.run(self.link.read_lease())
                if lease is not None and lease.node == self.node and \
                        await self.link.run(self.link.release_lease(self.node, revision)):
                    log.info("replication: %s released the lease", self.node)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if self.journal.fenced is not None:
                self._lose(str(self.journal.fenced.reason))
                return
            try:
                taken = await self.link.run(self.link.take_lease(self.node, self.lease_s, self.revision))
            except Exception as e:  # the stream unreachable: the journal's publishes say so too
                log.warning("lease renewal failed: %r", e)
                continue
            if taken is None:
                self._lose("another node holds the lease")
                return
            self.revision = taken

    def _lose(self, why: str) -> None:
        self.why = why
        if self.journal.fenced is None:
            self.journal.fenced = Fenced(why)
        log.error("no longer the primary: %s", why)
        self.lost.set()

    def after_batch(self, last_seq: int, state_hash: Callable[[], str]) -> None:
        """Called by the core loop after each applied batch: the state hash at the end of
        a batch marked for a check goes to the standbys."""
        checks = self.journal.checks
        if checks and last_seq in checks:
            checks.discard(last_seq)
            self.link.submit(self.link.publish(self.link.hash_subject, state_hash().encode(),
                                               {"Etx-Seq": str(last_seq)}))

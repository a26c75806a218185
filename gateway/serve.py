"""``etx serve``: the running exchange — engine, settlement, journal and gateway in one
process — and ``Service``, the composition that ``etx demo`` and the load tool reuse.

Contract:
- ``Service(cfg, data_dir)`` builds the core with ``gateway.recovery.core_factory`` (the
  construction ``etx journal verify --config`` replays into) and recovers it before it
  listens: the newest snapshot that carries the members' streams and is not newer than
  what the registry store has settled, then the journal after it. Members' streams
  continue from the snapshot (last seq_out, the newest ``snapshot_history`` reports
  each, the day's client order ids and their outcomes) and the reports of the replayed
  commands are made again from their events, so replay at logon spans restarts: a
  member logging on with its last seq_out gets what it missed, once, in order (older
  than the snapshot's window: REPLAY_TRIMMED).
- Snapshots are taken between batches every ``snapshot_every`` commands, every
  ``snapshot_every_s`` seconds, after each end of day and at a clean stop. Each is
  written by a forked child process that hashes, encodes and writes the core frozen
  at that seq while trading goes on (``snapshot_writer="fork"``, the default: the
  pause is the fork, and the pages either side writes are copied meanwhile), or by a
  process that follows the journal with a core of its own (``"follower"``,
  gateway/snapfollow.py: the pause is one line down a pipe, and every command is
  applied a second time); a periodic one also waits
  ``SNAPSHOT_GAP_RATIO`` times as long as the previous one took (scaled by the growth
  of the exchange's memory since), so that on a busy day with a deep book they keep to
  about a quarter of a core. Old snapshots and journal
  segments are retired, never the ones a restart still needs while the registry store
  is behind.
- Every batch is journaled (group-committed fsync, on the journal's thread) before it
  is applied; no acknowledgement leaves before that.
- Settlement runs beside the core: each batch's postings are handed to the settler
  (``settlement.settler``), whose thread writes them to the registry store (SQLite file
  or PostgreSQL URL) in batches, one transaction each; the core never waits for it.
- Market data is published to the MQTT broker of ``[market_data]`` (``md_host`` and
  ``md_port``, i.e. ``--mqtt``, override its host and port; ``market_data=False``, i.e.
  ``--no-market-data``, its ``enabled``). A broker that is away, at the start or later,
  costs a log line and the publisher connects when it can; an unreadable password or
  TLS file stops the start (ServeError naming the key); another exchange online under
  the same topic root leaves this one trading without market data, with one error line.
- SIGINT and SIGTERM stop it gracefully: no new connections, sessions told, queued
  commands applied and journaled, postings written, journal closed.
- ``etx serve`` refuses a configuration in which a user keeps a secret_hash that
  etx.example.toml publishes (``gateway.auth.EXAMPLE_SECRETS``), with one line naming
  the users, unless told ``--demo`` (a throwaway demonstration). ``Service`` itself
  does not check: ``etx demo`` and the tests make their own secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from gateway.auth import EXAMPLE_SECRETS, Authenticator
from gateway.config import Config, ConfigError, loads
from gateway.datadir import DataFolder, FolderInUse, registry_url, write_config_copy
from gateway.server import Server
from gateway.streams import GatewayState
from settlement.settler import SettlerError

log = logging.getLogger("etx.serve")


class ServeError(Exception):
    """A reason the exchange cannot start that its operator can act on: the message is
    one line saying what is wrong and where (``etx serve`` prints it and exits 2)."""

SNAPSHOT_EVERY = 100_000  # commands between periodic snapshots (a restart replays at most about this many)
SNAPSHOT_EVERY_S = 300.0  # seconds between snapshots while anything is applied
SNAPSHOT_HISTORY = 50_000  # reports per member a snapshot keeps for replay at logon
SNAPSHOT_WRITERS = ("follower", "fork")
# Who writes the snapshots: a fork of the exchange, or a process that follows the
# journal (gateway/snapfollow.py). The follower takes the fork's pause and copied pages
# out of the exchange but applies every command a second time; on a two-core machine
# shared with the load generator that cost more throughput than it saved
# (docs/benchmarks.md), so the fork stays the default and the follower is for a
# machine with a core to spare.
SNAPSHOT_WRITER = "fork"
SNAPSHOT_GAP_RATIO = 3.0  # a periodic snapshot waits 3 times as long as the last one took: writing them takes <= 1/4 of a core
SETTLED_MARK_S = 1.0  # how often the store's settled seq is moved past commands without postings


class _Settle:
    """The core's side of settlement: after each batch, hand the ledger's postings to
    the settler (it writes them on its own thread). When the settler is full the
    postings wait in the ledger's outbox and go with the next batch.

    Commands without postings (cancels, ticks, rejected orders) give the settler
    nothing to write, so the store's last settled seq would stay behind them, and a
    restart could not use a snapshot taken after them (it must not be newer than what
    the store can resume from). At most every SETTLED_MARK_S the settled seq is
    therefore moved to the core's (an empty transaction: every posting up to it has
    been handed over).

    When the store refuses a batch (the settler stopped: the record cannot be kept),
    ``on_failure(error)`` is called once and nothing more is handed over: the service
    stops (the journal holds every command; the postings are made again at the next
    start, whose check of the store says what is wrong)."""

    def __init__(self, settler: Any, ledger: Any, engine: Any,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.settler, self.ledger, self.engine = settler, ledger, engine
        self.on_failure = on_failure
        self.failed: BaseException | None = None
        self.full = False
        self.marked = 0  # the last seq handed to the settler
        self.mark_at = 0.0

    def __call__(self, events: list[Any]) -> None:
        if self.failed is not None:
            return
        try:
            self._hand_over()
        except SettlerError as e:
            self.failed = e
            if self.on_failure is not None:
                self.on_failure(e)

    def _hand_over(self) -> None:
        seq = self.engine.last_seq
        handed = bool(self.ledger.postings)
        ok = self.settler.pump(self.ledger, seq)
        if ok and seq > self.marked:
            now = time.monotonic()
            if handed:
                self.marked = seq
            elif now >= self.mark_at:
                self.settler.submit((), seq)
                self.marked, self.mark_at = seq, now + SETTLED_MARK_S
        if ok != (not self.full):
            self.full = not ok
            if self.full:
                log.warning("the registry store is behind (%d postings pending); postings wait in memory",
                            self.settler.pending)
            else:
                log.warning("the registry store caught up")


class Service:
    """The exchange as one service; see the module docstring."""

    def __init__(self, cfg: Config, data_dir: str | Path, *, md_host: str | None = None, md_port: int | None = None,
                 market_data: bool | None = None, snapshots: bool = True, snapshot_every: int = SNAPSHOT_EVERY,
                 snapshot_every_s: float | None = SNAPSHOT_EVERY_S,
                 snapshot_history: int = SNAPSHOT_HISTORY, config_text: str | None = None,
                 what: str = "etx serve", snapshot_writer: str = SNAPSHOT_WRITER) -> None:
        """``config_text``: the configuration file's text, kept in the data folder for
        the offline tools (``gateway.datadir``); ``what``: who holds the folder's lock;
        ``snapshot_writer``: "follower" or "fork" (see the module docstring)."""
        if snapshot_writer not in SNAPSHOT_WRITERS:
            raise ValueError(f"snapshot_writer must be one of {', '.join(SNAPSHOT_WRITERS)}, got {snapshot_writer!r}")
        self.cfg = cfg
        self.ssl_context = tls_context(cfg)  # first: a wrong TLS file stops the start before anything is opened
        self.data_dir = Path(data_dir)
        make_data_folder(self.data_dir)
        # Before anything in the folder is opened: one writer at a time.
        try:
            self.folder = DataFolder(self.data_dir, what)
        except FolderInUse as e:
            raise ServeError(str(e)) from None
        try:
            self._open(cfg, config_text, market_data, md_host, md_port, snapshots, snapshot_every, snapshot_every_s,
                       snapshot_history, snapshot_writer)
        except BaseException:
            self.folder.release()
            raise

    def _open(self, cfg: Config, config_text: str | None, market_data: bool | None, md_host: str | None,
              md_port: int | None,
              snapshots: bool, snapshot_every: int, snapshot_every_s: float | None, snapshot_history: int,
              snapshot_writer: str) -> None:
        from engine.journal import GroupCommitter
        from gateway.recovery import Snapshotter, core_factory, open_orders, recover
        from settlement.settler import Settler
        from settlement.store import StoreError, open_store

        if config_text is not None:
            write_config_copy(self.data_dir, config_text)
        registry = registry_url(self.data_dir, cfg.exchange.registry)
        try:
            self.store = open_store(registry)
        except StoreError as e:
            raise ServeError(f"exchange.registry: {e}") from None
        self.store.migrate()
        self.registry_url = registry
        settled = self.store.last_seq()

        # Recovery: a snapshot at or below the registry store's last settled seq (the
        # postings after it are made again by the replay and written by the settler),
        # with the members' streams as they were at its seq.
        replayed: list[tuple[list[Any], list[Any]]] = []
        restored: dict[str, Any] = {}

        def on_restored(core: Any, edge: Any) -> None:
            restored["open"] = open_orders(core)

        try:
            self.recovery = recover(self.data_dir, core_factory(cfg), events_from_seq=settled + 1,
                                    on_replayed=lambda batch, out: replayed.append((batch, list(out))),
                                    edge_type=GatewayState, on_restored=on_restored)
        except BaseException:
            self.store.close()  # a journal that does not verify stops the start
            raise
        for line in self.recovery.report.lines():
            log.info("recovery: %s", line)
        self.exchange = self.recovery.core
        try:
            self._check_store(settled)
        except BaseException:
            self.recovery.journal.close()
            self.store.close()
            raise
        self.fees = self.exchange.ledger.fees
        self.committer = GroupCommitter(self.recovery.journal, on_state=self._journal_state)
        self.loop: asyncio.AbstractEventLoop | None = None  # the service's, once started
        self.ended = asyncio.Event()  # set when the service cannot go on (settlement failed)
        self.failure = ""
        self.settler = Settler(registry, resume_after=settled, on_trouble=self._store_trouble).start()
        self.settle = _Settle(self.settler, self.exchange.ledger, self.exchange.engine, on_failure=self._settle_failed)
        s = cfg.session
        auth = Authenticator(cfg.users(), failures_max=s.failures_max, window_s=s.failure_window_s,
                             lockout_s=s.lockout_s, on_lockout=self._lockout)
        listeners: list[Any] = [self.settle]
        self.md: Any = None
        self.md_task: asyncio.Task[Any] | None = None
        # None: as [market_data] says.
        self.md_host = md_host or cfg.market_data.host
        self.md_port = md_port or cfg.market_data.port
        self.md_wanted = cfg.market_data.enabled if market_data is None else market_data
        self.server = Server(self.exchange, auth, [m.id for m in cfg.member], s,
                             operator_member=cfg.exchange.operator_member, journal=self.committer.commit,
                             on_events=listeners)
        self.server.feed.health = self.health
        from gateway.surveillance import Surveillance

        v = cfg.surveillance
        self.surveillance = Surveillance(
            self.exchange, self.server.alert, large_holder={i.symbol: i.large_holder for i in cfg.instrument},
            cancel_ratio_max=float(v.cancel_ratio_max), cancel_ratio_min=v.cancel_ratio_min, repeat_s=v.repeat_s)
        self.server.on_batches.append(self.surveillance.on_batch)
        self._lag_alerted = False
        if self.recovery.edge is not None:
            self.server.restore_streams(self.recovery.edge, restored["open"])
            self.recovery = self.recovery._replace(edge=None)  # the streams own it now
        for batch, events in replayed:
            self.server.rebuild(batch, events)
        replayed.clear()  # the events are routed; do not keep them
        self.snapshot_history = snapshot_history
        self.snapshotter: Snapshotter | None = None
        if snapshots:
            engine = self.exchange.engine
            self.snapshotter = Snapshotter(
                self.exchange, self.recovery.snapshots, self.recovery.journal.directory,
                every_commands=snapshot_every, every_s=snapshot_every_s, day=lambda: engine.day,
                keep_seq_from=lambda: self.settler.durable_seq + 1, gap_ratio=SNAPSHOT_GAP_RATIO,
                edge=lambda: self.server.capture_streams(snapshot_history),
                follower=self._snapshot_follower(snapshot_history) if snapshot_writer == "follower" else None)
            self.server.on_events.append(self.snapshotter.after_batch)
        self.address: tuple[str, int] = ("", 0)
        self.link: Any = None  # gateway.replication.Link, with replication on
        self.primary: Any = None
        self.follower: Any = None
        self.role = "single" if not cfg.replication.enabled else "starting"

    def _snapshot_follower(self, history: int) -> Any:
        """The process that writes the periodic snapshots (gateway/snapfollow.py), told
        what its core and streams are made of: the configuration without the users and
        the broker's and the stream's settings (no secret leaves this process), the
        member and staff streams."""
        from gateway.config import MarketDataSection, ReplicationSection
        from gateway.snapfollow import Hello, SnapshotFollower

        router = self.server.router
        hello = Hello(config=msgspec.structs.replace(self.cfg, user=[], market_data=MarketDataSection(),
                                                     replication=ReplicationSection()),
                      members=sorted(router.members), staff=[k for k in router.streams if k not in router.members],
                      history=history, parent=os.getpid())
        return SnapshotFollower(self.data_dir, hello)

    # --- replication (gateway/replication.py) ----------------------------------------------

    @property
    def node(self) -> str:
        return self.cfg.replication.node or socket.gethostname()

    async def _connect_stream(self) -> Any:
        from gateway.replication import Link

        r = self.cfg.replication
        try:
            self.link = await asyncio.to_thread(Link, r.servers, self.cfg.stream_name(), r.replicas)
        except Exception as e:
            raise ServeError(f"replication: no JetStream at {', '.join(r.servers)} ({e!r}); start nats-server with "
                             "JetStream (Debian: apt-get install nats-server; nats-server -js)") from None
        return self.link

    def _follower(self) -> Any:
        from gateway.replication import Follower

        r = self.cfg.replication
        journal = self.recovery.journal

        async def apply(cmds: list[Any]) -> None:
            await self.committer.commit(cmds)  # this node's own journal first, as the primary did
            self.server.follow(cmds)

        def mismatch(text: str) -> None:
            log.error("replication: %s", text)
            self.server.alert("replica-diverged", text)

        self.follower = Follower(self.link, self.node, r.lease_s, apply, self.exchange.state_hash,
                                 lambda: self.exchange.last_seq, lambda body: list(journal.decoder.decode(body)), mismatch)
        return self.follower

    async def replicate_as_primary(self) -> None:
        """Take the lease (refused while another node holds it), apply whatever the
        stream holds beyond this journal, and put the stream in front of the journal."""
        link = await self._connect_stream()
        r = self.cfg.replication
        lease, revision = await link.run(link.read_lease())
        if lease is not None and lease.node != self.node and lease.until_ns > time.time_ns():
            raise ServeError(f"replication: {lease.node} holds the primary's lease on stream {link.stream}; start "
                             "this node with --standby")
        taken = await link.run(link.take_lease(self.node, r.lease_s, revision))
        if taken is None:
            raise ServeError(f"replication: another node took the lease on stream {link.stream} first; start this "
                             "node with --standby")
        try:
            last_batch = await self._follower().catch_up()
        except RuntimeError as e:
            raise ServeError(f"replication: {e}") from None
        self._become_primary(taken, last_batch)

    async def follow_as_standby(self) -> None:
        """Follow the stream until this node takes the lease; then it is the primary
        (the caller starts its gateway)."""
        link = await self._connect_stream()
        self.role = "standby"
        print(f"etx standby {self.node}: following stream {link.stream} from seq {self.exchange.last_seq + 1}",
              flush=True)
        follower = self._follower()
        revision, _ = await follower.run()
        # A batch the primary published just before it died, after the last fetch:
        # applied before this node appends (its first publish expects the stream's last).
        try:
            stream_last = await follower.catch_up()
        except RuntimeError as e:
            raise ServeError(f"replication: {e}") from None
        self._become_primary(revision, stream_last)

    def _become_primary(self, revision: int, last_batch: int) -> None:
        from gateway.replication import Primary, ReplicatedJournal

        r = self.cfg.replication
        journal = ReplicatedJournal(self.recovery.journal, self.link, self.node, revision, last_batch, r.confirm_s,
                                    r.check_s)
        self.committer.journal = journal  # type: ignore[assignment]  # the same interface
        self.primary = Primary(self.link, self.node, r.lease_s, revision, journal)
        self.primary.start()
        exchange = self.exchange
        self.server.on_batches.append(lambda cmds, out: self.primary.after_batch(exchange.last_seq,
                                                                               exchange.state_hash))
        self.role = "primary"

        async def watch() -> None:
            await self.primary.lost.wait()
            self.failure = f"no longer the primary ({self.primary.why}): this node stops taking orders"
            self.server.alert("primary-lost", self.failure)
            self.ended.set()

        self._lost_task = asyncio.ensure_future(watch())
        log.info("replication: %s is the primary on stream %s (lease revision %d, after stream seq %d)",
                 self.node, self.link.stream, revision, last_batch)

    def _check_store(self, settled: int) -> None:
        """Refuse a registry store that is not a projection of this journal: one that
        has settled beyond the journal's end, or holds a posting other than the one
        the replay made again for the same id (those up to its settled seq)."""
        last = self.exchange.last_seq
        where = f"the registry store {self.registry_url}"
        if settled > last:
            raise ServeError(f"{where} has settled through seq {settled} but the journal ends at seq {last}: the "
                             f"store holds changes the exchange never journaled; restore it from a backup, or see "
                             f"etx registry audit --data {self.data_dir}")
        outbox = self.exchange.ledger.postings
        # Genesis postings (seq 0) are in any store that has settled anything.
        settled_again = [p for p in outbox if p.seq <= settled and (p.seq or settled)]
        problem = self.store.first_difference(settled_again) if settled_again else None
        if problem is not None:
            raise ServeError(f"{where} does not match the journal: {problem}; the store was changed outside the "
                             f"exchange: see etx registry audit --data {self.data_dir}")

    def health(self) -> dict[str, int]:
        """The service's figures for the operators' health view (once a second): the
        journal's group commits since the last call, settlement's lag, the newest
        snapshot's age and the market data publisher's lag."""
        commits = self.committer.commit_us
        times = sorted(commits)
        commits.clear()
        lag = max(0, self.exchange.last_seq - self.settler.durable_seq)
        out = {"settlement_lag": lag}
        lag_max = self.cfg.surveillance.settlement_lag_max
        if lag_max and lag > lag_max and not self._lag_alerted:
            self._lag_alerted = True
            self.server.alert("settlement-lag", f"settlement is {lag:,} commands behind the core (more than "
                                                f"{lag_max:,}); the store at {self.registry_url} is slow or unavailable")
        elif self._lag_alerted and lag <= lag_max // 2:
            self._lag_alerted = False
            self.server.alert("settlement-lag", f"settlement caught up: {lag:,} commands behind")
        if times:
            out["fsync_p50_us"] = times[len(times) // 2]
            out["fsync_p99_us"] = times[min(len(times) - 1, len(times) * 99 // 100)]
        snapper = self.snapshotter
        if snapper is not None and snapper.written_at:
            out["snapshot_age_s"] = int(time.monotonic() - snapper.written_at)
        lag_ms = getattr(self.md, "lag_ms", None)
        if callable(lag_ms):
            out["md_lag_ms"] = int(lag_ms())
        return out

    def _store_trouble(self, text: str) -> None:
        """From the settler's thread: the store cannot be written now ("" once it can)."""
        if text:
            log.error("registry store unavailable, settlement waits and tries again: %s", text)
        else:
            log.warning("registry store available again: settlement catches up")
        loop = self.loop
        if loop is not None and not loop.is_closed():
            kind = "settlement-unavailable" if text else "settlement-resumed"
            loop.call_soon_threadsafe(self.server.alert, kind, text or "the registry store is written again")

    def _settle_failed(self, error: BaseException) -> None:
        """The store refused a batch: the record cannot be kept, so trading stops."""
        self.failure = f"the registry store refused a batch, so the exchange stops: {error}"
        log.error("%s", self.failure)
        self.server.alert("settlement-failed", self.failure)
        self.ended.set()

    def _lockout(self, member: str, user: str, host: str) -> None:
        lockout_s = self.cfg.session.lockout_s
        self.server.alert("lockout", f"user {member}/{user} locked out from {host} for {lockout_s} s after "
                                     f"{self.cfg.session.failures_max} failed logons; an operator can unlock it")

    def _journal_state(self, ok: bool, reason: str) -> None:
        """From the journal's thread: it refuses writes (orders are refused), or works again."""
        if ok:
            log.warning("journal available again")
        else:
            log.error("journal unavailable, orders are refused: %s", reason)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            text = "the journal writes again: orders are taken" if ok else \
                f"the journal refuses writes, so every order is refused: {reason}"
            loop.call_soon_threadsafe(self.server.alert, "journal", text)

    async def start(self, host: str | None = None, port: int | None = None, standby: bool = False) -> tuple[str, int]:
        """Listen at exchange.listen (or at ``host``/``port`` where given); returns the
        address. If it cannot, everything is closed again as by ``stop`` (no snapshot)
        and the error is raised: ServeError naming the address when it cannot listen.
        ``standby``: a hot standby's gateway, for the staff's queries only, and no
        market data, until ``take_over``."""
        self.loop = asyncio.get_running_loop()
        self.server.standby = standby
        cfg_host, cfg_port = self.cfg.listen()
        where = "exchange.listen" if host is None and port is None else "listen address"
        host = cfg_host if host is None else host
        port = cfg_port if port is None else port
        try:
            if self.md_wanted and not standby:
                await self._start_market_data()
            try:
                self.address = await self.server.start(host, port, self.ssl_context)
            except OSError as e:
                address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise ServeError(f"{where} {address}: {_listen_problem(e)}") from None
        except BaseException:
            await self.stop(snapshot=False)  # nothing half-started: journal, settler and store closed
            raise
        self.folder.note(listen=f"{self.address[0]}:{self.address[1]}")  # where etx registry finds the exchange
        return self.address

    async def take_over(self) -> None:
        """The standby's gateway becomes the primary's: members may log on, commands
        are taken, market data is published."""
        self.server.take_over()
        if self.md_wanted:
            await self._start_market_data()

    async def _start_market_data(self) -> None:
        try:
            from gateway.marketdata import MarketDataPublisher
        except ImportError:
            print("market data: not published (the MQTT publisher is not installed)")
            return
        try:
            self.md = MarketDataPublisher.from_config(self.exchange.engine, self.cfg, host=self.md_host,
                                                      port=self.md_port)
        except ConfigError as e:  # a password or TLS file that cannot be used
            raise ServeError(str(e)) from None
        self.server.on_events.append(self.md.on_events)
        self.server.alerts.append(self.md.alert)
        self.md_task = asyncio.create_task(self.md.run())
        if await self.md.reachable():
            print(f"market data: publishing to {self.md.url} under {self.md.root}/ as instance {self.md.instance}",
                  flush=True)
        else:
            print(f"market data: no MQTT broker answers at {self.md_host}:{self.md_port}; the exchange runs without "
                  f"and publishes once one does (Debian: apt-get install mosquitto)", flush=True)

    async def stop(self, snapshot: bool = True) -> None:
        """Stop gracefully (see the module docstring); ``snapshot``: take a last snapshot
        once everything is settled, so that the next start replays nothing."""
        await self.server.stop()
        if self.primary is not None:
            self.primary.stop()
        if self.md is not None:
            self.md.stop()
            if self.md_task is not None:
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.md_task, 5)
        self.committer.close()  # what is queued is journaled (and published) first
        if self.primary is not None:
            await self.primary.release()  # a standby takes over at once, not after the lease
        self.recovery.journal.close()
        self.settle([])  # what the last batches left in the outbox
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.settler.close)
        except SettlerError as e:
            # The journal has every command; the next start settles what is missing.
            log.error("settlement stopped before everything was written: %s", e)
            snapshot = False
        snapper = self.snapshotter
        if snapper is not None:
            # Everything is settled now, so this snapshot is the one the next start uses.
            if snapshot and snapper.last_written != self.exchange.last_seq:
                snapper.take()
            await loop.run_in_executor(None, snapper.close)
        self.store.close()
        if self.link is not None:
            self.link.close()
        self.folder.release()

    def audit(self) -> list[str]:
        """The registry audit: the store against itself and against the live ledger
        (call after ``stop``, when everything is written)."""
        from settlement.audit import audit
        from settlement.store import open_store

        store = open_store(self.registry_url)
        try:
            return audit(store, self.exchange.ledger, self.fees)
        finally:
            store.close()


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The gateway's TLS context from exchange.tls_cert and tls_key (None for plain
    TCP); ServeError naming the file that cannot be read or is not PEM."""
    cert, key = cfg.exchange.tls_cert, cfg.exchange.tls_key
    if not cert:
        return None
    for name, path in (("exchange.tls_cert", cert), ("exchange.tls_key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ServeError(f"{name} {path} cannot be read ({e.strerror or e}): give the path of a readable "
                             "PEM file") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ServeError(f"exchange.tls_key {key} is not the private key of exchange.tls_cert {cert}") from None
        raise ServeError(f"exchange.tls_cert {cert} and exchange.tls_key {key} are not a PEM certificate chain "
                         "and its private key") from None
    return ctx


def make_data_folder(path: Path) -> None:
    """Create the data folder if it is missing and check that files can be written in
    it; ServeError naming it otherwise (before the journal or the store open there)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ServeError(f"data folder {path} is a file, not a folder: give --data a folder") from None
    except OSError as e:
        raise ServeError(f"data folder {path} cannot be created ({e.strerror or e}): give --data a folder that "
                         "can be created and written") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ServeError(f"data folder {path} is not writable ({e.strerror or e}): give --data a folder this "
                         "user can write") from None


def _listen_problem(e: OSError) -> str:
    """Why the gateway cannot listen, and what to do about it."""
    if e.errno == errno.EADDRINUSE:
        return "the address is already in use (another exchange?): stop what listens there or choose another port"
    if e.errno == errno.EADDRNOTAVAIL:
        return "the host is not an address of this machine: choose one of its addresses (or 0.0.0.0)"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges): choose another port"
    if isinstance(e, socket.gaierror):
        return f"the host cannot be resolved ({e.strerror}): give an address or a known host name"
    return f"cannot listen there ({e.strerror or e})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the exchange's TOML configuration (see etx.example.toml)")
    parser.add_argument("--hash-secret", action="store_true",
                        help="read a secret (typed without echo on a terminal, else one line of standard input) "
                             "and print its secret_hash for the configuration")
    parser.add_argument("--data", default="etx-data", help="folder for the journal (and a relative SQLite registry)")
    parser.add_argument("--listen", default=None, help="HOST:PORT to listen on, overriding exchange.listen")
    parser.add_argument("--mqtt", default=None, metavar="HOST:PORT",
                        help="MQTT broker for market data, overriding market_data.host and port")
    parser.add_argument("--no-market-data", action="store_true",
                        help="do not publish market data (overrides market_data.enabled)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY, metavar="N",
                        help=f"snapshot every N commands (default {SNAPSHOT_EVERY:,}); a restart replays about "
                             "this many at most")
    parser.add_argument("--snapshot-interval", type=float, default=SNAPSHOT_EVERY_S, metavar="SECONDS",
                        help=f"and at least every SECONDS while trading goes on (default {SNAPSHOT_EVERY_S:g})")
    parser.add_argument("--snapshot-history", type=int, default=SNAPSHOT_HISTORY, metavar="N",
                        help=f"reports per member a snapshot keeps for replay at logon (default {SNAPSHOT_HISTORY:,}); "
                             "older ones are answered with REPLAY_TRIMMED after a restart")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="take no snapshots (every start replays the whole journal)")
    parser.add_argument("--snapshot-writer", choices=SNAPSHOT_WRITERS, default=SNAPSHOT_WRITER,
                        help="who writes the snapshots: a fork of the exchange (fork, the default: a pause and "
                             "copied memory at each) or a process that follows the journal (follower: no pause, "
                             "every command applied a second time; for a machine with a core to spare)")
    parser.add_argument("--standby", action="store_true",
                        help="with [replication]: follow the primary's stream as a hot standby and take over when "
                             "its lease runs out")
    parser.add_argument("--demo", action="store_true",
                        help="run even with the public example secrets of etx.example.toml (anyone can log on "
                             "with them): for a throwaway demonstration only, never with real members or money")


def snapshot_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the snapshot options, if anything."""
    if args.snapshot_every < 1:
        return f"--snapshot-every must be at least 1, got {args.snapshot_every}"
    if not args.snapshot_interval > 0:  # also refuses nan
        return f"--snapshot-interval must be a positive number of seconds, got {args.snapshot_interval}"
    if args.snapshot_history < 0:
        return f"--snapshot-history must be at least 0, got {args.snapshot_history}"
    return None


def mqtt_address(text: str | None) -> tuple[str | None, int | None]:
    """``--mqtt HOST:PORT`` as (host, port); (None, None) when not given. ValueError
    saying what is expected."""
    if text is None:
        return None, None
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--mqtt: expected HOST:PORT (port 1 to 65535), got {text!r}")
    return host, int(port)


async def serve(args: argparse.Namespace, cfg: Config, config_text: str | None = None) -> int:
    try:
        md_host, md_port = mqtt_address(args.mqtt)
    except ValueError as e:
        print(f"etx serve: {e}")
        return 2
    problem = snapshot_options_problem(args)
    if problem is not None:
        print(f"etx serve: {problem}")
        return 2
    service = Service(cfg, args.data, md_host=md_host, md_port=md_port,
                      market_data=False if args.no_market_data else None, snapshots=not args.no_snapshots,
                      snapshot_every=args.snapshot_every, snapshot_every_s=args.snapshot_interval,
                      snapshot_history=args.snapshot_history, config_text=config_text,
                      snapshot_writer=args.snapshot_writer)
    host = port = None
    if args.listen:
        h, _, p = args.listen.rpartition(":")
        host, port = h or "127.0.0.1", int(p)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addr: tuple[str, int] | None = None
    if cfg.replication.enabled and args.standby:
        try:
            addr = await service.start(host, port, standby=True)  # closes everything again if it cannot
        except ServeError as e:
            print(f"etx serve: {e}", flush=True)
            return 2
        print(f"etx standby listening on {addr[0]}:{addr[1]} (exchange staff, queries only)", flush=True)
    if cfg.replication.enabled:
        try:
            if args.standby:
                following = asyncio.ensure_future(service.follow_as_standby())
                waiting = asyncio.ensure_future(stop.wait())
                await asyncio.wait([following, waiting], return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await following
                    print("etx standby: shutting down", flush=True)
                    await service.stop()
                    return 0
                waiting.cancel()
                following.result()
                print(f"etx standby {service.node}: the primary's lease ran out; taking over", flush=True)
                await service.take_over()
            else:
                await service.replicate_as_primary()
        except ServeError as e:
            print(f"etx serve: {e}", flush=True)
            await service.stop(snapshot=False)
            return 2
    elif args.standby:
        print("etx serve: --standby needs [replication] enabled in the configuration", flush=True)
        await service.stop(snapshot=False)
        return 2
    if addr is None:
        addr = await service.start(host, port)
    print(f"etx serving on {addr[0]}:{addr[1]}; registry {service.registry_url}; journal {service.data_dir / 'journal'}",
          flush=True)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(service.ended.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    print("etx: shutting down", flush=True)
    await service.stop()
    print(f"etx: stopped after {service.server.commands} commands in {service.server.batches} batches", flush=True)
    if service.failure:
        print(f"etx serve: {service.failure}", flush=True)
        return 1
    return 0


def public_secret_users(cfg: Config) -> list[str]:
    """The users (``MEMBER/USER``) whose secret_hash is one that etx.example.toml
    publishes. A string comparison: no hashing at every start."""
    return [f"{u.member}/{u.user}" for u in cfg.user if u.secret_hash in EXAMPLE_SECRETS]


def public_secrets_problem(config: str, users: list[str]) -> str:
    """The one line ``etx serve`` refuses (or, with --demo, warns about) public secrets with."""
    return (f"{config}: {', '.join(users)} {'has' if len(users) == 1 else 'have'} the public example secrets of "
            f"etx.example.toml (\"change-me-...\"), so anyone can log on as them: run etx init for a configuration "
            f"with fresh secrets, or make new hashes with etx serve --hash-secret "
            f"(--demo runs it anyway, for a throwaway demonstration only)")


def hash_secret_command() -> int:
    """Print the stored form of a secret. On a terminal the secret is read without echo;
    it is never printed or logged, and one the gateway would refuse at logon (longer
    than ``SECRET_MAX``) is refused here."""
    import getpass
    import sys

    from gateway.auth import hash_secret
    from gateway.protocol import SECRET_MAX

    if sys.stdin.isatty():
        secret = getpass.getpass("secret: ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        print("etx serve --hash-secret: no secret given")
        return 2
    if len(secret) > SECRET_MAX:
        print(f"etx serve --hash-secret: a secret has at most {SECRET_MAX} characters, this one has {len(secret)}")
        return 2
    if secret in EXAMPLE_SECRETS.values():
        print("etx serve --hash-secret: this secret is one of etx.example.toml's public examples: choose another")
        return 2
    print(hash_secret(secret))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.hash_secret:
        return hash_secret_command()
    if not args.config:
        print("etx serve: --config is required")
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        text = Path(args.config).read_text()
        cfg = loads(text)
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        print(f"etx serve: {args.config}: {e}")
        return 2
    public = public_secret_users(cfg)
    if public and not args.demo:
        print(f"etx serve: {public_secrets_problem(args.config, public)}")
        return 2
    if public:
        print(f"etx serve: --demo: {', '.join(public)} keep the public example secrets: anyone can log on as them",
              flush=True)
    try:
        return asyncio.run(serve(args, cfg, text))
    except ServeError as e:
        print(f"etx serve: {e}")
        return 2

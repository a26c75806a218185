"""``etx serve``: the running exchange — engine, settlement, journal and gateway in one
process — and ``Service``, the composition that ``etx demo`` and the load tool reuse.

Contract:
- ``Service(cfg, data_dir)`` recovers the core from ``data_dir/journal`` (and snapshots)
  before it listens: a restart continues where the last run stopped, and members'
  reports are rebuilt from the replayed events so that replay at logon spans restarts.
- Every batch is journaled (group-committed fsync, on the journal's thread) before it
  is applied; no acknowledgement leaves before that.
- Settlement runs beside the core: each batch's postings are handed to the settler
  (``settlement.settler``), whose thread writes them to the registry store (SQLite file
  or PostgreSQL URL) in batches, one transaction each; the core never waits for it.
- Market data is published to MQTT when a broker answers at ``md_host:md_port``;
  otherwise one line says so and the exchange runs without it.
- SIGINT and SIGTERM stop it gracefully: no new connections, sessions told, queued
  commands applied and journaled, postings written, journal closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

from gateway.auth import Authenticator
from gateway.config import Config, ConfigError, load
from gateway.server import Server

log = logging.getLogger("etx.serve")

class _Settle:
    """The core's side of settlement: after each batch, hand the ledger's postings to
    the settler (it writes them on its own thread). When the settler is full the
    postings wait in the ledger's outbox and go with the next batch."""

    def __init__(self, settler: Any, ledger: Any, engine: Any) -> None:
        self.settler, self.ledger, self.engine = settler, ledger, engine
        self.full = False

    def __call__(self, events: list[Any]) -> None:
        ok = self.settler.pump(self.ledger, self.engine.last_seq)
        if ok != (not self.full):
            self.full = not ok
            if self.full:
                log.warning("the registry store is behind (%d postings pending); postings wait in memory",
                            self.settler.pending)
            else:
                log.warning("the registry store caught up")


class Service:
    """The exchange as one service; see the module docstring."""

    def __init__(self, cfg: Config, data_dir: str | Path, *, md_host: str = "127.0.0.1", md_port: int = 1883,
                 market_data: bool = True) -> None:
        from engine.journal import GroupCommitter
        from gateway.recovery import recover
        from settlement import Exchange, Fees, Ledger
        from settlement.settler import Settler
        from settlement.store import open_store

        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        trading_ppm, registry_ppm = cfg.fee_rates_ppm()
        fees = Fees(trading_ppm=trading_ppm, settlement_ppm=registry_ppm)
        instruments, schedule = cfg.instruments(), cfg.schedule()
        stp, member_stp = cfg.stp_default(), cfg.member_stp()

        def make_core() -> Exchange:
            return Exchange(instruments, Ledger(fees), schedule=schedule, stp_default=stp, member_stp=member_stp)

        replayed: list[list[Any]] = []
        self.recovery = recover(self.data_dir, make_core, on_replayed_events=lambda out: replayed.append(list(out)))
        for line in self.recovery.report.lines():
            log.info("recovery: %s", line)
        self.exchange = self.recovery.core
        registry = cfg.exchange.registry
        if not registry.startswith(("postgresql://", "postgres://")) and not Path(registry).is_absolute():
            registry = str(self.data_dir / registry)
        self.fees = fees
        self.store = open_store(registry)
        self.store.migrate()
        self.registry_url = registry
        self.committer = GroupCommitter(self.recovery.journal, on_state=self._journal_state)
        self.settler = Settler(registry, resume_after=self.store.last_seq()).start()
        self.settle = _Settle(self.settler, self.exchange.ledger, self.exchange.engine)
        s = cfg.session
        auth = Authenticator(cfg.users(), failures_max=s.failures_max, window_s=s.failure_window_s,
                             lockout_s=s.lockout_s)
        listeners: list[Any] = [self.settle]
        self.md: Any = None
        self.md_task: asyncio.Task[Any] | None = None
        self.md_host, self.md_port, self.md_wanted = md_host, md_port, market_data
        self.server = Server(self.exchange, auth, [m.id for m in cfg.member], s,
                             operator_member=cfg.exchange.operator_member, journal=self.committer.commit,
                             on_events=listeners)
        for events in replayed:
            self.server.rebuild(events)
        self.address: tuple[str, int] = ("", 0)

    def _journal_state(self, ok: bool, reason: str) -> None:
        if ok:
            log.warning("journal available again")
        else:
            log.error("journal unavailable, orders are refused: %s", reason)

    async def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        cfg_host, cfg_port = self.cfg.listen()
        ctx = None
        if self.cfg.exchange.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cfg.exchange.tls_cert, self.cfg.exchange.tls_key)
        if self.md_wanted:
            await self._start_market_data()
        self.address = await self.server.start(cfg_host if host is None else host, cfg_port if port is None else port, ctx)
        return self.address

    async def _start_market_data(self) -> None:
        try:
            from gateway.marketdata import MarketDataPublisher
        except ImportError:
            print("market data: not published (the MQTT publisher is not installed)")
            return
        if not await MarketDataPublisher.probe(self.md_host, self.md_port):
            print(f"market data: not published (no MQTT broker at {self.md_host}:{self.md_port})")
            return
        self.md = MarketDataPublisher(self.exchange.engine, self.md_host, self.md_port)
        self.server.on_events.append(self.md.on_events)
        self.md_task = asyncio.create_task(self.md.run())
        print(f"market data: publishing to mqtt://{self.md_host}:{self.md_port} under etx/v1/md/...")

    async def stop(self) -> None:
        await self.server.stop()
        if self.md is not None:
            self.md.stop()
            if self.md_task is not None:
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.md_task, 5)
        self.committer.close()
        self.recovery.journal.close()
        self.settle([])  # what the last batches left in the outbox
        await asyncio.get_running_loop().run_in_executor(None, self.settler.close)
        self.store.close()

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the exchange's TOML configuration (see etx.example.toml)")
    parser.add_argument("--hash-secret", action="store_true",
                        help="read a secret (typed without echo on a terminal, else one line of standard input) "
                             "and print its secret_hash for the configuration")
    parser.add_argument("--data", default="etx-data", help="folder for the journal (and a relative SQLite registry)")
    parser.add_argument("--listen", default=None, help="HOST:PORT to listen on, overriding exchange.listen")
    parser.add_argument("--mqtt", default="127.0.0.1:1883", help="MQTT broker HOST:PORT for market data")
    parser.add_argument("--no-market-data", action="store_true", help="do not publish market data")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


async def serve(args: argparse.Namespace, cfg: Config) -> int:
    md_host, _, md_port = args.mqtt.rpartition(":")
    service = Service(cfg, args.data, md_host=md_host or "127.0.0.1", md_port=int(md_port or 1883),
                      market_data=not args.no_market_data)
    host = port = None
    if args.listen:
        h, _, p = args.listen.rpartition(":")
        host, port = h or "127.0.0.1", int(p)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addr = await service.start(host, port)
    print(f"etx serving on {addr[0]}:{addr[1]}; registry {service.registry_url}; journal {service.data_dir / 'journal'}",
          flush=True)
    await stop.wait()
    print("etx: shutting down", flush=True)
    await service.stop()
    print(f"etx: stopped after {service.server.commands} commands in {service.server.batches} batches", flush=True)
    return 0


def hash_secret_command() -> int:
    """Print the stored form of a secret. On a terminal the secret is read without echo;
    it is never printed or logged, and one the gateway would refuse at logon (longer
    than ``SECRET_MAX``) is refused here."""
    import getpass
    import sys

    from gateway.auth import SECRET_MAX, hash_secret

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
        cfg = load(args.config)
    except (ConfigError, OSError) as e:
        print(f"etx serve: {args.config}: {e}")
        return 2
    return asyncio.run(serve(args, cfg))

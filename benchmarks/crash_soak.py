"""Crash soak: ``etx serve`` under load from real clients, killed with SIGKILL at random
moments and restarted, with every promise checked after every restart.

Run: ``.venv/bin/python -m benchmarks.crash_soak --kills 200 [--seed N] [--dir PATH]``
(``tests/crash/test_crash.py`` runs the same harness with 20 kills in CI).

``etx serve`` takes snapshots (by default every 1,500 commands, every 0.5 s of
trading, keeping 2,000 reports per member), so restarts start from a snapshot and
replay the journal after it, and the members' streams come from the snapshot's
window; ``--no-snapshots`` replays the whole journal at every start instead.

Each cycle starts ``etx serve`` (a subprocess, plain TCP, SQLite registry in the data
directory), connects the traders (four members) and the registry staff (a clerk and
the authority; the first cycle opens and funds the accounts through them), drives
orders, cancels and deposits for a random time, and kills the process with SIGKILL at
a random moment (and now and then once more while it starts, in the middle of its
recovery). After the restart, once every client has logged on again with the
last outbound sequence it saw:

1. the state hash that ``etx serve`` logged after its recovery equals the hash of a
   clean replay of the journal (in this process, from an empty core) to the same
   sequence number;
2. every order a client saw acknowledged is in the replay with the same order id,
   and the fills each member saw are exactly the replay's trades of its orders (none
   lost, none twice) -- the clients receive what they missed at logon;
3. no client saw a gap or a duplicate in its outbound sequence, and (every
   ``history_every`` cycles) a fresh session of each member replaying its whole
   history from sequence 0 gets exactly the reports seen so far, under the same
   sequence numbers -- from the start of the window a snapshot kept on, announced
   by REPLAY_TRIMMED, and never fewer than that window's reports;
4. the open orders the exchange reports equal the replay's;
5. once settlement caught up with the recovered sequence: the registry audit
   (``settlement.audit``) finds nothing, and the store holds exactly one trade posting
   per trade of the replay.

At the end the exchange is stopped cleanly, the audit is run again against the
replayed ledger, and ``etx journal verify`` must pass. The script prints a summary
(cycles, commands, trades, restart times) and exits 1 if any check failed, printing
each failure with its cycle and the seed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.journal import command_decoder, read_journal
from engine.messages import Accepted, Cancelled, Expired, Rejected, Side, TimeInForce, Trade
from gateway.auth import hash_secret
from gateway.client import Client
from gateway.config import Config, load
from gateway.protocol import CodMode, Fill, GatewayReason, Notice, Report
from gateway.recovery import JOURNAL_DIR, core_factory, journal_command_types
from settlement.audit import audit
from settlement.messages import Allocate, Deposit, HolderType, OpenAccount
from settlement.store import open_store

SYMBOL = "CEA24"
REF = 10_000  # fen
TRADERS = ("M1", "M2", "M3", "M4")
SECRET = "soak-secret"
CASH = 10**13  # fen per member
ALLOWANCES = 10**8  # t per member
WINDOW = 200  # orders a trader may have unanswered
READY_S = 60.0  # a start (recovery included) must listen within this
SETTLE_S = 60.0  # settlement must catch up within this after a restart
SNAPSHOT_EVERY = 1_500  # commands
SNAPSHOT_INTERVAL_S = 0.5
SNAPSHOT_HISTORY = 2_000  # reports per member


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, port: int, *, registry: str = "registry.sqlite",
                 users: tuple[tuple[str, str, str], ...] = (), extra: str = "") -> Path:
    """A config with four trading members, a clerk, the authority and an operator (and
    ``users`` more: (member, user, role)); secrets hashed with a small scrypt cost so
    that logons are quick (the format is the real one). ``extra`` is appended."""
    digest = hash_secret(SECRET, n=1 << 10)
    users = tuple((m, f"t{m}", "trader") for m in TRADERS) + (
        ("EXCH", "clerk", "clerk"), ("EXCH", "auth", "authority"), ("EXCH", "ops", "operator")) + users
    lines = [
        "[exchange]", f'listen = "127.0.0.1:{port}"', f'registry = "{registry}"', 'schedule = "always"',
        'operator_member = "EXCH"', "",
        "[fees]", "trading_rate = 0.0003", "registry_rate = 0.00005", "",
        "[[instrument]]", f'symbol = "{SYMBOL}"', "ref_price = 100.00", "",
    ]
    for m in TRADERS:
        lines += ["[[member]]", f'id = "{m}"', ""]
    for member, user, role in users:
        lines += ["[[user]]", f'member = "{member}"', f'user = "{user}"', f'role = "{role}"',
                  f'secret_hash = "{digest}"', ""]
    path = directory / "etx.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def freeze_code(target: Path) -> Path:
    """A copy of the packages ``etx serve`` runs from, taken at the start, so that a
    long soak in a working tree others edit keeps testing one version of the code
    (the same one this process imported)."""
    root = Path(__file__).resolve().parent.parent
    for package in ("engine", "settlement", "gateway"):
        shutil.copytree(root / package, target / package, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    return target


class Serve:
    """One ``etx serve`` process at a time, its output appended to ``serve.log``."""

    RECOVERED = re.compile(r"last seq (\d+), state hash ([0-9a-f]+)")
    RECOVERED_FROM = re.compile(r"recovered from (?:snapshot \S+ \(seq (\d+)\)|an empty state) and (\d+) journaled")

    def __init__(self, config: Path, data: Path, port: int, code: Path, args: tuple[str, ...] = ()) -> None:
        self.config, self.data, self.port, self.code, self.args = config, data, port, code, args
        self.log = data.parent / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_at = 0
        self.snapshot_seq = 0  # of the last start's recovery (0: none)
        self.replayed = 0

    def start(self) -> None:
        self.start_at = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tools.cli", "serve", "--config", str(self.config), "--data", str(self.data),
                 "--listen", f"127.0.0.1:{self.port}", "--no-market-data", "--log-level", "INFO", *self.args],
                stdout=out, stderr=subprocess.STDOUT, cwd=str(self.code),
            )

    def output(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.start_at)
            return f.read().decode(errors="replace")

    async def ready(self) -> tuple[int, str]:
        """Wait until it listens; (recovered last seq, state hash) from its log."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_S
        while True:
            text = self.output()
            if "etx serving on" in text:
                found = self.RECOVERED.findall(text)
                origin = self.RECOVERED_FROM.findall(text)
                if not found or not origin:
                    raise RuntimeError(f"etx serve logged no recovery line:\n{text[-3000:]}")
                self.snapshot_seq, self.replayed = int(origin[-1][0] or 0), int(origin[-1][1])
                return int(found[-1][0]), found[-1][1]
            if self.proc.poll() is not None:
                raise RuntimeError(f"etx serve exited with {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etx serve did not listen within {READY_S} s:\n{text[-3000:]}")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


class Trader:
    """A member's client and what it saw: acknowledged orders, fills, open orders."""

    def __init__(self, member: str, port: int, rng: random.Random) -> None:
        self.member = member
        self.client = Client("127.0.0.1", port, member, f"t{member}", SECRET, cod=CodMode.OFF,
                             coid_prefix=f"{member}-")
        self.rng = rng
        self.reports: dict[int, Any] = {}  # seq_out -> body
        self.accepted: dict[str, int] = {}  # coid -> order_id
        self.fills: dict[tuple[int, int], Fill] = {}  # (trade_id, order_id) -> fill
        self.duplicates: list[str] = []
        self.open: set[int] = set()
        self.unanswered = 0

    def take(self, msg: Any) -> None:
        if type(msg) is not Report:
            return
        body = msg.body
        if not msg.seq_out:
            # A refusal by the gateway (throttle, journal unavailable): outside the
            # member's sequence, never replayed, and its order was not entered.
            if type(body) is Rejected and body.coid:
                self.unanswered = max(self.unanswered - 1, 0)
            return
        self.reports[msg.seq_out] = body
        t = type(body)
        if t is Accepted:
            self.accepted[body.coid] = body.order_id
            self.open.add(body.order_id)
            self.unanswered = max(self.unanswered - 1, 0)
        elif t is Rejected:
            if body.coid:
                self.unanswered = max(self.unanswered - 1, 0)
        elif t is Fill:
            key = (body.trade_id, body.order_id)
            if key in self.fills:
                self.duplicates.append(f"{self.member}: fill {key} twice")
            self.fills[key] = body
            if not body.leaves:
                self.open.discard(body.order_id)
        elif t is Cancelled or t is Expired:
            self.open.discard(body.order_id)

    def drain(self) -> None:
        q = self.client._inbox
        while not q.empty():
            msg = q.get_nowait()
            if msg is not None:
                self.take(msg)

    async def trade(self) -> None:
        """Orders near the reference price on both sides, some IOC, some cancels."""
        rng, c = self.rng, self.client
        while c.connected:
            self.drain()
            if self.unanswered < WINDOW:
                for _ in range(rng.randint(1, 6)):
                    side = Side.BUY if rng.random() < 0.5 else Side.SELL
                    tif = TimeInForce.IOC if rng.random() < 0.1 else TimeInForce.DAY
                    c.new_order(SYMBOL, side, rng.randint(1, 30), REF + rng.randint(-15, 15), tif=tif)
                    self.unanswered += 1
                if self.open and rng.random() < 0.4:
                    c.cancel(rng.choice(sorted(self.open)))
            await asyncio.sleep(rng.uniform(0.0005, 0.004))


class Replay:
    """A clean replay of the journal from an empty core, advanced as the journal grows."""

    def __init__(self, cfg: Config, journal_dir: Path) -> None:
        self.core = core_factory(cfg)()
        self.journal_dir = journal_dir
        self.decoder = command_decoder(journal_command_types())
        self.accepted: dict[tuple[str, str], int] = {}  # (member, coid) -> order_id
        self.trades: dict[int, Trade] = {}
        self.commands = 0

    def advance(self, upto: int) -> None:
        core = self.core
        for batch in read_journal(self.journal_dir, self.decoder, core.last_seq):
            if batch[0].seq > upto:
                break
            part = batch[: upto - batch[0].seq + 1]
            core.apply_batch(part)
            self.commands += len(part)
            for ev in core.out:
                t = type(ev)
                if t is Accepted:
                    self.accepted[ev.member, ev.coid] = ev.order_id
                elif t is Trade:
                    self.trades[ev.trade_id] = ev
            core.out.clear()
        core.ledger.take_postings()
        if core.last_seq != upto:
            raise AssertionError(f"the journal ends at seq {core.last_seq}, the exchange recovered to {upto}")

    def fills_of(self, member: str) -> set[tuple[int, int]]:
        out = set()
        for t in self.trades.values():
            if t.maker_member == member:
                out.add((t.trade_id, t.maker_order_id))
            if t.taker_member == member:
                out.add((t.trade_id, t.taker_order_id))
        return out


class Soak:
    def __init__(self, kills: int, seed: int, workdir: Path, history_every: int = 1, load_s: float = 0.6,
                 say: Any = print, snapshots: bool = True, snapshot_every: int = SNAPSHOT_EVERY,
                 snapshot_interval_s: float = SNAPSHOT_INTERVAL_S, snapshot_history: int = SNAPSHOT_HISTORY) -> None:
        self.kills, self.seed, self.history_every, self.load_s, self.say = kills, seed, history_every, load_s, say
        self.snapshots = snapshots
        self.window = snapshot_history if snapshots else 1 << 62  # reports per member a restart keeps at least
        serve_args = (("--snapshot-every", str(snapshot_every), "--snapshot-interval", str(snapshot_interval_s),
                       "--snapshot-history", str(snapshot_history)) if snapshots else ("--no-snapshots",))
        self.rng = random.Random(seed)
        self.port = free_port()
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config_path = write_config(workdir, self.port)
        self.cfg = load(self.config_path)
        self.serve = Serve(self.config_path, self.data, self.port, freeze_code(workdir / "code"), serve_args)
        self.replay = Replay(self.cfg, self.data / JOURNAL_DIR)
        self.traders = [Trader(m, self.port, random.Random(self.rng.random())) for m in TRADERS]
        self.clerk = Client("127.0.0.1", self.port, "EXCH", "clerk", SECRET, cod=CodMode.OFF, coid_prefix="clerk-")
        self.auth = Client("127.0.0.1", self.port, "EXCH", "auth", SECRET, cod=CodMode.OFF, coid_prefix="auth-")
        self.staff_reports: dict[int, Any] = {}
        self.problems: list[str] = []
        self.restart_s: list[float] = []
        self.recovered_seq: list[int] = []
        self.from_snapshot: list[int] = []  # snapshot seq of each restart (0: replayed from seq 1)
        self.replayed: list[int] = []  # journaled commands each restart replayed
        self.trimmed = 0  # history checks that began with REPLAY_TRIMMED
        self.startup_kills = 0
        self.cycle = 0

    def problem(self, text: str) -> None:
        self.problems.append(f"cycle {self.cycle} (seed {self.seed}): {text}")

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as e:  # the harness or the exchange stopped answering: say why
            self.problem(f"the soak stopped: {e!r}\n--- serve log ---\n{self.serve.output()[-3000:]}")

    async def _run(self) -> None:
        self.serve.start()
        await self.serve.ready()
        await self.connect_all()
        await self.fund()
        for cycle in range(1, self.kills + 1):
            self.cycle = cycle
            await self.load_and_kill()
            if self.rng.random() < 0.15:
                # Also die during the start: recovery itself must be safe to interrupt.
                self.serve.start()
                await asyncio.sleep(self.rng.uniform(0.0, 0.4))
                self.serve.kill()
                self.startup_kills += 1
            started = time.monotonic()
            self.serve.start()
            seq, digest = await self.serve.ready()
            self.restart_s.append(time.monotonic() - started)
            self.recovered_seq.append(seq)
            self.from_snapshot.append(self.serve.snapshot_seq)
            self.replayed.append(self.serve.replayed)
            await self.connect_all()
            await self.check(seq, digest)
            if self.cycle % 10 == 0 or self.cycle == self.kills:
                self.say(f"cycle {self.cycle}/{self.kills}: recovered seq {seq} "
                         f"(snapshot {self.serve.snapshot_seq}, {self.serve.replayed} replayed), "
                         f"restart {self.restart_s[-1]:.2f} s, {len(self.replay.trades)} trades, "
                         f"{len(self.problems)} problems")
        await self.finish()

    async def connect_all(self) -> None:
        for c in [t.client for t in self.traders] + [self.clerk, self.auth]:
            await c.reconnect(timeout=30)
        await self.settle()

    async def settle(self) -> None:
        """A query round trip per client: the replies come after every report queued
        before them, so the clients have everything once these return."""
        for t in self.traders:
            await t.client.query_instruments(timeout=30)
            t.drain()
        for c in (self.clerk, self.auth):
            await c.query_instruments(timeout=30)
            self._drain_staff(c)

    def _drain_staff(self, c: Client) -> None:
        q = c._inbox
        while not q.empty():
            msg = q.get_nowait()
            if type(msg) is Report and msg.seq_out:  # seq_out 0: a gateway refusal, not numbered
                self.staff_reports[msg.seq_out] = msg.body

    async def fund(self) -> None:
        for m in TRADERS:
            self.clerk.send(OpenAccount("", m, int(HolderType.COMPLIANCE), f"{m} Ltd"))
            self.clerk.send(Deposit("", m, CASH))
        await self.settle()
        for m in TRADERS:
            self.auth.send(Allocate("", "AUTHORITY", m, SYMBOL, ALLOWANCES))
        await self.settle()

    async def load_and_kill(self) -> None:
        tasks = [asyncio.create_task(t.trade()) for t in self.traders]
        deadline = time.monotonic() + self.rng.uniform(0.02, self.load_s)
        while time.monotonic() < deadline:
            if self.rng.random() < 0.05:
                self.clerk.send(Deposit("", self.rng.choice(TRADERS), self.rng.randint(1, 10**6)))
            await asyncio.sleep(0.01)
        self.serve.kill()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in self.traders:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t.client._drop(), 5)
            t.drain()
            t.unanswered = 0
        for c in (self.clerk, self.auth):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c._drop(), 5)
            self._drain_staff(c)

    async def check(self, seq: int, digest: str) -> None:
        replay = self.replay
        try:
            replay.advance(seq)
        except Exception as e:
            self.problem(f"clean replay failed: {e!r}")
            return
        if replay.core.state_hash() != digest:
            self.problem(f"recovered state hash {digest} differs from the clean replay's {replay.core.state_hash()} "
                         f"at seq {seq}")
        for t in self.traders:
            c = t.client
            if c.anomalies:
                self.problem(f"{t.member}: outbound sequence anomalies {c.anomalies[:5]}")
                c.anomalies.clear()
            if t.duplicates:
                self.problem(f"duplicates: {t.duplicates[:5]}")
                t.duplicates.clear()
            want = {coid: oid for (m, coid), oid in replay.accepted.items() if m == t.member}
            if t.accepted != want:
                lost = sorted(set(t.accepted.items()) - set(want.items()))[:5]
                unseen = sorted(set(want.items()) - set(t.accepted.items()))[:5]
                self.problem(f"{t.member}: acknowledged orders differ from the journal: acked but not journaled "
                             f"{lost}, journaled but never reported {unseen}")
            fills = set(t.fills)
            want_fills = replay.fills_of(t.member)
            if fills != want_fills:
                self.problem(f"{t.member}: fills differ: seen only {sorted(fills - want_fills)[:5]}, "
                             f"in the journal only {sorted(want_fills - fills)[:5]}")
            for (trade_id, _), f in t.fills.items():
                tr = replay.trades.get(trade_id)
                if tr is not None and (tr.price, tr.qty) != (f.price, f.qty):
                    self.problem(f"{t.member}: fill of trade {trade_id} is {f.qty} at {f.price}, "
                                 f"the journal says {tr.qty} at {tr.price}")
            try:
                open_orders = await c.query_orders(timeout=30)
            except Exception as e:
                self.problem(f"{t.member}: query_orders failed: {e!r}")
                continue
            got = {(o.order_id, o.qty) for o in open_orders}
            live = {(o.order_id, o.qty) for o in replay.core.engine.orders.values() if o.member == t.member}
            if got != live:
                self.problem(f"{t.member}: open orders differ from the replay: {sorted(got ^ live)[:5]}")
        if self.cycle % self.history_every == 0 or self.cycle == self.kills:
            await self.check_history()
        await self.check_settlement(seq)

    async def check_history(self) -> None:
        """A fresh session of each member replays its whole history from 0: after a
        restart from a snapshot, from the start of the window the snapshot kept."""
        for t in self.traders:
            fresh = Client("127.0.0.1", self.port, t.member, f"t{t.member}", SECRET, cod=CodMode.OFF,
                           coid_prefix=f"{t.member}-check-")
            trimmed = False
            try:
                ack = await fresh.connect(timeout=30)
                await fresh.query_instruments(timeout=30)
                seen: dict[int, Any] = {}
                while not fresh._inbox.empty():
                    msg = fresh._inbox.get_nowait()
                    if type(msg) is Report and msg.seq_out:
                        seen[msg.seq_out] = msg.body
                    elif type(msg) is Notice and msg.code == GatewayReason.REPLAY_TRIMMED:
                        trimmed = not seen  # only ever before the first report
            finally:
                await fresh.close()
            first = min(seen, default=ack.next_seq + 1)
            anomalies = fresh.anomalies
            if trimmed:
                self.trimmed += 1
                # The one jump the trim announced, from 0 to the first report kept.
                if anomalies[:1] == [f"seq_out {first} after 0"]:
                    anomalies = anomalies[1:]
                kept = ack.next_seq - first + 1
                if kept < min(self.window, ack.next_seq):
                    self.problem(f"{t.member}: the replay kept {kept} of {ack.next_seq} reports, "
                                 f"fewer than the snapshot window of {self.window}")
            elif first != 1 and ack.next_seq:
                self.problem(f"{t.member}: history replay from 0 began at {first} without REPLAY_TRIMMED")
            if anomalies:
                self.problem(f"{t.member}: history replay anomalies {anomalies[:5]}")
            if len(seen) != ack.next_seq - first + 1:
                self.problem(f"{t.member}: history replay gave {len(seen)} reports for seq_out {first}.."
                             f"{ack.next_seq}")
            for seq_out, body in t.reports.items():
                if seq_out >= first and seen.get(seq_out) != body:
                    self.problem(f"{t.member}: report {seq_out} was {body!r}, the replayed history has "
                                 f"{seen.get(seq_out)!r}")
                    break

    async def check_settlement(self, seq: int) -> None:
        store = open_store(str(self.data / "registry.sqlite"))
        try:
            deadline = time.monotonic() + SETTLE_S
            while store.last_seq() < seq:
                if time.monotonic() > deadline:
                    self.problem(f"settlement did not reach seq {seq} within {SETTLE_S} s "
                                 f"(store at {store.last_seq()})")
                    return
                await self.settle()  # queries keep batches, and so the registry writer, going
                await asyncio.sleep(0.05)
            problems = audit(store)
            if problems:
                self.problem(f"registry audit: {problems[:5]}")
            ids = [p.posting_id for p in store.postings() if p.kind == "trade"]
            settled = {int(i[1:]) for i in ids}
            if len(ids) != len(settled):
                self.problem(f"{len(ids) - len(settled)} trades settled twice")
            # No load runs between the restart and this check, so the journal holds
            # exactly the trades there are; postings exist only for journaled commands.
            want = set(self.replay.trades)
            if settled != want:
                self.problem(f"settled trades differ from the journal's: not settled {sorted(want - settled)[:5]}, "
                             f"settled but not journaled {sorted(settled - want)[:5]}")
        finally:
            store.close()

    async def finish(self) -> None:
        for c in [t.client for t in self.traders] + [self.clerk, self.auth]:
            with contextlib.suppress(Exception):
                await c.close()
        code = self.serve.stop()
        if code != 0:
            self.problem(f"etx serve exited with {code} on SIGTERM:\n{self.serve.output()[-2000:]}")
        last = 0
        for batch in read_journal(self.data / JOURNAL_DIR, self.replay.decoder, 0):
            last = batch[-1].seq
        self.replay.advance(last)
        store = open_store(str(self.data / "registry.sqlite"))
        try:
            problems = audit(store, ledger=self.replay.core.ledger)
            if problems:
                self.problem(f"final audit against the replayed ledger: {problems[:5]}")
        finally:
            store.close()
        result = subprocess.run([sys.executable, "-m", "tools.cli", "journal", "verify", str(self.data)],
                                capture_output=True, text=True, cwd=str(self.serve.code))
        if result.returncode != 0:
            self.problem(f"etx journal verify failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def summary(self) -> str:
        rs = sorted(self.restart_s)
        median = rs[len(rs) // 2] if rs else 0.0
        replayed = sorted(self.replayed)
        from_snapshot = sum(1 for s in self.from_snapshot if s)
        return (f"{self.kills} kills under load and {self.startup_kills} during a start, seed {self.seed}: {self.replay.commands} journaled commands, "
                f"{len(self.replay.trades)} trades, {sum(len(t.accepted) for t in self.traders)} orders acknowledged; "
                f"restart (process start + recovery + listen) median {median:.2f} s, max {max(rs, default=0):.2f} s; "
                f"{from_snapshot} of {len(self.from_snapshot)} restarts from a snapshot, replaying "
                f"median {replayed[len(replayed) // 2] if replayed else 0} and at most {max(replayed, default=0)} "
                f"journaled commands; {self.trimmed} history replays trimmed to a snapshot's window; "
                f"{len(self.problems)} problems")


async def soak(kills: int, seed: int, workdir: Path, **kw: Any) -> Soak:
    s = Soak(kills, seed, workdir, **kw)
    try:
        await s.run()
    finally:
        if s.serve.proc is not None and s.serve.proc.poll() is None:
            s.serve.kill()
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.crash_soak", description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    p.add_argument("--dir", help="work directory (default: a new temporary one, kept)")
    p.add_argument("--history-every", type=int, default=10, help="replay whole histories every N cycles")
    p.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY, help="etx serve's --snapshot-every")
    p.add_argument("--snapshot-interval", type=float, default=SNAPSHOT_INTERVAL_S,
                   help="etx serve's --snapshot-interval")
    p.add_argument("--snapshot-history", type=int, default=SNAPSHOT_HISTORY, help="etx serve's --snapshot-history")
    p.add_argument("--no-snapshots", action="store_true", help="etx serve without snapshots")
    args = p.parse_args(argv)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="etx-soak-"))
    print(f"crash soak: {args.kills} kills, seed {args.seed}, in {workdir}", flush=True)
    started = time.monotonic()
    s = asyncio.run(soak(args.kills, args.seed, workdir, history_every=args.history_every,
                         say=lambda line: print(line, flush=True), snapshots=not args.no_snapshots,
                         snapshot_every=args.snapshot_every, snapshot_interval_s=args.snapshot_interval,
                         snapshot_history=args.snapshot_history))
    for line in s.problems:
        print(f"PROBLEM {line}")
    print(s.summary())
    print(f"elapsed {time.monotonic() - started:.0f} s")
    return 1 if s.problems else 0


if __name__ == "__main__":
    sys.exit(main())

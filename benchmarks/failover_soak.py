"""Failover soak: two ``etx serve`` nodes on a real three-node NATS JetStream cluster, the
primary killed (SIGKILL) under load from real member clients again and again.

Each cycle: the members trade against the primary for ``--load-s``; the primary is
killed; the standby takes the lease and starts its gateway; every member reconnects (its
client tries the other address) and logs on with its last seq; one member's order is
acknowledged by the new primary (the time from the kill to that acknowledgement is the
cycle's figure); the killed node is started again as the standby (it catches up from the
stream). Every cycle is checked: no member saw a report twice or missed one (its
sequence numbers run 1..n with no gap), no fill twice. At the end: every order any
member saw acknowledged and every fill is in the last primary's journal (replayed from
an empty core), the registry audit is clean on both nodes' stores, the journal verifies
on both, and no standby ever saw a state hash differ from the primary's.

    python -m benchmarks.failover_soak --failovers 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.crash_soak import SECRET, SYMBOL, TRADERS, Replay, Serve, Trader, free_port, write_config
from benchmarks.natscluster import NatsCluster
from engine.messages import Accepted, Side
from gateway.client import Client
from gateway.config import load
from gateway.protocol import CodMode, Report
from gateway.recovery import JOURNAL_DIR
from settlement import Allocate, Deposit, HolderType, OpenAccount, RegistryDone

ROOT = Path(__file__).resolve().parent.parent


def replication(node: str, urls: list[str], lease_s: float) -> str:
    servers = ", ".join(f'"{u}"' for u in urls)
    return (f"[replication]\nenabled = true\nservers = [{servers}]\nreplicas = 3\nnode = \"{node}\"\n"
            f"lease_s = {lease_s}\nconfirm_s = 10\ncheck_s = 0.2\n")


class Node:
    def __init__(self, workdir: Path, name: str, urls: list[str], lease_s: float) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.data = self.dir / "data"
        self.data.mkdir()
        self.config = write_config(self.dir, self.port, extra=replication(name, urls, lease_s))
        self.serve: Serve | None = None

    def start(self, standby: bool) -> None:
        self.serve = Serve(self.config, self.data, self.port, ROOT, ("--standby",) if standby else ())
        self.serve.start()

    async def wait_for(self, text: str, timeout_s: float = 60) -> None:
        """Until this start's log says ``text``; RuntimeError if it exits first."""
        assert self.serve is not None and self.serve.proc is not None
        started = time.monotonic()
        while text not in self.serve.output():
            if self.serve.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.serve.output()[-3000:]}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{self.name} did not log {text!r}:\n{self.serve.output()[-3000:]}")
            await asyncio.sleep(0.01)


async def start_pair(workdir: Path, urls: list[str], lease_s: float = 1.5, standby: bool = True) -> list[Node]:
    """A primary ``a`` listening (and, with ``standby``, ``b`` following it), members funded."""
    nodes = [Node(workdir, "a", urls, lease_s)]
    nodes[0].start(standby=False)
    await nodes[0].wait_for("etx serving on")
    if standby:
        nodes.append(Node(workdir, "b", urls, lease_s))
        nodes[1].start(standby=True)
        await nodes[1].wait_for("following stream")
    await fund(nodes[0].port)
    return nodes


def etx(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


async def fund(port: int) -> None:
    from tests.integration.exchange import staff_command

    clerk = Client("127.0.0.1", port, "EXCH", "clerk", SECRET, cod=CodMode.OFF)
    auth = Client("127.0.0.1", port, "EXCH", "auth", SECRET, cod=CodMode.OFF)
    await clerk.connect()
    await auth.connect()
    for m in TRADERS:
        for who, cmd in ((clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), m)),
                         (clerk, Deposit("", m, 100_000_000_000)),
                         (auth, Allocate("", "AUTHORITY", m, SYMBOL, 10_000_000))):
            answer = await staff_command(who, cmd)
            if type(answer) is not RegistryDone:
                raise RuntimeError(f"funding refused: {answer}")
    await clerk.close()
    await auth.close()


async def reconnect(client: Client, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.connect(timeout=2)
            await asyncio.wait_for(client.replay_done.wait(), timeout_s)
            return
        except (OSError, TimeoutError, Exception):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def acknowledged(trader: Trader, coid: str, timeout_s: float = 30) -> None:
    """Until the order's Accepted arrives; every message on the way goes to the trader."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            msg = await trader.client.next(max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            raise RuntimeError(f"{trader.member}: no acknowledgement of {coid} in {timeout_s} s") from None
        if msg is None:
            continue
        trader.take(msg)
        if isinstance(msg, Report) and isinstance(msg.body, Accepted) and msg.body.coid == coid:
            return


def check_streams(traders: list[Trader], problems: list[str], where: str) -> None:
    for t in traders:
        t.drain()
        if t.duplicates:
            problems.append(f"{where}: {t.duplicates[:3]}")
            t.duplicates.clear()
        seqs = sorted(t.reports)
        if seqs != list(range(1, len(seqs) + 1)):
            missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))[:5] if seqs else []
            problems.append(f"{where}: {t.member} is missing reports {missing}")


async def soak(failovers: int, load_s: float, lease_s: float, workdir: Path, seed: int,
               cluster: NatsCluster) -> dict[str, Any]:
    nodes = await start_pair(workdir, cluster.urls, lease_s)
    primary, standby = nodes
    rng = random.Random(seed)
    traders = [Trader(m, primary.port, random.Random(rng.random())) for m in TRADERS]
    for t in traders:
        t.client.alternates = [("127.0.0.1", standby.port)]
        await t.client.connect()
    problems: list[str] = []
    takeover: list[float] = []
    for cycle in range(1, failovers + 1):
        tasks = [asyncio.create_task(t.trade()) for t in traders]
        await asyncio.sleep(load_s)
        assert primary.serve is not None
        killed = time.monotonic()
        primary.serve.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in traders:
            await t.client.close()
            t.drain()
        # The first order the new primary acknowledges.
        first = traders[0]
        await reconnect(first.client)
        coid = first.client.new_order(SYMBOL, Side.BUY, 1, 9_000)
        await acknowledged(first, coid)
        takeover.append(time.monotonic() - killed)
        for t in traders[1:]:
            await reconnect(t.client)
        check_streams(traders, problems, f"cycle {cycle}")
        await standby.wait_for("etx serving on")
        primary, standby = standby, primary
        standby.start(standby=True)  # the killed node follows the new primary
        await standby.wait_for("following stream")
        for t in traders:
            t.client.alternates = [("127.0.0.1", standby.port)]
        print(f"failover {cycle}: the new primary {primary.name} acknowledged an order "
              f"{takeover[-1]:.2f} s after the kill", flush=True)
    for t in traders:
        await t.client.close()
        t.drain()
    check_streams(traders, problems, "the end")
    assert primary.serve is not None and standby.serve is not None
    if primary.serve.stop() != 0:
        problems.append("the last primary did not stop cleanly")
    standby.serve.stop()
    replay = Replay(load(primary.config), primary.data / JOURNAL_DIR)
    replay.advance(journal_end(primary.data))
    for t in traders:
        seen = {(t.member, coid) for coid in t.accepted}
        lost = seen - set(replay.accepted)
        if lost:
            problems.append(f"{t.member}: acknowledged orders not in the journal: {sorted(lost)[:5]}")
        if set(t.fills) != replay.fills_of(t.member):
            problems.append(f"{t.member}: fills differ from the journal's")
    checks = 0
    for node in nodes:
        assert node.serve is not None
        log = (node.dir / "serve.log").read_text(errors="replace")
        checks += log.count("equals the primary's")
        if "differs from the primary's" in log:
            problems.append(f"{node.name}: a state hash differed from the primary's")
        audit = etx("registry", "--data", str(node.data), "audit")
        if audit.returncode != 0:
            problems.append(f"{node.name}: registry audit: {audit.stdout[-500:]}{audit.stderr[-500:]}")
        verify = etx("journal", "verify", str(node.data), "--config", str(node.config))
        if verify.returncode != 0:
            problems.append(f"{node.name}: journal verify: {verify.stdout[-500:]}{verify.stderr[-500:]}")
    return {"failovers": failovers, "takeover_s": takeover, "problems": problems, "hash_checks": checks,
            "orders": sum(len(t.accepted) for t in traders), "commands": replay.commands}


def journal_end(data: Path) -> int:
    from engine.journal import command_decoder, read_journal
    from gateway.recovery import journal_command_types

    last = 0
    for batch in read_journal(data / JOURNAL_DIR, command_decoder(journal_command_types()), 0):
        last = batch[-1].seq
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--failovers", type=int, default=50)
    p.add_argument("--load-s", type=float, default=0.5, help="seconds of trading before each kill")
    p.add_argument("--lease-s", type=float, default=1.5, help="the primary's lease")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="etx-failover-"))
    cluster = NatsCluster(workdir / "nats", 3)  # its readiness check runs an event loop of its own
    try:
        result = asyncio.run(soak(args.failovers, args.load_s, args.lease_s, workdir, args.seed, cluster))
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    t = result["takeover_s"]
    print(f"{result['failovers']} failovers, {result['orders']} orders acknowledged, {result['commands']} commands "
          f"journaled, {result['hash_checks']} state-hash checks equal")
    print(f"kill to the first order acknowledged by the new primary: median {statistics.median(t):.2f} s, "
          f"max {max(t):.2f} s, min {min(t):.2f} s (lease {args.lease_s} s)")
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    print("all checks passed" if not result["problems"] else f"{len(result['problems'])} problems")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

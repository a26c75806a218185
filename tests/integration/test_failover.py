"""No single machine stops the market (issue 15): two real ``etx serve`` processes on a
real three-node NATS JetStream cluster (private ports and folders, started by the test).
The primary appends every batch to the replicated stream before its own journal; the
standby follows, applying each batch to its own core, journal and registry store, and
checks its state hash against the primary's. The primary is killed (SIGKILL) under load
from real member clients: the standby takes the lease, starts its gateway, and the
members reconnect to it (their clients try the other address) and log on with their
last seq: every acknowledged order and fill is there, no report is missing or twice."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.crash_soak import SECRET, SYMBOL, TRADERS, Replay, Serve, Trader, free_port, write_config
from benchmarks.natscluster import NatsCluster
from engine.messages import Accepted, Side
from gateway.client import Client, LogonError
from gateway.config import load
from gateway.credentials import Credentials, write_file
from gateway.protocol import CodMode, GatewayReason, Report
from gateway.recovery import JOURNAL_DIR
from settlement import Allocate, Deposit, HolderType, OpenAccount, RegistryDone
from tests.integration.exchange import ROOT, etx, run, staff_command


def replication(node: str, urls: list[str]) -> str:
    servers = ", ".join(f'"{u}"' for u in urls)
    return (f"[replication]\nenabled = true\nservers = [{servers}]\nreplicas = 3\nnode = \"{node}\"\n"
            "lease_s = 1.5\nconfirm_s = 10\ncheck_s = 0.2\n")


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    c = NatsCluster(tmp_path / "nats", 3)
    yield c
    c.stop()


class Node:
    def __init__(self, tmp_path: Path, name: str, urls: list[str], *args: str) -> None:
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.port = free_port()
        self.data = self.dir / "data"
        self.data.mkdir()
        self.config = write_config(self.dir, self.port, extra=replication(name, urls))
        self.serve = Serve(self.config, self.data, self.port, ROOT, args)

    async def wait_for(self, text: str, timeout_s: float = 60) -> float:
        started = time.monotonic()
        while text not in self.serve.output():
            assert self.serve.proc is not None
            if self.serve.proc.poll() is not None:
                raise AssertionError(f"{self.dir.name} exited:\n{self.serve.output()[-3000:]}")
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{self.dir.name} did not log {text!r}:\n{self.serve.output()[-3000:]}")
            await asyncio.sleep(0.02)
        return time.monotonic() - started


async def fund(port: int) -> None:
    clerk = Client("127.0.0.1", port, "EXCH", "clerk", SECRET, cod=CodMode.OFF)
    auth = Client("127.0.0.1", port, "EXCH", "auth", SECRET, cod=CodMode.OFF)
    await clerk.connect()
    await auth.connect()
    for m in TRADERS:
        for who, cmd in ((clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), m)),
                         (clerk, Deposit("", m, 10_000_000_000)), (auth, Allocate("", "AUTHORITY", m, SYMBOL, 1_000_000))):
            assert type(await staff_command(who, cmd)) is RegistryDone
    await clerk.close()
    await auth.close()


def test_the_standby_takes_over_a_killed_primary_and_loses_nothing_acknowledged(tmp_path: Path,
                                                                                 cluster: NatsCluster) -> None:
    async def main() -> None:
        a = Node(tmp_path, "a", cluster.urls)
        b = Node(tmp_path, "b", cluster.urls, "--standby")
        a.serve.start()
        await a.serve.ready()
        b.serve.start()
        await b.wait_for("following stream")
        await fund(a.port)
        rng = random.Random(15)
        traders = [Trader(m, a.port, random.Random(rng.random())) for m in TRADERS]
        for t in traders:
            t.client.alternates = [("127.0.0.1", b.port)]
            await t.client.connect()
        tasks = [asyncio.create_task(t.trade()) for t in traders]
        await asyncio.sleep(2.0)
        for t in traders:
            t.drain()
        acknowledged = {(t.member, coid) for t in traders for coid in t.accepted}
        assert len(acknowledged) > 50
        # The standby answers the staff's queries from its own core, and takes no command
        # and no member.
        clerk_b = Client("127.0.0.1", b.port, "EXCH", "clerk", SECRET, cod=CodMode.OFF)
        await clerk_b.connect()
        on_b = {(x.account, x.asset) for x in (await clerk_b.query_balances("M1")).balances}
        assert ("M1", "CEA24") in on_b and ("M1", "CNY") in on_b, on_b
        await clerk_b.replay_done.wait()  # the clerk's own reports, rebuilt from the stream
        clerk_b.send(Deposit("", "M1", 1))
        refused = (await clerk_b.wait_for(lambda m: isinstance(m, Report) and m.seq_out == 0)).body
        assert refused.reason == GatewayReason.NOT_PERMITTED and "standby" in refused.text, refused
        await clerk_b.close()
        with pytest.raises(LogonError, match="standby"):
            await Client("127.0.0.1", b.port, "M1", "tM1", SECRET, cod=CodMode.OFF).connect()
        view = etx("ops", "cluster", "--config", str(a.config))
        assert view.returncode == 0, view.stdout + view.stderr
        assert "primary: a (" in view.stdout and "standby b: at seq" in view.stdout, view.stdout
        assert "stream ETX-ETX: 3 replicas" in view.stdout, view.stdout
        killed_at = time.monotonic()
        a.serve.kill()  # SIGKILL under load
        await asyncio.gather(*tasks, return_exceptions=True)
        await b.wait_for("etx serving on")
        takeover_s = time.monotonic() - killed_at
        for t in traders:
            await t.client.close()
            await t.client.connect()  # the killed address first, then the standby's
            assert t.client.port == b.port
            await asyncio.wait_for(t.client.replay_done.wait(), 30)
            t.drain()
        # An order sent again with its client order id after the failover is not
        # entered twice: the new primary answers with the report it already has.
        first = traders[0]
        again = sorted(first.accepted)[0]
        first.client.new_order(SYMBOL, Side.BUY, 1, 9_000, coid=again)
        resent = await first.client.wait_for(lambda m: type(m).__name__ == "Resent", 10)
        assert isinstance(resent.body, Accepted) and resent.body.coid == again
        # The registry operations acknowledged before the kill are there too.
        balances = {b.asset: b.balance for b in (await first.client.query_balances()).balances}
        assert balances.get("CEA24", 0) > 0 and balances.get("CNY", 0) > 0, balances
        # The new primary takes orders.
        coid = first.client.new_order(SYMBOL, Side.BUY, 1, 9_000)
        rep = await first.client.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Accepted)
                                          and m.body.coid == coid, 10)
        assert rep.seq_out > 0
        for t in traders:
            await t.client.close()
            t.drain()
        assert b.serve.stop() == 0

        cfg = load(b.config)
        replay = Replay(cfg, b.data / JOURNAL_DIR)
        replay.advance(_journal_end(b.data))
        for t in traders:
            assert not t.duplicates, t.duplicates
            seqs = sorted(t.reports)
            assert seqs == list(range(1, len(seqs) + 1)), f"{t.member}: reports missing in {seqs[:5]}..{seqs[-5:]}"
            assert set(t.fills) == replay.fills_of(t.member), t.member
        assert acknowledged <= set(replay.accepted), acknowledged - set(replay.accepted)
        log = b.serve.output()
        assert "equals the primary's" in log, log[-3000:]
        assert "differs from the primary's" not in log
        for node in (a, b):  # the killed primary's store is the projection of its own journal too
            audit = etx("registry", "--data", str(node.data), "audit")
            assert audit.returncode == 0, audit.stdout + audit.stderr
        verify = etx("journal", "verify", str(b.data), "--config", str(b.config))
        assert verify.returncode == 0 and "state hash matches the replay" in verify.stdout, verify.stdout
        print(f"takeover after the kill: {takeover_s:.2f} s")

    run(main())


def _journal_end(data: Path) -> int:
    from engine.journal import command_decoder, read_journal
    from gateway.recovery import journal_command_types

    last = 0
    for batch in read_journal(data / JOURNAL_DIR, command_decoder(journal_command_types()), 0):
        last = batch[-1].seq
    return last


def test_a_partitioned_old_primary_cannot_append_and_steps_down(tmp_path: Path, cluster: NatsCluster) -> None:
    async def main() -> None:
        a = Node(tmp_path, "a", cluster.urls)
        b = Node(tmp_path, "b", cluster.urls, "--standby")
        a.serve.start()
        await a.serve.ready()
        b.serve.start()
        await b.wait_for("following stream")
        await fund(a.port)
        assert a.serve.proc is not None
        a.serve.proc.send_signal(signal.SIGSTOP)  # cut off: no renewal, no append
        await b.wait_for("etx serving on")
        trader = Client("127.0.0.1", b.port, "M1", "tM1", SECRET, cod=CodMode.OFF)
        await trader.connect()
        coid = trader.new_order(SYMBOL, Side.SELL, 5, 10_000)
        await trader.wait_for(lambda m: isinstance(m, Report) and getattr(m.body, "coid", "") == coid, 10)
        a.serve.proc.send_signal(signal.SIGCONT)
        # Its next publish is refused by the stream, its next renewal by the lease: it stops.
        assert a.serve.proc.wait(30) == 1
        assert "no longer the primary" in a.serve.output()
        await trader.close()
        assert b.serve.stop() == 0
        verify = etx("journal", "verify", str(b.data), "--config", str(b.config))
        assert verify.returncode == 0, verify.stdout + verify.stderr

    run(main())


def test_a_killed_jetstream_node_leaves_the_exchange_running(tmp_path: Path, cluster: NatsCluster) -> None:
    async def main() -> None:
        a = Node(tmp_path, "a", cluster.urls)
        a.serve.start()
        await a.serve.ready()
        await fund(a.port)
        cluster.kill(0)
        trader = Client("127.0.0.1", a.port, "M1", "tM1", SECRET, cod=CodMode.OFF)
        await trader.connect()
        for i in range(20):
            coid = trader.new_order(SYMBOL, Side.SELL, 1, 10_000 + i)
            rep = await trader.wait_for(lambda m, c=coid: isinstance(m, Report) and getattr(m.body, "coid", "") == c,
                                        20)
            assert isinstance(rep.body, Accepted), rep
        await trader.close()
        assert a.serve.stop() == 0
        # With the exchange stopped, a registry operation would be journaled here alone,
        # outside the stream: refused.
        creds = write_file(a.dir / "clerk.cred", Credentials("EXCH", "clerk", SECRET))
        offline = etx("registry", "--data", str(a.data), "--credentials", str(creds), "deposit", "M1", "1")
        assert offline.returncode == 2 and "replication is enabled" in offline.stderr, offline.stdout + offline.stderr

    run(main())


def test_a_primary_stopped_on_purpose_hands_over_to_the_standby(tmp_path: Path, cluster: NatsCluster) -> None:
    """A planned switchover: the primary journals and publishes what it took, releases its
    lease and exits 0; the standby takes over with every command, without waiting for the
    lease to run out."""
    async def main() -> None:
        a = Node(tmp_path, "a", cluster.urls)
        b = Node(tmp_path, "b", cluster.urls, "--standby")
        a.serve.start()
        await a.serve.ready()
        b.serve.start()
        await b.wait_for("following stream")
        await fund(a.port)
        trader = Client("127.0.0.1", a.port, "M1", "tM1", SECRET, cod=CodMode.OFF, alternates=[("127.0.0.1", b.port)])
        await trader.connect()
        coids = [trader.new_order(SYMBOL, Side.SELL, 1, 10_000 + i) for i in range(10)]
        await trader.wait_for(lambda m: isinstance(m, Report) and getattr(m.body, "coid", "") == coids[-1], 10)
        seen = trader.last_seq
        await trader.close()
        assert a.serve.stop() == 0
        assert "released the lease" in a.serve.output()
        await b.wait_for("etx serving on")
        await trader.connect()
        assert trader.port == b.port and trader.ack is not None and trader.ack.next_seq == seen
        coid = trader.new_order(SYMBOL, Side.SELL, 1, 10_100)
        rep = await trader.wait_for(lambda m: isinstance(m, Report) and getattr(m.body, "coid", "") == coid, 10)
        assert isinstance(rep.body, Accepted) and rep.seq_out == seen + 1
        await trader.close()
        assert b.serve.stop() == 0

    run(main())


def test_the_standby_follows_through_a_lost_jetstream_server_and_still_takes_over(tmp_path: Path,
                                                                                   cluster: NatsCluster) -> None:
    async def main() -> None:
        a = Node(tmp_path, "a", cluster.urls)
        b = Node(tmp_path, "b", cluster.urls, "--standby")
        a.serve.start()
        await a.serve.ready()
        b.serve.start()
        await b.wait_for("following stream")
        await fund(a.port)
        cluster.kill(0)  # whichever server each node is connected to, both carry on
        trader = Client("127.0.0.1", a.port, "M1", "tM1", SECRET, cod=CodMode.OFF, alternates=[("127.0.0.1", b.port)])
        await trader.connect()
        coids = [trader.new_order(SYMBOL, Side.SELL, 1, 10_000 + i) for i in range(20)]
        last = await trader.wait_for(lambda m: isinstance(m, Report) and getattr(m.body, "coid", "") == coids[-1], 20)
        assert isinstance(last.body, Accepted)
        seen = trader.last_seq
        await trader.close()
        a.serve.kill()
        await b.wait_for("etx serving on")
        await trader.connect()
        assert trader.port == b.port and trader.ack is not None and trader.ack.next_seq == seen
        await trader.close()
        assert b.serve.stop() == 0

    run(main())

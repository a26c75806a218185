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

from benchmarks.crash_soak import SECRET, SYMBOL, TRADERS, Replay, Trader
from benchmarks.failover_soak import journal_end, start_pair
from benchmarks.natscluster import NatsCluster
from engine.messages import Accepted, Side
from gateway.client import Client, LogonError
from gateway.config import load
from gateway.credentials import Credentials, write_file
from gateway.protocol import CodMode, GatewayReason, Report
from gateway.recovery import JOURNAL_DIR
from settlement import Deposit
from tests.integration.exchange import etx, run


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    c = NatsCluster(tmp_path / "nats", 3)
    yield c
    c.stop()


def test_the_standby_takes_over_a_killed_primary_and_loses_nothing_acknowledged(tmp_path: Path,
                                                                                 cluster: NatsCluster) -> None:
    async def main() -> None:
        a, b = await start_pair(tmp_path, cluster.urls)
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
        replay.advance(journal_end(b.data))
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


def test_a_partitioned_old_primary_cannot_append_and_steps_down(tmp_path: Path, cluster: NatsCluster) -> None:
    async def main() -> None:
        a, b = await start_pair(tmp_path, cluster.urls)
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
        [a] = await start_pair(tmp_path, cluster.urls, standby=False)
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
        a, b = await start_pair(tmp_path, cluster.urls)
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
        a, b = await start_pair(tmp_path, cluster.urls)
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

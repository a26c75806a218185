"""Replication against a real NATS JetStream server started by the test: a standby's
catch-up with the stream (``Follower.catch_up``), which a request timing out while the
cluster elects new leaders delays and loses nothing of, and a history that does not fit
ends; and the operators' view of the cluster, which lists every standby while the lease
and the positions are written."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks.natscluster import NatsCluster
from engine.messages import Tick
from gateway.replication import Follower, Link


def publish(link: Link, first: int, count: int, expect: int) -> int:
    body = msgspec.msgpack.encode([Tick(seq=first + i, ts=first + i) for i in range(count)])
    return link.call(link.publish_batch(body, first, count, expect, f"b{first}", confirm_s=5.0), 10)


def follower(link: Link, applied: list[Tick]) -> Follower:
    async def apply(cmds: list[Any]) -> None:
        applied.extend(cmds)

    return Follower(link, "b", 2.0, apply, lambda: "", lambda: applied[-1].seq if applied else 0,
                    lambda body: msgspec.msgpack.decode(body, type=list[Tick]), lambda text: None)


def test_catching_up_goes_on_after_a_request_times_out(tmp_path: Path) -> None:
    """Found when a standby that had just taken the lease exited: the consumer request
    of its catch-up timed out while the cluster, one server lost, elected new leaders.
    Here the first subscription times out as that one did; the catch-up subscribes again
    and applies every batch, once and in order."""
    import nats.errors

    cluster = NatsCluster(tmp_path / "nats", 1)
    link = Link(cluster.urls, "ETXCATCHUP")
    try:
        last = 0
        for first, count in ((1, 3), (4, 2), (6, 4)):
            last = publish(link, first, count, last)
        applied: list[Tick] = []
        f = follower(link, applied)
        subscribe, failures = f._subscribe, [nats.errors.TimeoutError()]

        async def flaky() -> Any:
            if failures:
                raise failures.pop()
            return await subscribe()

        f._subscribe = flaky  # type: ignore[method-assign]
        assert asyncio.run(f.catch_up()) == last
        assert not failures and [t.seq for t in applied] == list(range(1, 10))
        assert f.applied_batch == last
    finally:
        link.close()
        cluster.stop()


def test_a_history_that_does_not_fit_ends_the_catch_up(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats", 1)
    link = Link(cluster.urls, "ETXCATCHUP")
    try:
        publish(link, 1, 3, 0)
        applied = [Tick(seq=s, ts=s) for s in range(1, 6)]  # this journal is ahead of the stream
        with pytest.raises(RuntimeError, match="beyond the stream's last batch"):
            asyncio.run(follower(link, applied).catch_up())
    finally:
        link.close()
        cluster.stop()


def test_the_cluster_view_lists_every_standby_while_the_lease_is_renewed(tmp_path: Path) -> None:
    """Found by CI: ``etx ops cluster`` showed the primary but not the standby that had
    been writing its position every 0.5 s. The KV client's ``keys()`` can end its listing
    early while other keys are written (nats-py issue 842); the view reads the subjects
    the lease bucket holds from the stream's own state instead. Here two standbys'
    positions are listed each time while the lease and the positions are written as
    fast as the server takes them."""
    from gateway.replication import Position

    cluster = NatsCluster(tmp_path / "nats", 1)
    link = Link(cluster.urls, "ETXVIEW")
    try:
        for node in ("b", "c"):
            link.call(link.put_position(node, Position(1, 1, 1)), 10)
        taken = link.call(link.take_lease("a", 5.0, 0), 10)
        assert taken

        async def views() -> list[set[str]]:
            stop = asyncio.Event()

            async def write() -> None:
                revision, n = taken, 0
                while not stop.is_set():
                    n += 1
                    revision = await link.take_lease("a", 5.0, revision) or revision
                    await link.put_position("b" if n % 2 else "c", Position(n, n, n))

            writer = asyncio.ensure_future(write())
            seen = []
            for _ in range(40):
                seen.append(set((await link.cluster())["standbys"]))
            stop.set()
            await writer
            return seen

        seen = link.call(views(), 120)
        assert all(s == {"b", "c"} for s in seen), seen
    finally:
        link.close()
        cluster.stop()

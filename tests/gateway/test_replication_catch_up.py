"""A standby's catch-up with the stream (``Follower.catch_up``), against a real NATS
JetStream server started by the test: a request that times out while the cluster
elects new leaders delays it and loses nothing; a history that does not fit ends it."""

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

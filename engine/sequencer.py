"""The sequencer: stamps each command with the next sequence number and a timestamp.

The clock is injected (a callable returning integer nanoseconds), so tests and replays
run on simulated time. Timestamps never go back: a clock that steps backwards is held
at the last stamped time, which keeps the engine's input monotonic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.messages import Command


class Sequencer:
    __slots__ = ("clock", "seq", "ts")

    def __init__(self, clock: Callable[[], int] = time.time_ns, seq: int = 0, ts: int = 0) -> None:
        self.clock = clock
        self.seq = seq  # the last sequence number stamped
        self.ts = ts

    def stamp(self, cmd: Command) -> Command:
        """Give the command the next sequence number and the current time."""
        ts = self.clock()
        if ts < self.ts:
            ts = self.ts
        self.seq += 1
        self.ts = ts
        cmd.seq = self.seq  # type: ignore[attr-defined]
        cmd.ts = ts  # type: ignore[attr-defined]
        return cmd


    def stamp_batch(self, cmds: list[Command]) -> list[Command]:
        """Stamp a batch in order, reading the clock once: the commands of one batch
        share a timestamp (they arrived together)."""
        ts = self.clock()
        if ts < self.ts:
            ts = self.ts
        seq = self.seq
        for cmd in cmds:
            seq += 1
            cmd.seq = seq  # type: ignore[attr-defined]
            cmd.ts = ts  # type: ignore[attr-defined]
        self.seq, self.ts = seq, ts
        return cmds


class ManualClock:
    """A clock for tests and simulations: time moves only when told."""

    __slots__ = ("now",)

    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        assert ns >= 0
        self.now += ns

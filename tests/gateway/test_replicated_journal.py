"""The replicated journal's order of writes, with the stream replaced by a recorder: a
batch goes to the stream first and then into the local journal as the same bytes; a
batch over one record's limits is refused before the stream sees it (the group
committer splits a group on that refusal, which must not come after a publish); a
fenced primary writes nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.journal import (
    RECORD_COMMANDS_MAX,
    Journal,
    JournalUnavailable,
    RecordTooLarge,
    command_decoder,
    read_journal,
)
from engine.messages import Tick
from gateway.recovery import journal_command_types
from gateway.replication import Fenced, ReplicatedJournal


class Stream:
    """Stands in for gateway.replication.Link: records each publish and answers with
    the next stream sequence, or refuses as a fenced stream would."""

    def __init__(self) -> None:
        self.published: list[tuple[bytes, int, int, int]] = []
        self.fence = False

    def call(self, coro: Any, timeout: float) -> Any:
        coro.close()
        body, first, count, expect = self.pending
        if self.fence:
            raise Fenced("another primary appends")
        self.published.append((body, first, count, expect))
        return len(self.published)

    def publish_batch(self, body: bytes, first: int, count: int, expect: int, msg_id: str, confirm_s: float,
                      check: bool = False) -> Any:
        self.pending = (body, first, count, expect)

        async def nothing() -> None:
            return None

        return nothing()


def ticks(first: int, n: int) -> list[Tick]:
    return [Tick(seq=first + i, ts=first + i) for i in range(n)]


def test_the_stream_first_then_the_same_bytes_locally_and_nothing_after_a_fence(tmp_path: Path) -> None:
    local = Journal(tmp_path, journal_command_types())
    stream = Stream()
    journal = ReplicatedJournal(local, stream, "a", 1, 0, confirm_s=1.0)  # type: ignore[arg-type]
    journal.append_batch(ticks(1, 3))
    journal.append_batch(ticks(4, 2))
    assert [(f, c, e) for _, f, c, e in stream.published] == [(1, 3, 0), (4, 2, 1)]  # each expects the one before
    assert local.last_seq == 5
    local.close()
    records = list(read_journal(tmp_path, command_decoder(journal_command_types()), 0))
    assert [local.encoder.encode(r) for r in records] == [b for b, _, _, _ in stream.published]

    local = Journal(tmp_path, journal_command_types())
    journal = ReplicatedJournal(local, stream, "a", 1, 2, confirm_s=1.0)  # type: ignore[arg-type]
    stream.fence = True
    with pytest.raises(Fenced):
        journal.append_batch(ticks(6, 1))
    stream.fence = False
    with pytest.raises(JournalUnavailable):  # fenced for good: nothing more is published or written
        journal.append_batch(ticks(6, 1))
    assert local.last_seq == 5 and len(stream.published) == 2 and not journal.probe()
    local.close()


def test_a_batch_over_the_record_limits_is_refused_before_the_stream_sees_it(tmp_path: Path) -> None:
    local = Journal(tmp_path, journal_command_types())
    stream = Stream()
    journal = ReplicatedJournal(local, stream, "a", 1, 0, confirm_s=1.0)  # type: ignore[arg-type]
    with pytest.raises(RecordTooLarge):
        journal.append_batch(ticks(1, RECORD_COMMANDS_MAX + 1))
    assert stream.published == [] and local.last_seq == 0 and journal.fenced is None
    journal.append_batch(ticks(1, 2))  # and the committer's split parts go through
    assert local.last_seq == 2
    local.close()

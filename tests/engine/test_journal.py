"""The write-ahead journal: round trips, segments, torn tails, corruption, full disks,
group commit. Real files in a temporary directory; a full disk is the kernel's own
ENOSPC from /dev/full (duplicated onto the journal's descriptor) and EFBIG from a
file-size limit, not a mock."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import resource
import signal
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks.generator import generate
from engine.journal import (
    RECORD_COMMANDS_MAX,
    RECORD_HEADER,
    SEGMENT_HEADER,
    GroupCommitter,
    Journal,
    JournalCorrupt,
    JournalUnavailable,
    RecordTooLarge,
    list_segments,
    read_journal,
)
from engine.messages import ENGINE_COMMANDS, NewOrder, Tick

SEED = 20260501


@pytest.fixture(scope="module")
def stream() -> list[Any]:
    print(f"seed {SEED}")
    return generate("mixed", 6_000, SEED).all()


def batches(cmds: list[Any], rng: random.Random, most: int = 300) -> list[list[Any]]:
    out = []
    i = 0
    while i < len(cmds):
        k = rng.randint(1, most)
        out.append(cmds[i : i + k])
        i += k
    return out


def write(path: Path, cmds: list[Any], seed: int = SEED, segment_bytes: int = 64 << 10) -> Journal:
    j = Journal(path, ENGINE_COMMANDS, segment_bytes=segment_bytes)
    for b in batches(cmds, random.Random(seed)):
        j.append_batch(b)
    return j


def replayed(path: Path, after: int = 0) -> list[Any]:
    j = Journal(path, ENGINE_COMMANDS)
    try:
        return [c for b in j.replay(after) for c in b]
    finally:
        j.close()


def test_round_trip_across_segments(tmp_path: Path, stream: list[Any]) -> None:
    j = write(tmp_path, stream)
    assert j.last_seq == len(stream)
    j.close()
    segments = list_segments(tmp_path)
    assert len(segments) > 3, "the small segment size must make several segments"
    assert replayed(tmp_path) == stream
    # Replay from any point trims exactly, across record and segment boundaries.
    for after in (0, 1, 777, segments[2][0] - 1, segments[2][0], len(stream) - 1, len(stream)):
        assert replayed(tmp_path, after) == stream[after:]


def test_reopen_continues(tmp_path: Path, stream: list[Any]) -> None:
    write(tmp_path, stream[:1000]).close()
    j = Journal(tmp_path, ENGINE_COMMANDS, segment_bytes=64 << 10)
    assert j.last_seq == 1000 and not j.repair
    j.append_batch(stream[1000:1500])
    j.close()
    assert replayed(tmp_path) == stream[:1500]


def test_out_of_sequence_and_too_large_write_nothing(tmp_path: Path, stream: list[Any]) -> None:
    j = write(tmp_path, stream[:10])
    size = sum(p.stat().st_size for _, p in list_segments(tmp_path))
    with pytest.raises(ValueError, match="expects seq 11"):
        j.append_batch(stream[11:20])
    with pytest.raises(ValueError, match="expects seq 11"):
        j.append_batch(stream[:5])
    big = [Tick(seq=11 + i, ts=stream[9].ts) for i in range(RECORD_COMMANDS_MAX + 1)]
    with pytest.raises(RecordTooLarge):
        j.append_batch(big)
    assert sum(p.stat().st_size for _, p in list_segments(tmp_path)) == size
    j.append_batch(stream[10:20])
    j.close()
    assert replayed(tmp_path) == stream[:20]


def _last_segment(path: Path) -> Path:
    return list_segments(path)[-1][1]


def _record_offsets(seg: Path) -> list[int]:
    data = seg.read_bytes()
    pos, out = SEGMENT_HEADER.size, []
    while pos < len(data):
        out.append(pos)
        body_len = int.from_bytes(data[pos + 8 : pos + 12], "little")
        pos += RECORD_HEADER.size + body_len
    return out


def test_torn_tail_is_cut_at_every_cut_point(tmp_path: Path, stream: list[Any]) -> None:
    """A crash can leave any prefix of the newest record: each is detected and cut."""
    rng = random.Random(SEED)
    cmds = stream[:400]
    base = tmp_path / "base"
    write(base, cmds, segment_bytes=1 << 30).close()
    seg = _last_segment(base)
    data = seg.read_bytes()
    last = _record_offsets(seg)[-1]
    first_of_last = int.from_bytes(data[last + 16 : last + 24], "little")
    cuts = sorted({last + 1, last + RECORD_HEADER.size - 1, last + RECORD_HEADER.size, len(data) - 1}
                  | {rng.randrange(last + 1, len(data)) for _ in range(20)})
    for cut in cuts:
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / seg.name).write_bytes(data[:cut])
        j = Journal(d, ENGINE_COMMANDS)
        assert len(j.repair) == 1 and j.repair[0].offset == last and j.repair[0].bytes == cut - last, cut
        assert j.last_seq == first_of_last - 1
        assert (d / seg.name).stat().st_size == last
        j.append_batch(cmds[first_of_last - 1 :])  # the lost commands, sent again
        j.close()
        assert replayed(d) == cmds


@pytest.mark.parametrize("tail", ["zeros", "garbage", "bitflip"])
def test_torn_tail_with_junk(tmp_path: Path, stream: list[Any], tail: str) -> None:
    cmds = stream[:300]
    write(tmp_path, cmds, segment_bytes=1 << 30).close()
    seg = _last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    last = _record_offsets(seg)[-1]
    if tail == "zeros":  # the file grew but the data never reached the disk
        data[last:] = bytes(len(data) - last)
    elif tail == "garbage":
        data += random.Random(SEED).randbytes(5000)
        last = len(data) - 5000
    else:
        data[-3] ^= 0x40
    seg.write_bytes(bytes(data))
    j = Journal(tmp_path, ENGINE_COMMANDS)
    assert len(j.repair) == 1 and j.repair[0].offset == last
    j.close()
    got = replayed(tmp_path)
    assert got == cmds[: len(got)] and len(got) >= len(cmds) - 300


def test_corrupt_record_before_the_tail_stops(tmp_path: Path, stream: list[Any]) -> None:
    write(tmp_path, stream[:2000], segment_bytes=1 << 30).close()
    seg = _last_segment(tmp_path)
    offsets = _record_offsets(seg)
    bad = offsets[len(offsets) // 2]
    data = bytearray(seg.read_bytes())
    data[bad + RECORD_HEADER.size + 5] ^= 0x01  # one bit in a body, valid records follow
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as e:
        Journal(tmp_path, ENGINE_COMMANDS)
    assert e.value.segment == str(seg) and e.value.offset == bad
    assert seg.name in str(e.value) and f"byte {bad}" in str(e.value)
    assert seg.stat().st_size == len(data), "nothing is cut when the damage is not a torn tail"


def test_corrupt_older_segment_stops_replay(tmp_path: Path, stream: list[Any]) -> None:
    write(tmp_path, stream).close()
    segments = list_segments(tmp_path)
    victim = segments[1][1]
    data = bytearray(victim.read_bytes())
    data[len(data) - 2] ^= 0x10  # its last record: the next segment proves it was complete
    victim.write_bytes(bytes(data))
    j = Journal(tmp_path, ENGINE_COMMANDS)  # the newest segment is fine: opening works
    assert not j.repair
    with pytest.raises(JournalCorrupt, match=victim.name):
        list(j.replay(0))
    # Replaying only what comes after the damaged segment is possible.
    assert [c for b in j.replay(segments[2][0] - 1) for c in b] == stream[segments[2][0] - 1 :]
    j.close()


@pytest.mark.parametrize("field,offset", [("first_seq", 8), ("first_seq", 15), ("reserved", 6), ("crc", 16)])
def test_damaged_header_of_an_older_segment_stops_replay(
    tmp_path: Path, stream: list[Any], field: str, offset: int
) -> None:
    """One bit flipped in the header of a segment that is not the newest (so it cannot
    be a torn tail) fails the header's checksum: replay stops there, naming it. The
    magic and the version are intact; a flipped first_seq, reserved field or crc is
    caught by the crc alone."""
    write(tmp_path, stream).close()
    segments = list_segments(tmp_path)
    assert len(segments) > 2
    victim = segments[1][1]
    data = bytearray(victim.read_bytes())
    assert SEGMENT_HEADER.unpack_from(data)[3] == segments[1][0]  # first_seq
    data[offset] ^= 0x80 if offset == 15 else 0x01
    victim.write_bytes(bytes(data))
    j = Journal(tmp_path, ENGINE_COMMANDS)  # only the newest segment is read to open
    assert not j.repair
    with pytest.raises(JournalCorrupt) as e:
        list(j.replay(0))
    j.close()
    assert e.value.segment == str(victim) and e.value.offset == 0, (field, e.value)
    assert e.value.reason == "segment header missing or damaged", (field, e.value)
    assert victim.read_bytes() == bytes(data), "nothing is cut when the damage is not a torn tail"


def test_missing_segment_is_a_gap(tmp_path: Path, stream: list[Any]) -> None:
    write(tmp_path, stream).close()
    segments = list_segments(tmp_path)
    segments[2][1].unlink()
    with pytest.raises(JournalCorrupt, match=f"expected the segment to start at seq {segments[2][0]}"):
        replayed(tmp_path)
    with pytest.raises(JournalCorrupt, match="seq 1 is needed"):
        segments[0][1].unlink()
        segments[1][1].unlink()
        replayed(tmp_path)


@pytest.mark.parametrize("size", [0, 7, SEGMENT_HEADER.size])
def test_new_segment_whose_header_was_lost(tmp_path: Path, stream: list[Any], size: int) -> None:
    """A crash while a segment was being created leaves an empty or damaged file."""
    write(tmp_path, stream[:500]).close()
    newest = tmp_path / "00000000000000000501.journal"
    newest.write_bytes(b"\0" * size)
    j = Journal(tmp_path, ENGINE_COMMANDS)
    assert j.repair and j.repair[0].removed_segment
    assert not newest.exists() and j.last_seq == 500
    j.append_batch(stream[500:600])
    j.close()
    assert replayed(tmp_path) == stream[:600]


def _full(j: Journal) -> int:
    """Point the journal's descriptor at /dev/full; returns a saved duplicate."""
    saved = os.dup(j._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, j._fd)
    os.close(full)
    return saved


def _mend(j: Journal, saved: int) -> None:
    os.dup2(saved, j._fd)
    os.close(saved)


def test_disk_full_rejects_then_recovers(tmp_path: Path, stream: list[Any]) -> None:
    j = write(tmp_path, stream[:100])
    saved = _full(j)
    with pytest.raises(JournalUnavailable) as e:
        j.append_batch(stream[100:150])
    assert e.value.errno == errno.ENOSPC and "ENOSPC" in str(e.value)
    assert j.last_seq == 100 and j.failure is not None
    assert not j.probe()
    with pytest.raises(JournalUnavailable):
        j.append_batch(stream[100:150])
    _mend(j, saved)
    assert j.probe() and j.failure is None
    j.append_batch(stream[100:150])
    j.close()
    assert replayed(tmp_path) == stream[:150]


def test_file_size_limit_mid_record_leaves_nothing_behind(tmp_path: Path, stream: list[Any]) -> None:
    """EFBIG part-way through a record: the partial bytes are cut before the next write."""
    j = write(tmp_path, stream[:100], segment_bytes=1 << 30)
    seg = _last_segment(tmp_path)
    size = seg.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
        with pytest.raises(JournalUnavailable) as e:
            j.append_batch(stream[100:400])
        assert e.value.errno == errno.EFBIG
        assert seg.stat().st_size == size + 100, "the kernel wrote a partial record"
        assert not j.probe()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert j.probe()
    assert seg.stat().st_size == size
    j.append_batch(stream[100:400])
    j.close()
    assert replayed(tmp_path) == stream[:400]


def test_probe_makes_the_segment_the_next_append_needs(tmp_path: Path, stream: list[Any]) -> None:
    """The active segment is full and no new file can be opened (EMFILE): writes to
    the old descriptor would still work, but the journal is not writable until the
    next segment can be made, and the probe says so."""
    j = write(tmp_path, stream[:100], segment_bytes=2048)
    before = list_segments(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
        with pytest.raises(JournalUnavailable) as e:
            j.append_batch(stream[100:200])  # more than the segment has room for
        assert e.value.errno == errno.EMFILE
        assert not j.probe(), "the probe must test the segment the next append writes to"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert list_segments(tmp_path) == before and j.last_seq == 100
    assert j.probe()
    after = list_segments(tmp_path)
    assert after[:-1] == before and after[-1][0] == 101  # made by the probe, still empty
    j.append_batch(stream[100:200])
    j.close()
    assert replayed(tmp_path) == stream[:200]


def test_probe_of_an_empty_journal_makes_its_first_segment(tmp_path: Path, stream: list[Any]) -> None:
    j = Journal(tmp_path, ENGINE_COMMANDS)
    j.rebase(40)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        with pytest.raises(JournalUnavailable):
            j.append_batch(stream[40:50])
        assert not j.probe()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not list_segments(tmp_path)
    assert j.probe() and [s for s, _ in list_segments(tmp_path)] == [41]
    j.append_batch(stream[40:50])
    j.close()
    assert replayed(tmp_path, after=40) == stream[40:50]


def test_group_commit_asyncio(tmp_path: Path, stream: list[Any]) -> None:
    j = Journal(tmp_path, ENGINE_COMMANDS)
    gc = GroupCommitter(j)
    parts = batches(stream, random.Random(SEED), 40)

    async def main() -> None:
        # Submitted in order by many tasks at once; each returns once durable.
        async def one(part: list[Any]) -> int:
            await gc.commit(part)
            assert j.last_seq >= part[-1].seq
            return len(part)

        coros = []
        for part in parts:
            coros.append(asyncio.ensure_future(one(part)))  # submit() runs in this order
        assert sum(await asyncio.gather(*coros)) == len(stream)

    asyncio.run(main())
    gc.close()
    assert gc.commands == len(stream) and gc.commits <= len(parts)
    j.close()
    assert replayed(tmp_path) == stream


def test_group_commit_failure_and_recovery(tmp_path: Path, stream: list[Any]) -> None:
    j = write(tmp_path, stream[:50])
    states: list[tuple[bool, str]] = []
    changed = threading.Event()

    def on_state(ok: bool, reason: str) -> None:
        states.append((ok, reason))
        changed.set()

    gc = GroupCommitter(j, probe_interval_s=0.01, on_state=on_state)
    saved = _full(j)
    results: list[BaseException | None] = []
    done = threading.Event()

    alerted: list[bool] = []

    def cb(err: BaseException | None) -> None:
        results.append(err)
        alerted.append(bool(states) and states[0][0] is False)  # the operator hears first
        if len(results) == 2:
            done.set()

    with gc._cond:  # both submissions queued before the journal thread takes any
        gc.submit(stream[50:60], cb)
        gc.submit(stream[60:70], cb)
    assert done.wait(10)
    assert all(isinstance(r, JournalUnavailable) for r in results) and alerted == [True, True]
    assert changed.wait(10) and states[0][0] is False and "ENOSPC" in states[0][1]
    with pytest.raises(JournalUnavailable):
        gc.submit(stream[50:60], cb)  # refused at once while unavailable
    assert not gc.available and gc.durable_seq == 50
    changed.clear()
    _mend(j, saved)
    assert changed.wait(10) and states[-1] == (True, "")
    ok = threading.Event()
    gc.submit(stream[50:70], lambda err: ok.set() if err is None else None)
    assert ok.wait(10)
    gc.close()
    j.close()
    assert replayed(tmp_path) == stream[:70]


def test_group_commit_failure_is_visible_before_submitters_hear_of_it(tmp_path: Path, stream: list[Any]) -> None:
    """A submitter told of a failure rewinds and submits again at once: it must be
    refused as unavailable, not as out of sequence."""
    j = write(tmp_path, stream[:50])
    gc = GroupCommitter(j, probe_interval_s=60)
    saved = _full(j)
    again: list[BaseException] = []
    done = threading.Event()

    def on_done(err: BaseException | None) -> None:
        assert isinstance(err, JournalUnavailable)
        try:
            gc.submit(stream[50:60], lambda e: None)  # the same sequence numbers again
        except Exception as e:
            again.append(e)
        done.set()

    gc.submit(stream[50:60], on_done)
    assert done.wait(10)
    assert len(again) == 1 and isinstance(again[0], JournalUnavailable), again
    _mend(j, saved)
    gc.close()
    j.close()


def test_group_commit_limits(tmp_path: Path, stream: list[Any]) -> None:
    j = Journal(tmp_path, ENGINE_COMMANDS)
    gc = GroupCommitter(j, batch_commands_max=100, pending_commands_max=150)
    got: list[BaseException | None] = []
    with gc._cond:
        gc.submit(stream[0:100], got.append)
        with pytest.raises(JournalUnavailable, match="queue full"):
            gc.submit(stream[100:200], got.append)
        with pytest.raises(RecordTooLarge):
            gc.submit(stream[100:201], got.append)
        with pytest.raises(ValueError, match="must start at seq 101"):
            gc.submit(stream[101:120], got.append)
        gc.submit(stream[100:150], got.append)
    gc.close()
    assert got == [None, None] and gc.commits == 2  # 100 + 50 exceeds one batch of 100
    j.close()
    assert replayed(tmp_path) == stream[:150]


def test_journal_is_generic_over_command_types(tmp_path: Path) -> None:
    class Note(msgspec.Struct, array_like=True, tag=60, tag_field="t"):
        text: str
        seq: int = 0
        ts: int = 0

    cmds: list[Any] = [NewOrder("M1", "c1", "CEA24", 1, 10, 100, seq=1, ts=5), Note("hello", seq=2, ts=6)]
    j = Journal(tmp_path, (*ENGINE_COMMANDS, Note))
    j.append_batch(cmds)
    j.close()
    assert [c for b in read_journal(tmp_path, j.decoder) for c in b] == cmds
    with pytest.raises(JournalCorrupt, match="does not decode"):
        list(read_journal(tmp_path, Journal(tmp_path, ENGINE_COMMANDS).decoder))

"""The write-ahead journal: sequenced commands, append only, in checksummed segments.

Contract:
- ``Journal.append_batch(cmds)`` returns only after every command in ``cmds`` is on
  disk: one ``pwrite`` and one ``fdatasync`` per record (group commit). Nothing may be
  acknowledged for a command before the call that carried it has returned.
- Commands must arrive in sequence order without gaps (``seq`` = last_seq + 1, ...).
- A write or sync that fails (disk full, I/O error) raises ``JournalUnavailable``; the
  failed batch is not in the journal (the file is cut back to its last durable end
  before anything else is written) and ``last_seq`` still names the last durable
  command. Every later append, and ``probe()``, first tries to repair; the journal
  works again as soon as the disk does. The probe exercises the journal's own
  descriptor (creating the segment the next append needs, if any), so it succeeds
  only when the next append can.
- Reading verifies every record's checksum and the sequence continuity. A bad record
  at the very end of the newest segment, with nothing valid after it, is a torn write
  from a crash (that write was never acknowledged): ``Journal()`` cuts it and reports
  it in ``Journal.repair``. Anything else that does not verify raises ``JournalCorrupt``
  naming the segment and the byte offset: serving state built from a damaged history
  would be worse than not starting.
- One thread writes at a time (``GroupCommitter`` owns it when used).

On-disk format (all integers little-endian; documented in docs/journal.md):

    segment  = segment header, record*            file name: {first_seq:020d}.journal
    segment header (20 bytes): magic "ETXJ", version u16 (1), reserved u16 (0),
        first_seq u64, crc32 u32 of the 16 bytes before it
    record   = record header (24 bytes), body
    record header: magic "ETXR", crc32 u32, body_len u32, count u32, first_seq u64;
        the crc covers header bytes 8..24 and then the body
    body     = one msgpack array of ``count`` commands, seq first_seq .. first_seq+count-1,
        each a tagged array-like msgspec Struct

A record is one group commit, written with one pwrite and synced before the next is
written, so at most the single newest record can ever be torn, a failed commit leaves
nothing behind, and replay decodes a whole record with one ``Decoder.decode`` call.
"""

from __future__ import annotations

import asyncio
import collections
import errno as errno_
import os
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import msgspec

SEGMENT_MAGIC = b"ETXJ"
RECORD_MAGIC = b"ETXR"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sHHQI")
RECORD_HEADER = struct.Struct("<4sIIIQ")
SEGMENT_SUFFIX = ".journal"
SEGMENT_BYTES_DEFAULT = 64 << 20
RECORD_COMMANDS_MAX = 65_536
RECORD_BYTES_MAX = 32 << 20
PROBE_BYTES = 64 << 10  # what probe() must be able to allocate and sync
COMMIT_TIMES_MAX = 4096  # group commit durations kept (GroupCommitter.commit_us)


class JournalCorrupt(Exception):
    """The journal holds damage that is not a torn tail; the message names where."""

    def __init__(self, segment: Path | str, offset: int, reason: str) -> None:
        self.segment = str(segment)
        self.offset = offset
        self.reason = reason
        super().__init__(f"journal corrupt in {self.segment} at byte {offset}: {reason}")


class JournalUnavailable(Exception):
    """The journal cannot be written now; nothing of the failed batch is durable."""

    def __init__(self, reason: str, errno: int | None = None) -> None:
        self.reason = reason
        self.errno = errno
        super().__init__(f"journal unavailable: {reason}")


class RecordTooLarge(ValueError):
    """A batch over the record limits; split it (GroupCommitter does)."""


class TornTail(msgspec.Struct, frozen=True):
    """A torn write at the end of the newest segment, cut (or to be cut) at ``offset``."""

    segment: str
    offset: int
    bytes: int
    reason: str
    removed_segment: bool = False  # the whole segment file held nothing valid


class SegmentInfo(msgspec.Struct):
    path: str
    first_seq: int
    last_seq: int  # first_seq - 1 when the segment holds no record
    records: int
    commands: int
    size: int  # bytes that verified (header and whole records)


class Record(msgspec.Struct, frozen=True):
    """Where one record lies: ``data[body_start:body_end]`` is its msgpack body."""

    offset: int
    first_seq: int
    count: int
    body_start: int
    body_end: int


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path | str) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment file in the directory, in sequence order."""
    out = []
    for p in Path(directory).iterdir():
        name = p.name
        if name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
            out.append((int(name[: -len(SEGMENT_SUFFIX)]), p))
    out.sort()
    return out


def encode_segment_header(first_seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, VERSION, 0, first_seq, 0)[:16]
    return head + struct.pack("<I", zlib.crc32(head))


def encode_record(first_seq: int, count: int, body: bytes) -> bytes:
    tail = struct.pack("<IIQ", len(body), count, first_seq)
    crc = zlib.crc32(body, zlib.crc32(tail))
    return RECORD_MAGIC + struct.pack("<I", crc) + tail + body


def _record_at(data: bytes, pos: int, end: int) -> tuple[int, int, int] | str:
    """Parse and verify the record at ``pos``: (first_seq, count, body_end), or why not."""
    if end - pos < RECORD_HEADER.size:
        return f"{end - pos} bytes left, less than a record header"
    magic, crc, body_len, count, first_seq = RECORD_HEADER.unpack_from(data, pos)
    if magic != RECORD_MAGIC:
        return f"expected record magic {RECORD_MAGIC!r}, found {bytes(magic)!r}"
    if body_len > RECORD_BYTES_MAX or count > RECORD_COMMANDS_MAX or count == 0:
        return f"implausible record header (body {body_len} bytes, {count} commands)"
    body_end = pos + RECORD_HEADER.size + body_len
    if body_end > end:
        return f"record of {body_len} bytes runs {body_end - end} bytes past the end of the file"
    view = memoryview(data)
    if zlib.crc32(view[pos + RECORD_HEADER.size : body_end], zlib.crc32(view[pos + 8 : pos + 24])) != crc:
        return "record checksum mismatch"
    return first_seq, count, body_end


class SegmentScan(msgspec.Struct):
    info: SegmentInfo
    records: list[Record]
    torn: TornTail | None


def scan_segment(path: Path, data: bytes, expect_seq: int | None, newest: bool) -> SegmentScan:
    """Verify one segment's bytes. ``expect_seq`` is the sequence its first record must
    carry (None: whatever the header says). A failure in the newest segment with
    nothing valid after it is a torn tail; any other failure raises JournalCorrupt."""
    size = len(data)
    name = str(path)
    first_seq = -1
    if size >= SEGMENT_HEADER.size:
        magic, version, _, first_seq, crc = SEGMENT_HEADER.unpack_from(data, 0)
        if magic != SEGMENT_MAGIC or zlib.crc32(data[:16]) != crc:
            first_seq = -1
        elif version != VERSION:
            raise JournalCorrupt(name, 0, f"segment format version {version}, this build reads {VERSION}")
    if first_seq < 0:
        # A segment whose header did not reach the disk: torn only if it is the newest
        # and nothing after the header position verifies.
        reason = "segment header missing or damaged"
        if newest and _find_valid(data, 0) < 0:
            return SegmentScan(SegmentInfo(name, 0, -1, 0, 0, 0), [], TornTail(name, 0, size, reason, True))
        raise JournalCorrupt(name, 0, reason)
    if not name.endswith(segment_name(first_seq)):
        raise JournalCorrupt(name, 0, f"segment header says first seq {first_seq}, the file name disagrees")
    if expect_seq is not None and first_seq != expect_seq:
        raise JournalCorrupt(name, 0, f"expected the segment to start at seq {expect_seq}, it starts at {first_seq}")
    records: list[Record] = []
    append = records.append
    pos = SEGMENT_HEADER.size
    seq = first_seq
    commands = 0
    torn = None
    while pos < size:
        rec = _record_at(data, pos, size)
        if isinstance(rec, str):
            if newest and _find_valid(data, pos + 1) < 0:
                torn = TornTail(name, pos, size - pos, rec)
                break
            raise JournalCorrupt(name, pos, rec)
        rseq, count, body_end = rec
        if rseq != seq:
            raise JournalCorrupt(name, pos, f"expected a record starting at seq {seq}, found seq {rseq}")
        append(Record(pos, rseq, count, pos + RECORD_HEADER.size, body_end))
        seq += count
        commands += count
        pos = body_end
    info = SegmentInfo(name, first_seq, seq - 1, len(records), commands, pos if torn is None else torn.offset)
    return SegmentScan(info, records, torn)


def _find_valid(data: bytes, start: int) -> int:
    """Offset of the first record after ``start`` that verifies, -1 if none.
    bytes.find jumps between candidate magics, so this is fast even in a large segment."""
    size = len(data)
    pos = data.find(RECORD_MAGIC, start)
    while pos >= 0:
        if not isinstance(_record_at(data, pos, size), str):
            return pos
        pos = data.find(RECORD_MAGIC, pos + 1)
    return -1


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def command_decoder(command_types: Sequence[type] | msgspec.msgpack.Decoder[Any]) -> msgspec.msgpack.Decoder[Any]:
    """A decoder of one record body (a list of commands) for the given command types."""
    if isinstance(command_types, msgspec.msgpack.Decoder):
        return command_types
    types = tuple(command_types)
    if not types:
        raise ValueError("a journal needs at least one command type")
    union = types[0] if len(types) == 1 else Union[types]  # noqa: UP007 - built at run time
    return msgspec.msgpack.Decoder(list[union])  # type: ignore[valid-type]


class Journal:
    """The journal of one core: a directory of segments. See the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        command_types: Sequence[type] | msgspec.msgpack.Decoder[Any],
        *,
        segment_bytes: int = SEGMENT_BYTES_DEFAULT,
        base_seq: int = 0,
    ) -> None:
        """Open (creating it if needed) the journal in ``directory`` for appending.
        The newest segment is verified and a torn tail cut (see ``repair``). An empty
        journal takes ``base_seq + 1`` as the sequence of its first command."""
        if segment_bytes < SEGMENT_HEADER.size + RECORD_HEADER.size + 1:
            raise ValueError(f"segment_bytes must leave room for a record, got {segment_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.decoder = command_decoder(command_types)
        self.segment_bytes = segment_bytes
        self.encoder = msgspec.msgpack.Encoder()
        self.repair: list[TornTail] = []
        self.failure: JournalUnavailable | None = None
        self.appends = 0  # group commits (fsyncs) done
        self._fd = -1
        self._rolling = False  # a new segment was needed and could not be made yet
        self._path: Path | None = None
        self._end = 0  # durable end of the active segment
        self._first = 0  # first seq of the active segment
        self.last_seq = base_seq
        self._open_tail(base_seq)

    # --- opening ----------------------------------------------------------------------

    def _open_tail(self, base_seq: int) -> None:
        segments = list_segments(self.directory)
        newest = True  # only the newest segment can hold a torn write
        while segments:
            first, path = segments[-1]
            scan = scan_segment(path, _read(path), None, newest=newest)
            newest = False
            if scan.torn is not None:
                self.repair.append(scan.torn)
                if scan.torn.removed_segment:
                    # A segment whose creation did not reach the disk: the one before it
                    # was complete and synced when it was made.
                    os.unlink(path)
                    fsync_dir(self.directory)
                    segments.pop()
                    continue
                with open(path, "r+b") as f:
                    f.truncate(scan.torn.offset)
                    os.fsync(f.fileno())
            self._path = path
            self._first = first
            self._end = scan.info.size
            self.last_seq = scan.info.last_seq
            self._fd = os.open(path, os.O_WRONLY)
            return

    def rebase(self, seq: int) -> None:
        """Make an empty journal continue after ``seq`` (a state restored from a
        snapshot whose journal was removed)."""
        if self._fd >= 0 or list_segments(self.directory):
            raise ValueError("only an empty journal can be rebased")
        self.last_seq = seq

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------

    def encode_batch(self, cmds: Sequence[Any]) -> bytes:
        """The body of the record ``append_batch`` would write for ``cmds`` (one or
        more), after its checks: RecordTooLarge past RECORD_COMMANDS_MAX commands or
        RECORD_BYTES_MAX bytes, ValueError for commands out of sequence."""
        n = len(cmds)
        if n > RECORD_COMMANDS_MAX:
            raise RecordTooLarge(f"{n} commands in one record, at most {RECORD_COMMANDS_MAX}")
        first = self.last_seq + 1
        if cmds[0].seq != first or cmds[-1].seq != first + n - 1:
            raise ValueError(f"journal expects seq {first}..{first + n - 1}, got {cmds[0].seq}..{cmds[-1].seq}")
        body = self.encoder.encode(cmds)
        if len(body) > RECORD_BYTES_MAX:
            raise RecordTooLarge(f"{n} commands encode to {len(body)} bytes, at most {RECORD_BYTES_MAX}")
        return body

    def append_batch(self, cmds: Sequence[Any], body: bytes | None = None) -> None:
        """Write the commands as one record and fdatasync once; return when durable.
        ``body``: the commands as ``encode_batch`` gave them, checked (the replicated
        journal publishes the same bytes first).
        All or nothing: on JournalUnavailable (the disk refused) none of ``cmds`` is in
        the journal. Raises RecordTooLarge past RECORD_COMMANDS_MAX commands or
        RECORD_BYTES_MAX bytes, ValueError for commands out of sequence (a programmer
        error upstream); nothing is written then."""
        n = len(cmds)
        if not n:
            return
        if body is None:
            body = self.encode_batch(cmds)
        first = self.last_seq + 1
        if self.failure is not None and not self.probe():
            raise self.failure
        record = encode_record(first, n, body)
        try:
            if self._fd < 0 or (self._end + len(record) > self.segment_bytes and self._end > SEGMENT_HEADER.size):
                self._rolling = True
                self._roll(first)
                self._rolling = False
            view = memoryview(record)
            pos = self._end
            done = 0
            while done < len(record):
                done += os.pwrite(self._fd, view[done:], pos + done)
            os.fdatasync(self._fd)
        except OSError as e:
            self._fail(e)
            assert self.failure is not None
            raise self.failure from e
        self._end += len(record)
        self.last_seq = first + n - 1
        self.appends += 1

    def _roll(self, first_seq: int) -> None:
        """Start a new segment: header written and synced, directory synced, before any
        record goes into it, so only the newest segment can ever be torn."""
        path = self.directory / segment_name(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = encode_segment_header(first_seq)
            os.pwrite(fd, header, 0)
            os.fdatasync(fd)
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        self.close()
        self._fd, self._path, self._first, self._end = fd, path, first_seq, len(header)

    def _fail(self, e: OSError) -> None:
        reason = f"{errno_.errorcode.get(e.errno or 0, 'error')}: {e.strerror or e}"
        self.failure = JournalUnavailable(reason, e.errno)

    def probe(self) -> bool:
        """After a failure: cut the active segment back to its durable end, then check
        that PROBE_BYTES can be written and synced there (and remove them). True when
        the journal works again. The probe goes through the journal's own descriptor,
        the one the next append writes to: when that append needs a new segment (the
        journal had none, or making the next one failed) the probe makes it, so a
        disk that takes a test file but not the journal is never called writable.
        Bytes past the durable end are never trusted: after a failed fsync the kernel
        may have dropped them."""
        if self.failure is None:
            return True
        try:
            if self._fd >= 0:
                os.ftruncate(self._fd, self._end)  # before anything else: cut what was not durable
            if self._fd < 0 or self._rolling:
                self._roll(self.last_seq + 1)
                self._rolling = False
            zeros = bytes(PROBE_BYTES)
            done = 0
            while done < PROBE_BYTES:
                done += os.pwrite(self._fd, zeros[done:], self._end + done)
            os.fdatasync(self._fd)
            os.ftruncate(self._fd, self._end)
            os.fdatasync(self._fd)
        except OSError as e:
            self._fail(e)
            return False
        self.failure = None
        return True

    # --- reading ----------------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.directory)

    def replay(self, after_seq: int = 0) -> Iterator[list[Any]]:
        """Yield the journaled commands with seq > after_seq, a record's worth at a time
        (the first one trimmed), verifying checksums and continuity as it reads. The
        journal must reach back to after_seq + 1 (else JournalCorrupt: a gap)."""
        yield from read_journal(self.directory, self.decoder, after_seq)


def read_journal(
    directory: Path | str, decoder: msgspec.msgpack.Decoder[Any], after_seq: int = 0
) -> Iterator[list[Any]]:
    """The reading half of Journal.replay, usable without opening the journal for writing
    (a torn tail is then skipped, not cut)."""
    segments = list_segments(directory)
    # Skip segments that end at or before after_seq: the next one starts at or below it + 1.
    i = 0
    while i + 1 < len(segments) and segments[i + 1][0] <= after_seq + 1:
        i += 1
    expect: int | None = None
    for j in range(i, len(segments)):
        first, path = segments[j]
        data = _read(path)
        scan = scan_segment(path, data, expect, newest=j == len(segments) - 1)
        if expect is None and scan.info.first_seq > after_seq + 1 and scan.info.records:
            raise JournalCorrupt(
                str(path), 0, f"the journal starts at seq {scan.info.first_seq}, seq {after_seq + 1} is needed"
            )
        view = memoryview(data)
        decode = decoder.decode
        for rec in scan.records:
            last = rec.first_seq + rec.count - 1
            if last <= after_seq:
                continue
            try:
                cmds = decode(view[rec.body_start : rec.body_end])
            except msgspec.DecodeError as e:
                raise JournalCorrupt(str(path), rec.offset, f"record does not decode: {e}") from e
            if len(cmds) != rec.count or cmds[0].seq != rec.first_seq or cmds[-1].seq != last:
                raise JournalCorrupt(str(path), rec.offset, "record body disagrees with its header's sequence range")
            if rec.first_seq <= after_seq:
                cmds = cmds[after_seq - rec.first_seq + 1 :]
            yield cmds
        expect = scan.info.last_seq + 1


class JournalTail:
    """Follows a journal another process appends to, from ``after_seq`` on, without
    opening it for writing (a snapshot follower beside the exchange).

    ``read(upto)`` yields the commands with seq in (``applied``, ``upto``], a record's
    worth at a time, cut at ``upto``: the caller names how far the journal is durable
    (the writer's acknowledged seq), because a record past that may still be cut back
    by a failed sync. What lies after ``upto`` is read again from the file next time,
    never kept. Every record is verified (checksum, sequence continuity) as in a
    replay; a record not yet complete on disk ends the read. A segment that does not
    continue the sequence, or a record that does not verify with more behind it,
    raises ``JournalCorrupt``."""

    def __init__(self, directory: Path | str, decoder: msgspec.msgpack.Decoder[Any], after_seq: int) -> None:
        self.directory = Path(directory)
        self.decoder = decoder
        self.applied = after_seq  # the last seq yielded
        self._path: Path | None = None  # the segment being followed
        self._pos = 0  # the offset of the next record in it to read

    def read(self, upto: int) -> Iterator[list[Any]]:
        while self.applied < upto:
            if self._path is None and not self._find_segment():
                return
            assert self._path is not None
            try:
                with open(self._path, "rb") as f:
                    f.seek(self._pos)
                    data = f.read()
            except FileNotFoundError:
                raise JournalCorrupt(str(self._path), self._pos, "the segment being followed was removed") from None
            moved = False
            base, pos, end = self._pos, 0, len(data)
            view = memoryview(data)
            while pos < end and self.applied < upto:
                rec = _record_at(data, pos, end)
                if isinstance(rec, str):
                    if _find_valid(data, pos + 1) >= 0:
                        raise JournalCorrupt(str(self._path), self._pos + pos, rec)
                    break  # the newest record is still being written
                first, count, body_end = rec
                last = first + count - 1
                if last <= self.applied:  # before the seq wanted (a follower's start)
                    pos = body_end
                    continue
                if first > self.applied + 1:
                    raise JournalCorrupt(str(self._path), self._pos + pos,
                                         f"expected a record holding seq {self.applied + 1}, found seq {first}")
                try:
                    cmds = self.decoder.decode(view[pos + RECORD_HEADER.size:body_end])
                except msgspec.DecodeError as e:
                    raise JournalCorrupt(str(self._path), self._pos + pos, f"record does not decode: {e}") from e
                take_to = min(last, upto)
                cmds = cmds[self.applied + 1 - first:take_to + 1 - first]
                self.applied = take_to
                moved = True
                if take_to == last:
                    pos = body_end  # the whole record is taken: read on after it next time
                self._pos = base + pos
                yield cmds
            self._pos = base + pos
            if self.applied < upto and not moved:
                # Nothing more here: the journal rolled on to a segment that continues
                # the sequence, or what comes next is not on disk yet.
                nxt = self.directory / segment_name(self.applied + 1)
                if not nxt.exists() or nxt == self._path:
                    return
                self._path, self._pos = None, 0

    def _find_segment(self) -> bool:
        """Open the segment that holds seq ``applied + 1``; False if none does yet."""
        want = self.applied + 1
        holder: Path | None = None
        for first, path in list_segments(self.directory):
            if first > want:
                break
            holder = path
        if holder is None:
            return False
        with open(holder, "rb") as f:
            head = f.read(SEGMENT_HEADER.size)
        if len(head) < SEGMENT_HEADER.size:
            return False  # being created
        magic, version, _, first_seq, crc = SEGMENT_HEADER.unpack_from(head, 0)
        if magic != SEGMENT_MAGIC or zlib.crc32(head[:16]) != crc or version != VERSION:
            raise JournalCorrupt(str(holder), 0, "segment header missing or damaged")
        self._path, self._pos = holder, SEGMENT_HEADER.size
        # Records before the one holding ``want`` are skipped by ``read``.
        return True


class GroupCommitter:
    """Batches the records of many submitters into one fsync, on a dedicated thread.

    ``submit(cmds, done)`` queues commands (in sequence order: submitters must hand them
    over in the order they were stamped); ``done(error)`` is called from the journal
    thread once they are durable (error None) or definitely not (a JournalUnavailable).
    ``commit(cmds)`` is the asyncio form: it returns when durable or raises.

    When the journal fails, the committer is marked failed and its expected sequence
    goes back to ``journal.last_seq + 1`` (under its lock, in one step), then
    ``on_state(False, reason)`` tells the operator, and only then is every queued
    submission failed with the same error: a submitter that reacts at once (rewinding
    its sequencer and submitting again) is refused as unavailable, never seen out of
    sequence, and the alert is out before any refusal. Later submissions fail at once
    (nothing is sequenced past a gap) and the thread probes every
    ``probe_interval_s`` through the journal's own descriptor; once a probe succeeds
    submissions are taken again (from ``journal.last_seq + 1``) and then
    ``on_state(True, "")`` is called. Commands that failed were never durable: their
    sequence numbers are free again and the caller must re-stamp.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        batch_commands_max: int = RECORD_COMMANDS_MAX,
        pending_commands_max: int = 1 << 20,
        probe_interval_s: float = 0.25,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        if not 0 < batch_commands_max <= RECORD_COMMANDS_MAX:
            raise ValueError(f"batch_commands_max must be in 1..{RECORD_COMMANDS_MAX}, got {batch_commands_max}")
        self.journal = journal
        self.batch_commands_max = batch_commands_max
        self.pending_commands_max = pending_commands_max
        self.probe_interval_s = probe_interval_s
        self.on_state = on_state
        self._cond = threading.Condition()
        self._queue: list[tuple[Sequence[Any], Callable[[BaseException | None], None]]] = []
        self._pending = 0
        self._next_seq = journal.last_seq + 1  # seq the next submission must start at
        self._closed = False
        self.failure: JournalUnavailable | None = None
        self.commits = 0
        self.commands = 0
        # How long each group commit (write and fdatasync) took, in microseconds: the
        # newest COMMIT_TIMES_MAX, for the operators' health figures.
        self.commit_us: collections.deque[int] = collections.deque(maxlen=COMMIT_TIMES_MAX)
        self._notifiers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopNotifier] = weakref.WeakKeyDictionary()
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    @property
    def available(self) -> bool:
        return self.failure is None

    def submit(self, cmds: Sequence[Any], done: Callable[[BaseException | None], None]) -> None:
        """Queue commands for the next group commit. Raises JournalUnavailable at once
        while the journal is failed, and when the queue would pass
        pending_commands_max (back-pressure: the caller must wait or reject)."""
        n = len(cmds)
        with self._cond:
            if self._closed:
                raise JournalUnavailable("journal closed")
            if self.failure is not None:
                raise self.failure
            if n > self.batch_commands_max:
                raise RecordTooLarge(f"{n} commands in one submission, at most {self.batch_commands_max}")
            if self._pending + n > self.pending_commands_max and self._pending:
                raise JournalUnavailable(f"journal queue full ({self._pending} commands pending)")
            if n and cmds[0].seq != self._next_seq:
                raise ValueError(f"submission must start at seq {self._next_seq}, got {cmds[0].seq}")
            self._next_seq += n
            self._queue.append((cmds, done))
            self._pending += n
            if len(self._queue) == 1:  # the thread sleeps only on an empty queue
                self._cond.notify()

    async def commit(self, cmds: Sequence[Any]) -> None:
        """Return once the commands are durable; raise JournalUnavailable if they are not."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        notifier = self._notifiers.get(loop)
        if notifier is None:
            notifier = self._notifiers[loop] = _LoopNotifier(loop)
        self.submit(cmds, lambda error: notifier.add(fut, error))
        await fut

    @property
    def durable_seq(self) -> int:
        """The last durable sequence number (stamping resumes after it on a failure)."""
        return self.journal.last_seq

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread (the journal stays open)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closed and self.failure is None:
                    cond.wait()
                if self.failure is not None:
                    if self._closed:
                        return
                    cond.wait(self.probe_interval_s)  # close() wakes it early
                    if self._closed:
                        return
                    taken: list[tuple[Sequence[Any], Callable[[BaseException | None], None]]] = []
                elif not self._queue:
                    return  # closed and drained
                else:
                    taken, count = _take(self._queue, self.batch_commands_max)
                    self._pending -= count
            if taken:
                self._commit(taken)
            elif self.journal.probe():
                with cond:
                    self.failure = None
                    self._next_seq = self.journal.last_seq + 1
                if self.on_state is not None:
                    self.on_state(True, "")

    def _commit(self, taken: list[tuple[Sequence[Any], Callable[[BaseException | None], None]]]) -> None:
        """One group commit; a group over the record limits goes one submission per
        record instead. Tells every submitter its outcome -- on a failure only after
        the committer is marked failed with its sequence rewound and the operator
        told (see the class docstring)."""
        error: JournalUnavailable | None = None
        failed: list[Callable[[BaseException | None], None]] = []
        groups = [taken]
        i = 0
        while i < len(groups):
            group = groups[i]
            i += 1
            if error is None:
                cmds: list[Any] = []
                for part, _ in group:
                    cmds.extend(part)
                try:
                    started = time.perf_counter()
                    self.journal.append_batch(cmds)
                    self.commit_us.append(int((time.perf_counter() - started) * 1e6))
                except RecordTooLarge:
                    if len(group) > 1:
                        groups[i:i] = [[sub] for sub in group]
                        continue
                    error = JournalUnavailable(f"a submission of {len(cmds)} commands exceeds the record limits")
                except JournalUnavailable as e:
                    error = e
                except Exception as e:  # a bug upstream or here: stop taking commands
                    error = JournalUnavailable(f"internal error: {e!r}")
                else:
                    self.commits += 1
                    self.commands += len(cmds)
                    for _, done in group:
                        done(None)
                    continue
            failed.extend(done for _, done in group)
        if error is None:
            return
        with self._cond:
            self.failure = error
            self._next_seq = self.journal.last_seq + 1  # the failed commands' numbers are free again
            rest, self._queue, self._pending = self._queue, [], 0
        if self.on_state is not None:
            self.on_state(False, error.reason)
        for done in failed + [done for _, done in rest]:
            done(error)


def _take(
    queue: list[tuple[Sequence[Any], Callable[[BaseException | None], None]]], limit: int
) -> tuple[list[tuple[Sequence[Any], Callable[[BaseException | None], None]]], int]:
    """Pop submissions off the front of the queue up to ``limit`` commands (at least one)."""
    count = 0
    k = 0
    while k < len(queue) and (k == 0 or count + len(queue[k][0]) <= limit):
        count += len(queue[k][0])
        k += 1
    taken = queue[:k]
    del queue[:k]
    return taken, count


class _LoopNotifier:
    """Resolves an event loop's commit futures with one wake-up of the loop per group
    commit instead of one per submission (call_soon_threadsafe writes to a pipe)."""

    __slots__ = ("loop", "lock", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.ready: list[tuple[asyncio.Future[None], BaseException | None]] = []

    def add(self, fut: asyncio.Future[None], error: BaseException | None) -> None:
        with self.lock:
            first = not self.ready
            self.ready.append((fut, error))
        if first:
            try:
                self.loop.call_soon_threadsafe(self.flush)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass

    def flush(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
        for fut, error in ready:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

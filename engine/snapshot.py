"""Snapshots of the whole core state, and the retention of snapshots and journal segments.

Contract:
- ``capture(core, edge=...)`` runs on the core's thread, between two batches: it takes
  the core's ``snapshot()`` object, encodes it at once (the core's objects keep
  changing after it returns) and computes ``state_hash()``. That encoding is the only
  pause trading sees. ``edge`` is the state of what surrounds the core at the same
  sequence number (the gateway's member streams), taken by its owner on the same
  thread as references to objects that no longer change; its ``encode()`` runs later,
  on the writing thread.
- ``SnapshotStore.write(capture)`` may run on any thread: it writes a temporary file,
  fsyncs it, renames it into place and fsyncs the directory, so a snapshot file either
  is complete or does not exist under its final name.
- ``SnapshotStore.load(path, type)`` verifies the header and body checksums and decodes
  the body; a file that does not verify raises ``SnapshotCorrupt`` (the caller falls back
  to an older snapshot). The state hash in the header is checked by the caller after
  ``restore``: only the core can compute it.
- ``SnapshotStore.load(path, type, edge_type)`` also decodes the edge state when the
  file has one (``Loaded.edge``; None when it has none or ``edge_type`` is None).
- ``retire`` keeps the ``keep`` newest snapshots, the newest end-of-day one and the
  newest one below ``keep_seq_from`` (the one a restart must fall back to while the
  commands from ``keep_seq_from`` on are still needed by a reader), and deletes the
  journal segments that lie entirely at or below the oldest kept one (never the newest
  segment, never one holding a sequence at or above ``keep_seq_from``, and none at all
  while no snapshot lies below ``keep_seq_from``: a restart then replays from seq 1).

File format (little-endian; file name ``{last_seq:020d}.snapshot``):

    header (36 bytes): magic "ETXS", version u16 (1), hash_len u16, flags u32 (bit 0:
        taken right after an end of day; bit 1: the body carries edge state), last_seq
        u64, body_len u64, body_crc32 u32, header_crc32 u32 (over the bytes before it
        and the hash)
    state hash: hash_len bytes of ASCII (the core's ``state_hash()``; the edge state
        is not in it, the body checksum covers it)
    body: msgpack of the core's ``snapshot()`` object; with bit 1, a msgpack array of
        two: that object, then the edge state
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from types import GenericAlias
from typing import Any, Protocol

import msgspec

from engine.journal import fsync_dir, list_segments

SNAPSHOT_MAGIC = b"ETXS"
SNAPSHOT_VERSION = 1
SNAPSHOT_HEADER = struct.Struct("<4sHHIQQII")
END_OF_DAY = 1  # header flag
EDGE = 2  # header flag: the body is [core snapshot, edge state]
PAIR = b"\x92"  # msgpack: an array of two elements follows
SNAPSHOT_SUFFIX = ".snapshot"
TMP_SUFFIX = ".tmp"
KEEP_DEFAULT = 3


class Snapshottable(Protocol):
    """What a core offers to be snapshotted: ``restore`` loads a snapshot into a
    freshly built core with the same configuration."""

    @property
    def last_seq(self) -> int: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...

    def state_hash(self) -> str: ...


class SnapshotCorrupt(Exception):
    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"snapshot {self.path} unusable: {reason}")


class EdgeState(Protocol):
    """State taken beside the core's at the same sequence number, encoded later."""

    def encode(self) -> bytes:
        """msgpack of the state; called once, on the thread that writes the snapshot."""
        ...


class Capture(msgspec.Struct, frozen=True):
    """An encoded snapshot, ready to be written from any thread."""

    last_seq: int
    state_hash: str
    body: bytes  # the core's snapshot, encoded
    end_of_day: bool = False  # taken right after an EndOfDay: the next day starts after it
    edge: EdgeState | None = None  # encoded by the writer


class Loaded(msgspec.Struct, frozen=True):
    path: str
    last_seq: int
    state_hash: str
    state: Any
    end_of_day: bool = False
    edge: Any = None


class Retired(msgspec.Struct):
    snapshots: list[str]
    segments: list[str]


def capture(core: Snapshottable, end_of_day: bool = False, edge: EdgeState | None = None) -> Capture:
    """Encode the core's state now (see the module docstring)."""
    body = msgspec.msgpack.encode(core.snapshot())
    return Capture(core.last_seq, core.state_hash(), body, end_of_day, edge)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the descriptor (os.write may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def list_snapshots(directory: Path | str) -> list[tuple[int, Path]]:
    """(last seq, path) of every snapshot file in the directory, oldest first."""
    out = []
    for p in Path(directory).iterdir():
        stem = p.name[: -len(SNAPSHOT_SUFFIX)]
        if p.name.endswith(SNAPSHOT_SUFFIX) and stem.isdigit():
            out.append((int(stem), p))
    out.sort()
    return out


def snapshot_name(last_seq: int) -> str:
    return f"{last_seq:020d}{SNAPSHOT_SUFFIX}"


def encode_snapshot(cap: Capture) -> bytes:
    """The file's bytes; encodes the edge state, if any (the writer's thread)."""
    digest = cap.state_hash.encode("ascii")
    flags = END_OF_DAY if cap.end_of_day else 0
    body = cap.body
    if cap.edge is not None:
        flags |= EDGE
        body = b"".join((PAIR, body, cap.edge.encode()))
    head = SNAPSHOT_HEADER.pack(
        SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(digest), flags, cap.last_seq, len(body), zlib.crc32(body), 0
    )[:-4]
    return b"".join((head, struct.pack("<I", zlib.crc32(digest, zlib.crc32(head))), digest, body))


def decode_snapshot_header(data: bytes | memoryview, path: Path | str) -> tuple[int, str, int, bool]:
    """(last_seq, state hash, offset of the body, end of day) of a snapshot file's
    bytes, verified."""
    last_seq, digest, start, flags = _decode_header(data, path)
    return last_seq, digest, start, bool(flags & END_OF_DAY)


def _decode_header(data: bytes | memoryview, path: Path | str) -> tuple[int, str, int, int]:
    size = SNAPSHOT_HEADER.size
    if len(data) < size:
        raise SnapshotCorrupt(path, f"{len(data)} bytes, shorter than the header")
    magic, version, hash_len, flags, last_seq, body_len, body_crc, header_crc = SNAPSHOT_HEADER.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotCorrupt(path, f"expected magic {SNAPSHOT_MAGIC!r}, found {bytes(magic)!r}")
    digest = bytes(data[size : size + hash_len])
    if zlib.crc32(digest, zlib.crc32(data[: size - 4])) != header_crc:
        raise SnapshotCorrupt(path, "header checksum mismatch")
    if version != SNAPSHOT_VERSION:
        raise SnapshotCorrupt(path, f"format version {version}, this build reads {SNAPSHOT_VERSION}")
    start = size + hash_len
    if len(data) != start + body_len:
        raise SnapshotCorrupt(path, f"expected {start + body_len} bytes, the file has {len(data)}")
    if zlib.crc32(memoryview(data)[start:]) != body_crc:
        raise SnapshotCorrupt(path, "body checksum mismatch")
    return last_seq, digest.decode("ascii"), start, flags


class SnapshotStore:
    """The snapshot directory of one core."""

    def __init__(self, directory: Path | str, *, keep: int = KEEP_DEFAULT, writer: bool = True) -> None:
        """``writer``: this process writes the snapshots (the directory is made and the
        leftovers of interrupted writes removed); a reader (``writer=False``, e.g. an
        audit beside a running exchange) changes nothing."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        if not writer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for p in self.directory.iterdir():
            if p.name.endswith(TMP_SUFFIX):
                p.unlink()  # a write a crash interrupted; it never had its final name

    def list(self) -> list[tuple[int, Path]]:
        """(last seq, path) of every snapshot file, oldest first."""
        return list_snapshots(self.directory)

    def newest_end_of_day(self) -> int | None:
        """The seq of the newest end-of-day snapshot whose header verifies, if any."""
        for seq, path in reversed(self.list()):
            try:
                with open(path, "rb") as f:
                    head = f.read(SNAPSHOT_HEADER.size)
            except OSError:
                continue
            if len(head) == SNAPSHOT_HEADER.size:
                flags = SNAPSHOT_HEADER.unpack_from(head, 0)[3]
                if flags & END_OF_DAY:
                    return seq
        return None

    def write(self, cap: Capture) -> Path:
        """Write the snapshot durably under its final name (see the module docstring)."""
        path = self.directory / snapshot_name(cap.last_seq)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        data = encode_snapshot(cap)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(self.directory)
        return path

    def load(self, path: Path | str, state_type: Any, edge_type: Any = None) -> Loaded:
        """Read and verify one snapshot; its body decoded as ``state_type`` (and its edge
        state, if it has one, as ``edge_type``; left undecoded when that is None)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise SnapshotCorrupt(path, f"cannot read: {e}") from e
        last_seq, digest, start, flags = _decode_header(data, path)
        name = Path(path).name
        if name != snapshot_name(last_seq):
            raise SnapshotCorrupt(path, f"header says seq {last_seq}, the file name disagrees")
        edge = None
        try:
            body = memoryview(data)[start:]
            if flags & EDGE:
                pair = GenericAlias(tuple, (state_type, edge_type if edge_type is not None else msgspec.Raw))
                state, edge = msgspec.msgpack.decode(body, type=pair)
                if edge_type is None:
                    edge = None
            else:
                state = msgspec.msgpack.decode(body, type=state_type)
        except msgspec.DecodeError as e:
            raise SnapshotCorrupt(path, f"body does not decode: {e}") from e
        return Loaded(str(path), last_seq, digest, state, bool(flags & END_OF_DAY), edge)

    def retire(self, journal_dir: Path | str | None = None, keep_seq_from: int | None = None) -> Retired:
        """Delete all but the ``keep`` newest snapshots (the newest end-of-day one, and
        the newest one below ``keep_seq_from``, stay too), and the journal segments
        whose every command is at or below the oldest kept snapshot's seq (and below
        ``keep_seq_from``, a sequence some reader still needs; with no snapshot below
        it, no segment goes). Directories are synced."""
        snaps = self.list()
        eod = self.newest_end_of_day()
        fallback = -1  # the snapshot a restart uses while commands from keep_seq_from on are needed
        if keep_seq_from is not None:
            fallback = max((s for s, _ in snaps if s < keep_seq_from), default=0)
        keep = {eod, fallback}
        gone = [(s, p) for s, p in snaps[: -self.keep] if s not in keep] if len(snaps) > self.keep else []
        for _, p in gone:
            p.unlink()
        if gone:
            fsync_dir(self.directory)
        removed = Retired([str(p) for _, p in gone], [])
        kept = [sp for sp in snaps if sp not in gone]
        if journal_dir is None or not kept:
            return removed
        limit = kept[0][0]  # segments entirely at or below it are covered by a snapshot
        if keep_seq_from is not None:
            limit = min(limit, fallback)  # 0 when no snapshot lies below it: keep the whole journal
        segments = list_segments(journal_dir)
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            if next_first - 1 > limit:
                break
            path.unlink()
            removed.segments.append(str(path))
        if removed.segments:
            fsync_dir(Path(journal_dir))
        return removed

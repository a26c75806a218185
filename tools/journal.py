"""``etx journal verify|inspect|stats``: the operator's view of a journal and its snapshots.

PATH is the exchange's data directory (holding ``journal/`` and ``snapshots/``) or a
journal directory itself. Nothing here writes: a torn tail is reported, not cut (the
next start cuts it).

- ``verify``: every segment's header, every record's checksum and sequence range, that
  every record decodes, and every snapshot's checksums. With ``--config`` it also
  replays the whole journal into a fresh core (``gateway.recovery.core_factory``) and
  checks each snapshot's recorded state hash against the replayed state at its sequence, then prints the state hash
  after replay. Exit status 0 when everything verifies (a torn tail is a warning), 1
  when anything is damaged.
- ``inspect``: the commands in a sequence range, one JSON object per line.
- ``stats``: segments with their ranges and sizes, records, commands per type, the time
  range, snapshots.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from engine.journal import (
    JournalCorrupt,
    SegmentScan,
    TornTail,
    command_decoder,
    list_segments,
    scan_segment,
)
from engine.snapshot import SnapshotCorrupt, decode_snapshot_header, list_snapshots
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, journal_command_types


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = sub.add_parser("verify", help="check checksums, ranges and snapshots; with --config, replay and check hashes")
    v.add_argument("path", help="data directory (with journal/ and snapshots/) or a journal directory")
    v.add_argument("--config", help="the exchange's config file: replay the journal and check the state hashes")
    i = sub.add_parser("inspect", help="print journaled commands as JSON lines")
    i.add_argument("path")
    i.add_argument("--from", dest="from_seq", type=int, default=1, help="first sequence number (default 1)")
    i.add_argument("--to", dest="to_seq", type=int, default=0, help="last sequence number (default: the end)")
    i.add_argument("--limit", type=int, default=1000, help="at most this many commands (default 1000)")
    i.add_argument("--type", dest="type_name", default="", help="only commands of this type, e.g. NewOrder")
    s = sub.add_parser("stats", help="segments, ranges, per-type counts, snapshots")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print the statistics as one JSON object")


def run(args: argparse.Namespace) -> int:
    journal_dir, snapshot_dir = _dirs(Path(args.path))
    if not journal_dir.is_dir():
        print(f"etx journal: no journal directory at {journal_dir}", file=sys.stderr)
        return 2
    try:
        if args.action == "verify":
            return _verify(journal_dir, snapshot_dir, args.config)
        if args.action == "inspect":
            return _inspect(journal_dir, args.from_seq, args.to_seq, args.limit, args.type_name)
        return _stats(journal_dir, snapshot_dir, args.json)
    except BrokenPipeError:  # `etx journal inspect ... | head`
        return 0


def _dirs(path: Path) -> tuple[Path, Path | None]:
    if (path / JOURNAL_DIR).is_dir():
        return path / JOURNAL_DIR, path / SNAPSHOT_DIR
    return path, None


def _type_names() -> dict[int, str]:
    return {int(t.__struct_config__.tag): t.__name__ for t in journal_command_types()}  # type: ignore[attr-defined]


def scan_all(journal_dir: Path) -> tuple[list[tuple[SegmentScan, bytes]], JournalCorrupt | None]:
    """Every segment verified in order (continuity across segments included); stops at
    the first damage, which is returned rather than raised."""
    segments = list_segments(journal_dir)
    out: list[tuple[SegmentScan, bytes]] = []
    expect: int | None = None
    for k, (_, path) in enumerate(segments):
        data = path.read_bytes()
        try:
            scan = scan_segment(path, data, expect, newest=k == len(segments) - 1)
        except JournalCorrupt as e:
            return out, e
        out.append((scan, data))
        expect = scan.info.last_seq + 1
    return out, None


def _torn_line(t: TornTail) -> str:
    what = "a segment with nothing valid in it" if t.removed_segment else f"{t.bytes} bytes at offset {t.offset}"
    return f"warning: torn tail in {t.segment}: {what} ({t.reason}); the next start cuts it"


def _verify(journal_dir: Path, snapshot_dir: Path | None, config: str | None) -> int:
    ok = True
    scans, damage = scan_all(journal_dir)
    decoder = command_decoder(journal_command_types())
    first = last = 0
    commands = 0
    for scan, data in scans:
        info = scan.info
        view = memoryview(data)
        for rec in scan.records:
            try:
                cmds = decoder.decode(view[rec.body_start : rec.body_end])
            except msgspec.DecodeError as e:
                print(f"damaged: {info.path} at byte {rec.offset}: record does not decode: {e}")
                ok = False
                break
            if len(cmds) != rec.count or cmds[0].seq != rec.first_seq:
                print(f"damaged: {info.path} at byte {rec.offset}: body disagrees with the header's range")
                ok = False
                break
        if info.records:
            first = first or info.first_seq
            last = info.last_seq
        commands += info.commands
        print(f"segment {Path(info.path).name}: seq {info.first_seq}..{info.last_seq}, "
              f"{info.records} records, {info.size} bytes verified")
        if scan.torn is not None:
            print(_torn_line(scan.torn))
    if damage is not None:
        print(f"damaged: {damage}")
        ok = False
    print(f"journal: {commands} commands, seq {first}..{last}" if commands else "journal: empty")
    snaps: list[tuple[int, str, Path]] = []
    if snapshot_dir is not None and snapshot_dir.is_dir():
        for _, path in list_snapshots(snapshot_dir):
            try:
                sseq, digest, _, eod = decode_snapshot_header(path.read_bytes(), path)
            except SnapshotCorrupt as e:
                print(f"damaged: {e}")
                ok = False
                continue
            print(f"snapshot {path.name}: seq {sseq}, state hash {digest}{', end of day' if eod else ''}")
            snaps.append((sseq, digest, path))
    if config is not None and damage is None and ok:
        ok = _verify_replay(journal_dir, config, snaps) and ok
    print("verified" if ok else "NOT verified")
    return 0 if ok else 1


def _verify_replay(journal_dir: Path, config: str, snaps: list[tuple[int, str, Path]]) -> bool:
    """Replay everything from an empty core (the cycle collector paused, as recovery
    does); compare each snapshot's recorded hash."""
    from engine.journal import read_journal
    from gateway.recovery import collector_paused

    with collector_paused():
        core = _core_from_config(config)
        decoder = command_decoder(journal_command_types())
        marks = sorted(snaps)
        ok = True
        k = 0
        first_seq = None
        for batch in read_journal(journal_dir, decoder, 0):
            if first_seq is None:
                first_seq = batch[0].seq
                if first_seq != 1:
                    print(f"cannot replay from an empty state: the journal starts at seq {first_seq}")
                    return False
            while k < len(marks) and marks[k][0] < batch[0].seq:
                k += 1  # snapshots older than the journal's start
            start = 0
            while k < len(marks) and marks[k][0] <= batch[-1].seq:
                cut = marks[k][0] - batch[0].seq + 1
                core.apply_batch(batch[start:cut])
                core.out.clear()
                start = cut
                found = core.state_hash()
                if found != marks[k][1]:
                    print(f"damaged: snapshot {marks[k][2].name} records {marks[k][1]}, replay gives {found}")
                    ok = False
                else:
                    print(f"snapshot {marks[k][2].name}: state hash matches the replay")
                k += 1
            core.apply_batch(batch[start:])
            core.out.clear()
        print(f"replayed to seq {core.last_seq}: state hash {core.state_hash()}")
        return ok


def _core_from_config(path: str) -> Any:
    """The core ``etx serve`` builds from this config, fresh."""
    from gateway.config import load
    from gateway.recovery import core_factory

    return core_factory(load(path))()


def _inspect(journal_dir: Path, from_seq: int, to_seq: int, limit: int, type_name: str) -> int:
    from engine.journal import read_journal

    decoder = command_decoder(journal_command_types())
    encode = msgspec.json.encode
    shown = 0
    out = sys.stdout
    try:
        for batch in read_journal(journal_dir, decoder, max(from_seq - 1, 0)):
            for cmd in batch:
                if to_seq and cmd.seq > to_seq:
                    return 0
                name = type(cmd).__name__
                if type_name and name != type_name:
                    continue
                row = {"type": name, **msgspec.structs.asdict(cmd)}
                out.write(encode(row).decode() + "\n")
                shown += 1
                if shown >= limit:
                    return 0
    except JournalCorrupt as e:
        print(f"damaged: {e}", file=sys.stderr)
        return 1
    return 0


class SegmentStats(msgspec.Struct):
    name: str
    first_seq: int
    last_seq: int
    records: int
    commands: int
    bytes: int
    torn_bytes: int


class SnapshotStats(msgspec.Struct):
    name: str
    seq: int
    bytes: int
    state_hash: str


class Stats(msgspec.Struct):
    segments: list[SegmentStats]
    records: int
    commands: int
    first_seq: int
    last_seq: int
    first_ts: int
    last_ts: int
    bytes: int
    types: dict[str, int]
    snapshots: list[SnapshotStats]
    damage: str


def collect_stats(journal_dir: Path, snapshot_dir: Path | None) -> Stats:
    """Statistics of a journal (and its snapshots). Bodies are decoded generically, so
    a command type this build does not know is still counted (by its tag)."""
    names = _type_names()
    scans, damage = scan_all(journal_dir)
    tags: Counter[int] = Counter()
    segs = []
    first_ts = last_ts = 0
    for scan, data in scans:
        info = scan.info
        view = memoryview(data)
        for rec in scan.records:
            rows = msgspec.msgpack.decode(view[rec.body_start : rec.body_end])
            tags.update(row[0] for row in rows)
            if not first_ts:
                first_ts = rows[0][-1]
            last_ts = rows[-1][-1]
        segs.append(SegmentStats(Path(info.path).name, info.first_seq, info.last_seq, info.records, info.commands,
                                 len(data), scan.torn.bytes if scan.torn else 0))
    snaps = []
    if snapshot_dir is not None and snapshot_dir.is_dir():
        for _, path in list_snapshots(snapshot_dir):
            data = path.read_bytes()
            try:
                seq, digest, _, _ = decode_snapshot_header(data, path)
            except SnapshotCorrupt as e:
                seq, digest = -1, f"damaged: {e.reason}"
            snaps.append(SnapshotStats(path.name, seq, len(data), digest))
    with_records = [s for s in segs if s.records]
    return Stats(
        segments=segs,
        records=sum(s.records for s in segs),
        commands=sum(s.commands for s in segs),
        first_seq=with_records[0].first_seq if with_records else 0,
        last_seq=with_records[-1].last_seq if with_records else 0,
        first_ts=first_ts,
        last_ts=last_ts,
        bytes=sum(s.bytes for s in segs),
        types={names.get(t, f"tag {t}"): n for t, n in sorted(tags.items())},
        snapshots=snaps,
        damage=str(damage) if damage is not None else "",
    )


def _stats(journal_dir: Path, snapshot_dir: Path | None, as_json: bool) -> int:
    st = collect_stats(journal_dir, snapshot_dir)
    if as_json:
        print(msgspec.json.encode(st).decode())
        return 1 if st.damage else 0
    for s in st.segments:
        torn = f", torn tail {s.torn_bytes} bytes" if s.torn_bytes else ""
        print(f"{s.name}: seq {s.first_seq}..{s.last_seq}, {s.records} records, {s.commands} commands, {s.bytes} bytes{torn}")
    print(f"total: {st.commands} commands in {st.records} records, seq {st.first_seq}..{st.last_seq}, {st.bytes} bytes")
    if st.records:
        print(f"commands per record: {st.commands / st.records:.1f}; time range ts {st.first_ts}..{st.last_ts} "
              f"({(st.last_ts - st.first_ts) / 1e9:.3f} s)")
    for name, n in st.types.items():
        print(f"  {name}: {n}")
    for sn in st.snapshots:
        print(f"snapshot {sn.name}: seq {sn.seq}, {sn.bytes} bytes, state hash {sn.state_hash}")
    if st.damage:
        print(f"damaged: {st.damage}")
        return 1
    return 0

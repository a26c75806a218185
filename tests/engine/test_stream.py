"""Order-stream files (engine.stream): round trips in both encodings, and malformed
files answered by StreamError naming the file, the frame and what was expected."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from engine import (
    CASH,
    Amend,
    Cancel,
    EndOfDay,
    Halt,
    HitOrder,
    Instrument,
    MassCancel,
    NewOrder,
    Resume,
    Schedule,
    Side,
    Tick,
)
from engine.stream import (
    FRAME_MAX,
    STREAM_VERSION,
    StreamError,
    StreamHeader,
    Tally,
    build_engine,
    read_stream,
    write_stream,
)

HEADER = StreamHeader(
    version=STREAM_VERSION,
    instruments=[Instrument(symbol="CEA24", ref_price=10_000), Instrument(symbol="CEA23", ref_price=9_000, holds=False)],
    schedule=Schedule(),
    holds=[("M1", CASH, 10**9), ("M2", "CEA24", 1_000)],
    description="test",
)
COMMANDS = [
    NewOrder("M1", "c1", "CEA24", Side.BUY, 100, 10_000),
    NewOrder("M2", "c1", "CEA24", Side.SELL, 50, 10_000, seq=2, ts=5),
    Cancel("M1", 1),
    Amend("M1", 1, 10_001, 40),
    MassCancel("M1"),
    HitOrder("M2", "c2", "CEA24", 1, 10),
    Halt("CEA24", True),
    Resume("CEA24"),
    Tick(),
    EndOfDay(),
]


@pytest.mark.parametrize("name", ["s.etx", "s.jsonl"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert write_stream(path, HEADER, COMMANDS) == len(COMMANDS)
    header, commands = read_stream(path)
    assert header == HEADER
    assert list(commands) == COMMANDS


def test_binary_frames_are_length_prefixed_msgpack(tmp_path: Path) -> None:
    path = tmp_path / "s.etx"
    write_stream(path, HEADER, COMMANDS[:1])
    data = path.read_bytes()
    size = int.from_bytes(data[:4], "big")
    assert msgspec.msgpack.decode(data[4:4 + size], type=StreamHeader) == HEADER
    body = data[8 + size:]
    assert int.from_bytes(data[4 + size:8 + size], "big") == len(body)
    assert msgspec.msgpack.decode(body) == [1, "M1", "c1", "CEA24", 1, 100, 10_000, 1, 1, 0, 0, 0]


def test_hand_written_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "hand.jsonl"
    path.write_text(
        "# a hand-written stream\n"
        '{"version": 1, "instruments": [{"symbol": "CEA24", "ref_price": 10000, "holds": false}]}\n'
        "\n"
        '[1, "M1", "b1", "CEA24", 1, 100, 10000]\n'
        '[1, "M2", "s1", "CEA24", 2, 60, 9990]\n'
        "   # comments and blank lines are skipped\n"
        '[2, "M1", 1]\n'
    )
    header, commands = read_stream(path)
    assert header.instruments[0].symbol == "CEA24" and header.holds == []
    cmds = list(commands)
    assert cmds == [
        NewOrder("M1", "b1", "CEA24", 1, 100, 10_000),
        NewOrder("M2", "s1", "CEA24", 2, 60, 9_990),
        Cancel("M1", 1),
    ]


def write_frames(path: Path, *bodies: bytes) -> None:
    path.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in bodies))


def header_body() -> bytes:
    return msgspec.msgpack.encode(HEADER)


def error_of(path: Path) -> StreamError:
    with pytest.raises(StreamError) as info:
        _, commands = read_stream(path)
        list(commands)
    return info.value


def test_truncated_body(tmp_path: Path) -> None:
    path = tmp_path / "t.etx"
    write_stream(path, HEADER, COMMANDS[:3])
    path.write_bytes(path.read_bytes()[:-2])
    error = error_of(path)
    assert error.frame == 3 and error.fatal
    assert str(error).startswith(f"{path}: frame 3: truncated: expected a body of")


def test_truncated_length(tmp_path: Path) -> None:
    path = tmp_path / "t.etx"
    write_stream(path, HEADER, COMMANDS[:1])
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    error = error_of(path)
    assert "frame 2: truncated: 2 bytes where a 4-byte length was expected" in str(error)


def test_bad_tag(tmp_path: Path) -> None:
    path = tmp_path / "b.etx"
    write_frames(path, header_body(), msgspec.msgpack.encode(COMMANDS[0]), msgspec.msgpack.encode([99, "x"]))
    error = error_of(path)
    assert error.frame == 2 and not error.fatal
    assert "frame 2: expected a command (a tagged msgpack array): Invalid value 99 - at `$[0]`" in str(error)


def test_wrong_field_type(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"version": 1, "instruments": [{"symbol": "A", "ref_price": 5}]}\n[2, "M1", "one"]\n')
    error = error_of(path)
    assert "line 2: expected a command (a JSON array starting with its tag): Expected `int`, got `str`" in str(error)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "frame 0 (header): empty file: expected a header frame"),
        (b"\x00\x00\x00\x03abc", "frame 0 (header): expected a stream header (a msgpack map)"),
        (b"GARBAGE GARBAGE GARBAGE", "frame 0 (header): length 1195463234 exceeds the maximum frame"),
        (b"\x00\x00\x00", "frame 0 (header): truncated: 3 bytes where a 4-byte length was expected"),
    ],
)
def test_garbage_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "g.etx"
    path.write_bytes(content)
    assert expected in str(error_of(path))


@pytest.mark.parametrize(
    "header, expected",
    [
        ({"version": 2, "instruments": []}, "stream version 2 is not supported (expected 1)"),
        ({"version": 1, "instruments": []}, "the header lists no instruments"),
        ({"version": 1, "instruments": [{"symbol": "A", "ref_price": 0}]}, "A: ref_price must be positive, got 0"),
        ({"version": 1, "instruments": [{"symbol": "A", "ref_price": 5}], "holds": [["M1", "CNY", -1]]},
         "holds[0]: expected (account, asset, amount >= 0)"),
        ({"version": 1, "instruments": [{"symbol": "A", "ref_price": 5}], "extra": 1}, "unknown field `extra`"),
    ],
)
def test_bad_headers(tmp_path: Path, header: dict[str, object], expected: str) -> None:
    path = tmp_path / "h.etx"
    write_frames(path, msgspec.msgpack.encode(header))
    error = error_of(path)
    assert error.frame == 0 and expected in str(error)
    jpath = tmp_path / "h.jsonl"
    jpath.write_bytes(msgspec.json.encode(header) + b"\n")
    assert f"{jpath}: line 1: " in str(error_of(jpath)) and expected in str(error_of(jpath))


def test_missing_file(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.etx")
    assert error.frame == -1 and "cannot open" in str(error)


def test_skip_bad_frames(tmp_path: Path) -> None:
    path = tmp_path / "s.etx"
    good = [msgspec.msgpack.encode(c) for c in COMMANDS[:3]]
    write_frames(path, header_body(), good[0], b"\xc1", good[1], msgspec.msgpack.encode([1]), good[2])
    errors: list[StreamError] = []
    _, commands = read_stream(path, on_error=errors.append)
    assert list(commands) == COMMANDS[:3]
    assert [e.frame for e in errors] == [2, 4] and not any(e.fatal for e in errors)


def test_skip_stops_at_a_frame_it_cannot_delimit(tmp_path: Path) -> None:
    path = tmp_path / "s.etx"
    write_frames(path, header_body(), msgspec.msgpack.encode(COMMANDS[0]))
    path.write_bytes(path.read_bytes() + (FRAME_MAX + 1).to_bytes(4, "big") + b"xx")
    errors: list[StreamError] = []
    _, commands = read_stream(path, on_error=errors.append)
    assert list(commands) == COMMANDS[:1]
    assert len(errors) == 1 and errors[0].fatal and "exceeds the maximum frame" in str(errors[0])


def test_random_corruption_only_raises_stream_error(tmp_path: Path) -> None:
    seed = 20240501
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = tmp_path / "c.etx"
    write_stream(path, HEADER, COMMANDS * 3)
    clean = path.read_bytes()
    for _ in range(300):
        data = bytearray(clean)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        path.write_bytes(bytes(data))
        for on_error in (None, lambda e: None):
            try:
                _, commands = read_stream(path, on_error=on_error)
                for _cmd in commands:
                    pass
            except StreamError:
                pass


def test_writer_refuses_oversized_frames(tmp_path: Path) -> None:
    huge = NewOrder("M1", "x" * (FRAME_MAX + 1), "CEA24", 1, 1, 1)
    with pytest.raises(ValueError, match="exceeds the maximum"):
        write_stream(tmp_path / "x.etx", HEADER, [huge])


def test_build_engine_funds_the_ledger_and_tally_counts() -> None:
    engine = build_engine(HEADER)
    assert engine.ledger is not None
    assert ("M1", CASH, 10**9, 0) in engine.ledger.state()
    buy = NewOrder("M1", "b", "CEA24", 1, 10, 10_000, seq=1, ts=1_730_683_800_000_000_000)
    sell = NewOrder("M2", "s", "CEA24", 2, 10, 10_000, seq=2, ts=1_730_683_800_000_000_000)
    bad = Cancel("M1", 99, seq=3, ts=1_730_683_800_000_000_000)
    engine.apply_batch([buy, sell, bad])
    tally = Tally()
    tally.feed(engine.out)
    assert (tally.accepted, tally.trades, tally.volume, tally.value) == (2, 1, 10, 100_000)
    assert tally.rejected_by_name() == {"UNKNOWN_ORDER": 1}

"""``etx replay``: the summary and state hash of a generated stream, determinism, bad
frames reported (stop or skip) without a traceback, and LOBSTER input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from benchmarks.generator import generate
from engine.stream import build_engine, write_stream
from tools.cli import main

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lobster" / "LOBSTER_SampleFile_GOOG_2012-06-21_10.zip"


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = generate("mixed", 2_000, 3)
    path = tmp_path_factory.mktemp("replay") / "mixed.etx"
    write_stream(path, work.header, work.all())
    return path


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def hash_of(text: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.strip().startswith("state hash"))


def test_summary_and_state_hash(stream: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = replay(capsys, stream)
    assert code == 0 and err == ""
    assert "commands/s in the engine" in out and "trades" in out and "volume" in out
    assert "2,200 read, 2,200 applied, 0 bad" in out
    # The hash is the engine's own: applying the stream directly gives the same.
    work = generate("mixed", 2_000, 3)
    engine = build_engine(work.header)
    engine.apply_batch(work.all())
    assert hash_of(out) == engine.state_hash()
    code, again, _ = replay(capsys, stream, "--batch", "7")
    assert hash_of(again) == hash_of(out)


def test_json_summary_and_jsonl_give_the_same_state(stream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = replay(capsys, stream, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["commands_applied"] == 2_200 and summary["trades"] > 0
    work = generate("mixed", 2_000, 3)
    jsonl = tmp_path / "mixed.jsonl"
    write_stream(jsonl, work.header, work.all())
    code, out, _ = replay(capsys, jsonl, "--json")
    assert code == 0 and json.loads(out)["state_hash"] == summary["state_hash"]


def test_unstamped_commands_are_stamped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hand.jsonl"
    path.write_text(
        '{"version": 1, "instruments": [{"symbol": "CEA24", "ref_price": 10000, "holds": false}]}\n'
        '[1, "M1", "b1", "CEA24", 1, 100, 10000]\n'
        '[1, "M2", "s1", "CEA24", 2, 60, 9990]\n'
    )
    code, out, _ = replay(capsys, path, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["trades"] == 1 and summary["volume"] == 60
    assert summary["books"]["CEA24"]["bid"] == 10_000 and summary["books"]["CEA24"]["bid_qty"] == 40


def corrupt(stream: Path, tmp_path: Path) -> Path:
    """The stream with its fifth command frame's body replaced by garbage of the same length."""
    data = bytearray(stream.read_bytes())
    pos = 0
    for _ in range(5):  # the header and four commands
        pos += 4 + int.from_bytes(data[pos:pos + 4], "big")
    size = int.from_bytes(data[pos:pos + 4], "big")
    data[pos + 4:pos + 4 + size] = b"\xc1" * size
    path = tmp_path / "bad.etx"
    path.write_bytes(bytes(data))
    return path


def test_bad_frame_stops_by_default(stream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = replay(capsys, corrupt(stream, tmp_path))
    assert code == 1 and "Traceback" not in out + err
    assert "4 read, 4 applied, 1 bad" in out
    assert "frame 5: expected a command (a tagged msgpack array)" in out


def test_bad_frame_skipped_on_request(stream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = replay(capsys, corrupt(stream, tmp_path), "--on-error", "skip")
    assert code == 1
    assert "2,199 read, 2,199 applied, 1 bad" in out
    assert "frame 5: expected a command" in out


def test_truncated_file(stream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "short.etx"
    path.write_bytes(stream.read_bytes()[:-3])
    for mode in ("stop", "skip"):
        code, out, err = replay(capsys, path, "--on-error", mode)
        assert code == 1 and "Traceback" not in out + err
        assert "2,199 read, 2,199 applied, 1 bad" in out and "frame 2200: truncated" in out


def test_wrong_sequence_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = generate("mixed", 50, 3)
    cmds = work.all()
    cmds[10].seq = 99  # type: ignore[attr-defined]
    path = tmp_path / "seq.etx"
    write_stream(path, work.header, cmds)
    code, out, _ = replay(capsys, path)
    assert code == 1 and "command 11: sequence number 99, expected 11" in out and "10 applied" in out
    code, out, _ = replay(capsys, path, "--on-error", "skip")
    assert code == 1 and f"{len(cmds) - 1:,} applied, 1 bad" in out


@pytest.mark.parametrize("content", [b"", b"not a stream at all", msgspec.msgpack.encode({"version": 9})])
def test_unreadable_stream(tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.etx"
    path.write_bytes(content)
    code, out, err = replay(capsys, path)
    assert code == 2 and out == "" and err.startswith(f"etx replay: {path}: frame 0 (header): ")


def test_missing_file_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = replay(capsys, tmp_path / "none.etx")
    assert code == 2 and "cannot open" in err
    code, _, err = replay(capsys, tmp_path / "none.zip")
    assert code == 2 and "no such file" in err
    code, _, err = replay(capsys, tmp_path / "none.etx", "--batch", "0")
    assert code == 2 and "--batch" in err


def test_lobster_sample(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert SAMPLE.exists(), f"the LOBSTER sample is missing: {SAMPLE}"
    saved = tmp_path / "goog.etx"
    code, out, err = replay(capsys, SAMPLE, "--limit", "3000", "--save", saved)
    assert code == 0 and err == ""
    assert "(LOBSTER GOOG)" in out and "3,000 read" in out and "top of book" in out and "not applied" in out
    code, again, _ = replay(capsys, saved)
    assert code == 0 and hash_of(again) == hash_of(out)


def test_command_line_process(stream: Path, tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: no traceback on a bad file."""
    bad = tmp_path / "bad.etx"
    bad.write_bytes(stream.read_bytes()[:-1])
    run = subprocess.run([sys.executable, "-m", "tools.cli", "replay", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and "truncated" in run.stdout and "Traceback" not in run.stderr


def test_docs_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON Lines example in docs/replay.md replays to the output shown there."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "replay.md").read_text()
    stream = doc.split("```jsonl\n", 1)[1].split("```", 1)[0]
    shown = doc.split("$ etx replay example.jsonl\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    Path("example.jsonl").write_text(stream)
    code, out, _ = replay(capsys, "example.jsonl")
    assert code == 0
    lines = out.splitlines()
    expected = shown.splitlines()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        if "..." in want:
            head = want.split("...", 1)[0]
            assert line.startswith(head), (line, want)
        else:
            assert line == want

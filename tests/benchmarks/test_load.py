"""``etx load``, the load generator: open loop against a deliberately stalled exchange
(the send rate holds, the latency shows the stall), counts reconciled with the
exchange's own, the report files valid (JSON schema, PNGs that open), a ramp, the
LOBSTER day through the gateway, and one line for every mistake."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from benchmarks.loadgen import Generator, Instrument, Mix, MixError
from benchmarks.loadreport import REPORT_SCHEMA
from benchmarks.spawn import Spawned
from gateway.credentials import Credentials, write_file

ROOT = Path(__file__).resolve().parents[2]


def etx_load(*argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", "load", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def valid_report(folder: Path, charts: set[str]) -> dict[str, object]:
    report = json.loads((folder / "report.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert (folder / "report.md").read_text().startswith("# etx load report")
    for name in charts:
        with Image.open(folder / name) as png:
            png.verify()
            assert png.format == "PNG" and png.size[0] > 500
    assert {p.name for p in folder.glob("*.png")} == charts
    return report


def test_open_loop_holds_its_rate_when_the_exchange_stalls() -> None:
    """The exchange is stopped (SIGSTOP) for 0.6 s in the middle of an open-loop run: the
    generator keeps sending at the target rate, and the stall shows as latency measured
    from each command's intended send time (a closed loop would have sent less instead)."""

    async def scenario() -> tuple[object, object]:
        spawned = Spawned(1)
        port = await spawned.start()
        assert spawned.proc is not None
        try:
            creds = [(m, u, s, 0) for m, u, s, _ in spawned.creds()]
            gen = Generator("127.0.0.1", port, creds, [Instrument("CEA24", 10_000)], Mix(), seed=5)
            await gen.connect()
            calm = await gen.run(rate=2000, seconds=3)

            async def stall() -> None:
                await asyncio.sleep(1.0)
                os.kill(spawned.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
                await asyncio.sleep(0.6)
                os.kill(spawned.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

            stalling = asyncio.create_task(stall())
            stalled = await gen.run(rate=2000, seconds=3)
            await stalling
            await gen.close()
            return calm, stalled
        finally:
            spawned.stop()
            spawned.remove()

    calm, stalled = asyncio.run(scenario())
    for r in (calm, stalled):
        assert r.total_sent == 6000 and r.unanswered == 0 and r.total_answered == 6000  # type: ignore[attr-defined]
        assert 1900 <= r.send_rate <= 2100, r.send_rate  # type: ignore[attr-defined]
    # Commands due during the stall waited for it: the worst waited about the whole stall,
    # and more than a tenth of the run (0.6 s of 3 s) is in the tail; the calm run has
    # no such tail.
    assert stalled.latency_us["max"] >= 550_000, stalled.latency_us  # type: ignore[attr-defined]
    assert stalled.latency_us["p90"] >= 100_000, stalled.latency_us  # type: ignore[attr-defined]
    assert stalled.latency_us["p90"] > calm.latency_us["p90"], (calm.latency_us, stalled.latency_us)  # type: ignore[attr-defined]
    worst = max(t.p99_us for t in stalled.timeline)  # type: ignore[attr-defined]
    assert worst >= 400_000, stalled.timeline  # type: ignore[attr-defined]


def test_a_spawned_run_reconciles_with_the_exchange_and_writes_its_report(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("etx-load-*"))
    done = etx_load("--spawn", "--seconds", "2", "--rate", "3000", "--latency-at-half", "--report", "out", "--no-progress",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = valid_report(tmp_path / "out", {"timeline.png", "latency.png"})
    rec = report["reconciliation"]
    assert isinstance(rec, dict) and rec["equal"], rec
    checks = rec["checks"]
    assert checks["trades settled into the registry"]["load"] > 0
    assert {"NewOrder commands journaled", "Cancel commands journaled", "Amend commands journaled"} <= set(checks)
    run = report["runs"][0]  # type: ignore[index]
    assert run["target_rate"] == 3000 and sum(run["sent"].values()) == 6000 and run["unanswered"] == 0
    assert set(Path(tempfile.gettempdir()).glob("etx-load-*")) == before  # the spawned folder is gone
    assert "reconciled: trades settled into the registry" in done.stdout


def test_a_ramp_finds_the_sustainable_rate(tmp_path: Path) -> None:
    done = etx_load("--spawn", "--ramp", "1000:1000:3000", "--step-seconds", "1", "--seconds", "1",
                    "--p99-limit-ms", "1000", "--report", "ramp", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = valid_report(tmp_path / "ramp", {"timeline.png", "latency.png", "ramp.png"})
    ramp = report["ramp"]
    assert isinstance(ramp, dict)
    assert [s["target_rate"] for s in ramp["steps"]] == [1000, 2000, 3000] and ramp["sustainable"] == 3000
    assert report["runs"][0]["target_rate"] == 1500  # type: ignore[index]
    assert report["reconciliation"]["equal"]  # type: ignore[index]
    assert "highest sustainable rate: 3,000 commands/s" in done.stdout


def test_the_lobster_day_through_the_gateway(tmp_path: Path) -> None:
    done = etx_load("--spawn", "--lobster", "--lobster-rows", "3000", "--speed", "max", "--report", "lob",
                    "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "lob" / "report.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    lob = report["lobster"]
    assert lob["rows"] == 3000 and lob["commands"] > 2000
    assert report["reconciliation"]["equal"], report["reconciliation"]
    assert report["runs"][0]["unanswered"] == 0


def test_mixes_are_read_exactly() -> None:
    assert Mix.parse("orders").cancel == 0
    m = Mix.parse("cancel=10,qty_max=5")
    assert m.cancel == 10 and m.qty_max == 5 and m.limit == 55
    for bad, words in (("cancel", "NAME=NUMBER"), ("cancle=3", "NAME=NUMBER"), ("cancel=x", "not a number"),
                       ("cancel=-1", ">= 0"), ("cross=150", "percentage"),
                       ("limit=0,market=0,ioc=0,fok=0,hit=0,cancel=0,amend=0", "at least one")):
        with pytest.raises(MixError, match=words):
            Mix.parse(bad)


def test_every_mistake_ends_in_one_line(tmp_path: Path) -> None:
    good = write_file(tmp_path / "m1.cred", Credentials("M1", "tM1", "soak-secret"))
    wrong = write_file(tmp_path / "wrong.cred", Credentials("M1", "tM1", "not-it"))
    loose = write_file(tmp_path / "loose.cred", Credentials("M1", "tM1", "soak-secret"))
    os.chmod(loose, 0o644)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = [
        (["--seconds", "1"], "give --spawn, or the exchange to test"),
        (["--exchange", f"127.0.0.1:{closed}"], "name the member sessions: --credentials FILE"),
        (["--exchange", f"127.0.0.1:{closed}", "--credentials", str(good)], f"cannot reach the exchange at 127.0.0.1:{closed}"),
        (["--exchange", "nowhere", "--credentials", str(good)], "expected HOST:PORT"),
        (["--exchange", f"127.0.0.1:{closed}", "--credentials", str(loose)], "can be read by others (mode 644)"),
        (["--exchange", f"127.0.0.1:{closed}", "--credentials", str(tmp_path / "none.cred")], "cannot be read"),
        (["--spawn", "--credentials", str(good)], "--spawn starts its own exchange"),
        (["--spawn", "--mix", "cancel=lots"], "not a number"),
        (["--spawn", "--ramp", "10:x"], "--ramp is START:STEP[:MAX]"),
        (["--spawn", "--ramp", "100:10:50"], "below START"),
        (["--spawn", "--speed", "fast", "--lobster"], "--speed is a factor"),
        (["--spawn", "--rate", "-5"], "--rate must be 0 or more"),
        (["--spawn", "--report", str(tmp_path / "full")], "exists and is not empty"),
        (["--spawn", "--lobster", str(tmp_path / "nothing.zip")], "nothing.zip"),
        (["--data", str(tmp_path / "no-exchange"), "--credentials", str(good)], "no exchange is running on"),
    ]
    for argv, words in cases:
        done = etx_load(*argv, cwd=tmp_path, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("etx load: "), (argv, done.stderr)
        assert words in lines[0], (argv, lines[0])
        assert "Traceback" not in done.stderr + done.stdout

    async def wrong_secret() -> subprocess.CompletedProcess[str]:
        from tests.integration.exchange import Exchange

        ex = Exchange(tmp_path / "ex")
        await ex.start()
        try:
            return await asyncio.to_thread(etx_load, "--exchange", f"127.0.0.1:{ex.port}", "--credentials", str(wrong),
                                           "--credentials", str(good), cwd=tmp_path, timeout=120)
        finally:
            ex.stop()

    (tmp_path / "ex").mkdir()
    done = asyncio.run(wrong_secret())
    assert done.returncode == 2 and done.stderr.strip().startswith("etx load: ") and "refused the logon of M1/tM1" \
        in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_progress_line_shows_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) a live line shows elapsed time, sent,
    answered, the rate and the last second's p50/p99; with --no-progress it does not."""
    import pty

    def on_a_terminal(*extra: str) -> str:
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "load", "--spawn", "--rate", "2000", "--seconds",
                                 "3", "--report", f"r{len(extra)}", *extra], cwd=tmp_path, stdout=slave,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end closed: the process has ended
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        assert proc.wait(120) == 0, out.decode(errors="replace")
        return out.decode(errors="replace")

    shown = on_a_terminal()
    assert "open loop" in shown and "answered" in shown and "/s  p50" in shown and "p99" in shown, shown
    quiet = on_a_terminal("--no-progress")
    assert "/s  p50" not in quiet, quiet


def test_a_hundred_member_sessions(tmp_path: Path) -> None:
    done = etx_load("--spawn", "--members", "100", "--rate", "3000", "--seconds", "2", "--report", "many",
                    "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "many" / "report.json").read_text())
    assert report["settings"]["sessions"] == 100 and report["reconciliation"]["equal"]
    assert report["runs"][0]["unanswered"] == 0 and sum(report["runs"][0]["sent"].values()) == 6000


def test_a_trade_whose_two_fills_straddle_two_runs_is_counted_once() -> None:
    """A trade's two fills reach two sessions; at the end of a run one may arrive before
    the next run starts and the other after: the trade belongs to one run only (the
    reconciliation with the registry's trades would otherwise count it twice)."""
    from benchmarks.loadgen import Session

    async def scenario() -> tuple[int, int, int]:
        gen = Generator("127.0.0.1", 1, [("A", "a", "x", 0), ("B", "b", "x", 0)], [Instrument("CEA24", 10_000)], Mix())
        maker, taker = Session(gen, 0, "A", "a", "x", 0), Session(gen, 1, "B", "b", "x", 0)
        fill = [170, 1, 0, 11, f"{gen.run_id}r0s0-1", 77, "CEA24", 1, 10_000, 5, 1, 0]
        maker._fill(fill)  # run 1 sees the maker's fill ...
        first = gen.trades
        gen._reset()
        taker._fill([170, 1, 0, 12, f"{gen.run_id}r0s1-1", 77, "CEA24", 2, 10_000, 5, 2, 0])  # ... run 2 the taker's
        return first, gen.trades, gen.fills

    assert asyncio.run(scenario()) == (1, 0, 1)


def test_preparing_a_run_lets_the_sessions_heartbeat() -> None:
    """Found when a slow machine made ``etx load --seconds 10`` fail with "nothing received
    for 3.0s": a closed-loop run first encodes its new orders (over a million for ten
    seconds), and done in one go that starved the heartbeat task, so the exchange dropped
    the idle sessions. Preparing yields to the event loop between chunks; here a task
    standing in for the heartbeats counts the turns it gets while 120,000 orders are
    prepared."""
    from benchmarks.loadgen import PREPARE_CHUNK, Session

    async def scenario() -> int:
        gen = Generator("127.0.0.1", 1, [("A", "a", "x", 0), ("B", "b", "x", 0)], [Instrument("CEA24", 10_000)], Mix())
        gen.sessions = [Session(gen, 0, "A", "a", "x", 0), Session(gen, 1, "B", "b", "x", 0)]
        turns = 0

        async def beat() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        task = asyncio.create_task(beat())
        await gen.prepare(120_000)
        task.cancel()
        assert sum(len(s.frames) for s in gen.sessions) >= 120_000
        return turns

    assert asyncio.run(scenario()) >= 120_000 // PREPARE_CHUNK - 1


def test_a_run_ends_only_once_every_session_has_its_fills() -> None:
    """Found by CI: a spawned run reconciled "fills (two per trade): load 1,737,
    exchange 1,738". A run ended as soon as every command was answered, but a trade's
    resting side hears of it on another session, whose fill can still be on its way.
    Here a first run leaves both sessions with resting orders; in the second, session 1
    sends nothing and reads everything 150 ms late, while session 0's orders trade
    against it to the end. The run must still count both fills of every trade it saw
    (each trade here is between two of the load's sessions)."""
    from benchmarks.loadgen import Session

    late_by = 0.15
    original = Session.data_received

    def late_reader(self: Session, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] | None = getattr(self, "late", None)
        if queue is None:
            queue = self.late = asyncio.Queue()  # type: ignore[attr-defined]

            async def read_late(q: asyncio.Queue[tuple[float, bytes]]) -> None:
                while True:  # in order, each read late_by after it came
                    came, chunk = await q.get()
                    await asyncio.sleep(max(0.0, came + late_by - loop.time()))
                    original(self, chunk)

            self.reader = loop.create_task(read_late(queue))  # type: ignore[attr-defined]
        queue.put_nowait((loop.time(), data))

    async def scenario() -> tuple[int, int]:
        spawned = Spawned(2)
        port = await spawned.start()
        try:
            creds = [(m, u, s, 0) for m, u, s, _ in spawned.creds()]
            gen = Generator("127.0.0.1", port, creds, [Instrument("CEA24", 10_000)], Mix(), seed=3)
            await gen.connect()
            await gen.run(rate=1000, seconds=1)
            quiet, late = gen.sessions[1], type(gen.sessions[1])
            assert late is Session
            send_one = gen._send_one
            gen._send_one = lambda s, due: True if s is quiet else send_one(s, due)  # type: ignore[method-assign]
            quiet.data_received = late_reader.__get__(quiet)  # type: ignore[method-assign]
            r = await gen.run(rate=1000, seconds=1)
            await gen.close()
            assert r.unanswered == 0 and r.trades > 0 and r.total_sent > 400
            return r.fills, r.trades
        finally:
            spawned.stop()
            spawned.remove()

    fills, trades = asyncio.run(scenario())
    assert fills == 2 * trades, (fills, trades)

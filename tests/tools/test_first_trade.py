"""README.md's "Your first trade", followed to the letter by a new user: every command
of the section's code blocks is run as written (``./dev X`` as the installed ``etx X``,
in a fresh folder), ``etx serve`` for real, each ``etx trader`` line opened with its own
arguments and driven with Textual's pilot, typing the lines the section says to type.
The one change: the generated configuration's port is a free one, not 7400."""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from terminal import trader

ROOT = Path(__file__).resolve().parents[2]


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Your first trade")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(text: str) -> list[tuple[str, list[str]]]:
    return [(lang, [line for line in body.splitlines() if line.strip()])
            for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etx(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"etx {' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_readme_leads_a_new_user_to_a_trade_between_two_members(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    steps = blocks(section())
    assert [lang for lang, _ in steps] == ["sh", "sh", "sh", "text", "sh"], steps
    commands = [shlex.split(line) for lang, lines in steps if lang == "sh" for line in lines]
    assert all(c[0] == "./dev" for c in commands), commands
    monkeypatch.chdir(tmp_path)
    serve: subprocess.Popen[str] | None = None
    try:
        typed = [line.split("> ", 1) for line in steps[3][1]]
        traders: list[list[str]] = []
        for argv in (c[1:] for c in commands):
            if argv[0] == "init":
                etx(argv, tmp_path)
                config = tmp_path / "etx-exchange" / "etx.toml"
                config.write_text(config.read_text().replace('listen = "127.0.0.1:7400"',
                                                             f'listen = "127.0.0.1:{free_port()}"', 1))
            elif argv[0] == "serve":
                log = open(tmp_path / "serve.log", "w+")
                serve = subprocess.Popen([sys.executable, "-m", "tools.cli", *argv], cwd=tmp_path, stdout=log,
                                         stderr=subprocess.STDOUT, text=True)
                deadline = time.monotonic() + 60
                while "etx serving on" not in (tmp_path / "serve.log").read_text():
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                    assert time.monotonic() < deadline, "etx serve did not start"
                    time.sleep(0.1)
            elif argv[0] == "trader":
                traders.append(argv[1:])
            elif argv[0] == "registry" and "balances" in argv:
                assert traders, "the balances come after the trade"
                asyncio.run(asyncio.wait_for(trade(traders, typed), 120))
                out = etx(argv, tmp_path).stdout
                rows = {line.split()[1]: line.split()[2:] for line in out.splitlines()[1:] if line.strip()}
                # 100 t bought, not sellable before the next trading day; CNY 10,000 and the fees paid.
                assert rows["CEA24"] == ["10100", "0", "100", "10000"], out
                assert rows["CNY"] == ["989996.50", "0.00", "0.00", "989996.50"], out
            else:
                etx(argv, tmp_path)
        assert serve is not None and traders
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)


async def trade(traders: list[list[str]], typed: list[list[str]]) -> None:
    """Open each trader as its command line says, type its lines, see the exchange's answers."""
    parser = __import__("argparse").ArgumentParser()
    trader.add_arguments(parser)
    sessions = {}
    for argv in traders:
        args = parser.parse_args(argv)
        client, instrument, symbols = await trader.connect(args)
        sessions[client.member] = (client, instrument, symbols)
    assert set(sessions) == {member for member, _ in typed}
    try:
        for member, line in typed:
            client, instrument, symbols = sessions[member]
            app = trader.TraderApp(client, instrument, symbols)
            async with app.run_test(size=(180, 50)) as pilot:
                entry = app.query_one("#command")
                entry.focus()
                for ch in line:
                    await pilot.press("space" if ch == " " else "full_stop" if ch == "." else ch)
                await pilot.press("enter")
                verb = "sold" if line.startswith("sell") else "bought"
                wanted = "accepted: order" if line.startswith("sell") else f"fill: {verb} 100 t CEA24 at 100.00"
                for _ in range(300):
                    if any(x.startswith(wanted) for x in app.lines):
                        break
                    await pilot.pause(0.05)
                assert any(x.startswith(wanted) for x in app.lines), app.lines
                app.quitting = True
                await pilot.press("q")
            # The app has ended; the member's session stays (its offer must rest until taken).
        seller, *_ = sessions["M002"]
        fill = await seller.wait_for(lambda m: type(m).__name__ == "Report" and type(m.body).__name__ == "Fill", 10)
        assert fill.body.qty == 100 and fill.body.price == 10_000
    finally:
        for client, _, _ in sessions.values():
            await client.close()

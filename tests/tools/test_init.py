"""``etx init`` and the public example secrets, with the real installed commands: init
makes a folder whose configuration ``etx serve`` starts with and whose credentials log
on; its secrets are fresh, private and nowhere but the credentials files (and a
terminal, once); nothing is overwritten. ``etx serve`` refuses the public secrets of
etx.example.toml in one line unless told ``--demo``."""

from __future__ import annotations

import asyncio
import os
import pty
import shlex
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.instrument import ALWAYS_OPEN
from gateway.auth import EXAMPLE_SECRETS, verify_secret
from gateway.client import Client, LogonError
from gateway.config import load
from gateway.credentials import Credentials, from_file
from gateway.protocol import LogonAck

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etx.example.toml"
ETX = str(Path(sys.executable).parent / "etx")  # the installed command, beside this interpreter
TIMEOUT_S = 60  # every command must end by itself, long before this
USERS = ["M001/trader1", "M002/trader2", "EXCH/operator", "EXCH/clerk", "EXCH/authority"]


def etx(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ETX, *args], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd)


def init(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = etx(cwd, "init", *args)
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def credentials(folder: Path) -> dict[str, Credentials]:
    """The credentials files init wrote, by MEMBER/USER (each read as the tools read it)."""
    found = {c.name: c for c in map(from_file, sorted((folder / "credentials").iterdir()))}
    assert sorted(found) == sorted(USERS), found
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def serving(cwd: Path, *args: str) -> Iterator[tuple[int, list[str]]]:
    """``etx serve ARGS`` on a free port, without market data: (port, the lines it
    printed before it listened). It must stop cleanly (exit 0) on SIGTERM."""
    proc = subprocess.Popen([ETX, "serve", *args, "--listen", "127.0.0.1:0", "--no-market-data"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    assert proc.stdout is not None
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)  # a start that hangs fails the test instead
    watchdog.start()
    before: list[str] = []
    try:
        for line in proc.stdout:
            if line.startswith("etx serving on 127.0.0.1:"):
                yield int(line.split()[3].rsplit(":", 1)[1].rstrip(";")), before
                break
            before.append(line.rstrip("\n"))
        else:
            pytest.fail(f"etx serve did not start: {before}")
    finally:
        watchdog.cancel()
        proc.terminate()
        out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, "\n".join(before) + out + err


async def logon(port: int, creds: Credentials) -> LogonAck:
    client = Client("127.0.0.1", port, creds.member, creds.user, creds.secret)
    try:
        return await client.connect()
    finally:
        await client.close()


# --- the public secrets --------------------------------------------------------------


def test_the_public_secrets_are_the_example_files() -> None:
    # The refusal compares hashes as strings: the table must hold exactly the example's
    # hashes, and each must be the hash of the secret it is listed with.
    users = tomllib.loads(EXAMPLE.read_text())["user"]
    assert sorted(u["secret_hash"] for u in users) == sorted(EXAMPLE_SECRETS)
    for stored, secret in EXAMPLE_SECRETS.items():
        assert secret.startswith("change-me-") and verify_secret(secret, stored), secret
    assert '"change-me-trader-1"' in EXAMPLE.read_text()  # the header names them as public
    assert "etx init" in EXAMPLE.read_text() and "--demo" in EXAMPLE.read_text()


def test_serve_refuses_the_example_configuration_without_demo(tmp_path: Path) -> None:
    done = etx(tmp_path, "serve", "--config", str(EXAMPLE), "--data", str(tmp_path / "data"), "--no-market-data")
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output
    assert output.count("\n") == 1 and done.stdout.startswith(f"etx serve: {EXAMPLE}: "), output
    line = done.stdout.strip()
    assert ", ".join(USERS) in line and "public example secrets" in line, line
    assert "etx init" in line and "etx serve --hash-secret" in line and "--demo" in line, line
    assert not (tmp_path / "data").exists()  # refused before anything is made


def test_serve_with_demo_runs_the_example_configuration(tmp_path: Path) -> None:
    with serving(tmp_path, "--config", str(EXAMPLE), "--data", str(tmp_path / "data"), "--demo") as (port, before):
        assert asyncio.run(logon(port, Credentials("M001", "trader1", "change-me-trader-1"))).member == "M001"
    assert before == [f"etx serve: --demo: {', '.join(USERS)} keep the public example secrets: anyone can log on "
                      "as them"]


def test_serve_refuses_one_public_hash_among_fresh_ones(tmp_path: Path) -> None:
    init(tmp_path, "--dir", "ex")
    config = tmp_path / "ex" / "etx.toml"
    text = config.read_text()
    fresh = load(config).user[1].secret_hash  # M002/trader2's
    public = next(h for h, s in EXAMPLE_SECRETS.items() if s == "change-me-trader-2")
    config.write_text(text.replace(fresh, public))
    done = etx(tmp_path, "serve", "--config", str(config), "--data", str(tmp_path / "ex" / "data"), "--no-market-data")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith(f"etx serve: {config}: M002/trader2 has the public example secrets"), done.stdout


def test_hash_secret_refuses_a_public_secret() -> None:
    for secret, status in (("change-me-authority", 2), ("a-secret-of-our-own", 0)):
        done = subprocess.run([ETX, "serve", "--hash-secret"], input=secret + "\n", capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        assert done.returncode == status, done.stdout + done.stderr
        if status:
            assert done.stdout == ("etx serve --hash-secret: this secret is one of etx.example.toml's public "
                                   "examples: choose another\n")
        else:
            assert verify_secret(secret, done.stdout.strip())


# --- etx init ------------------------------------------------------------------------


def test_init_makes_an_exchange_that_serves_and_logs_on(tmp_path: Path) -> None:
    done = init(tmp_path)  # the default folder, in the current one
    folder = tmp_path / "etx-exchange"
    cfg = load(folder / "etx.toml")
    example = load(EXAMPLE)
    # The example's exchange, but for the secrets.
    assert [i.symbol for i in cfg.instrument] == [i.symbol for i in example.instrument] == ["CEA24", "CEA23"]
    assert [m.id for m in cfg.member] == ["M001", "M002"] and cfg.exchange.schedule == "national"
    assert [(u.member, u.user, u.role) for u in cfg.user] == [(u.member, u.user, u.role) for u in example.user]
    assert (folder / "data" / "registry.sqlite").is_file() and (folder / "data" / "exchange.toml").is_file()
    creds = credentials(folder)
    assert f"\n  {ETX} serve --config etx-exchange/etx.toml --data etx-exchange/data\n" in done.stdout, done.stdout
    with serving(tmp_path, "--config", str(folder / "etx.toml"), "--data", str(folder / "data")) as (port, _):
        ack = asyncio.run(logon(port, creds["M001/trader1"]))
        assert isinstance(ack, LogonAck) and (ack.member, ack.user) == ("M001", "trader1")
        with pytest.raises(LogonError):  # the example's public secret is not this user's
            asyncio.run(logon(port, Credentials("M001", "trader1", "change-me-trader-1")))


def test_the_secrets_are_private_and_only_in_the_credentials_files(tmp_path: Path) -> None:
    done = init(tmp_path, "--dir", "ex")
    folder = tmp_path / "ex"
    text = (folder / "etx.toml").read_text()
    creds = credentials(folder)
    for path in (folder / "credentials").iterdir():
        assert mode(path) == 0o600, path
    assert mode(folder / "credentials") == mode(folder / "data") == 0o700
    assert mode(folder / "etx.toml") == mode(folder / "data" / "exchange.toml") == 0o600  # they name the hashes
    stored = {f"{u.member}/{u.user}": u.secret_hash for u in load(folder / "etx.toml").user}
    for name, c in creds.items():
        assert c.secret not in text and c.secret not in done.stdout + done.stderr, name  # not a terminal: not shown
        assert verify_secret(c.secret, stored[name]), name
        assert stored[name] not in EXAMPLE_SECRETS, name
        assert f"{name:<16} " in done.stdout and str(Path("ex/credentials") / f"{c.member}-{c.user}.toml") in done.stdout
    assert "change-me" not in text


def test_the_secrets_are_shown_once_on_a_terminal(tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([ETX, "init", "--dir", "ex"], stdin=subprocess.DEVNULL, stdout=secondary,
                            stderr=secondary, cwd=tmp_path)
    os.close(secondary)
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    chunks = []
    try:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        watchdog.cancel()
        os.close(primary)
    assert proc.wait(TIMEOUT_S) == 0
    output = b"".join(chunks).decode()
    roles = {f"{u.member}/{u.user}": u.role for u in load(tmp_path / "ex" / "etx.toml").user}
    for name, c in credentials(tmp_path / "ex").items():
        lines = [line for line in output.splitlines() if c.secret in line]
        assert len(lines) == 1 and output.count(c.secret) == 1, (name, output)
        assert lines[0].split() == [name, roles[name], c.secret, f"ex/credentials/{c.member}-{c.user}.toml"], lines


def test_two_inits_make_different_secrets(tmp_path: Path) -> None:
    init(tmp_path, "--dir", "one")
    init(tmp_path, "--dir", "two")
    one, two = credentials(tmp_path / "one"), credentials(tmp_path / "two")
    every = [c.secret for c in [*one.values(), *two.values()]]
    assert len(set(every)) == len(every) == 2 * len(USERS)
    hashes = [u.secret_hash for folder in ("one", "two") for u in load(tmp_path / folder / "etx.toml").user]
    assert len(set(hashes)) == len(hashes)


def test_always_open_writes_the_always_schedule(tmp_path: Path) -> None:
    done = init(tmp_path, "--dir", "ex", "--always-open")
    cfg = load(tmp_path / "ex" / "etx.toml")
    assert cfg.exchange.schedule == "always" and cfg.schedule() == ALWAYS_OPEN
    assert 'it trades at any hour' in done.stdout


def test_an_existing_configuration_is_never_overwritten(tmp_path: Path) -> None:
    init(tmp_path, "--dir", "ex")
    folder = tmp_path / "ex"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    done = etx(tmp_path, "init", "--dir", "ex")
    assert done.returncode == 2 and done.stderr == "", done.stdout + done.stderr
    assert done.stdout.startswith("etx init: ex already holds an etx.toml, which etx init never overwrites")
    assert done.stdout.count("\n") == 1, done.stdout
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # A folder holding the operator's own etx.toml: refused, nothing written beside it.
    own = tmp_path / "own"
    own.mkdir()
    (own / "etx.toml").write_text("# mine\n")
    done = etx(tmp_path, "init", "--dir", "own")
    assert done.returncode == 2 and "already holds an etx.toml" in done.stdout, done.stdout
    assert [p.name for p in own.iterdir()] == ["etx.toml"] and (own / "etx.toml").read_text() == "# mine\n"


def test_the_printed_next_steps_fund_the_members(tmp_path: Path) -> None:
    done = init(tmp_path, "--dir", "ex")
    # Each step runs etx as the shell finds it (here, not on the PATH: by its path).
    steps = [shlex.split(line) for line in done.stdout.splitlines() if line.startswith(f"  {ETX} registry ")]
    assert len(steps) == 8, done.stdout  # for each of 2 members: open, deposit, allocate 2 vintages
    accounts = etx(tmp_path, "registry", "--data", "ex/data", "accounts")  # the store is there, migrated
    assert accounts.returncode == 0 and "M001" not in accounts.stdout, accounts.stdout + accounts.stderr
    for step in steps:  # the exchange is not running: each is journaled by the offline path
        ran = etx(tmp_path, *step[1:])
        assert ran.returncode == 0 and ran.stdout.startswith("done: "), ran.stdout + ran.stderr
    balances = etx(tmp_path, "registry", "--data", "ex/data", "balances", "M002").stdout.split()
    assert "1000000.00" in balances and balances.count("10000") == 4, balances  # balance and available per vintage

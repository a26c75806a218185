"""``etx registry``: roles, operations, exact amounts, listings and the audit, on both
stores; one run through the installed ``etx`` command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from settlement import cli
from settlement.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def etx(store_url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="etx registry")
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args(["--store", store_url, *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_registry_session(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    def ok(*argv: str) -> str:
        code, out, err = etx(store_url, *argv, capsys=capsys)
        assert code == 0, (argv, out, err)
        return out

    def refused(code_wanted: int, *argv: str) -> str:
        code, out, err = etx(store_url, *argv, capsys=capsys)
        assert code == code_wanted, (argv, out, err)
        return err

    ok("user", "root", "admin")  # the first user needs no --as
    assert "NOT_PERMITTED" in refused(1, "user", "x", "clerk")  # from then on it does
    ok("--as", "root", "user", "li", "clerk")
    ok("--as", "root", "user", "mee", "authority")
    assert "NOT_PERMITTED" in refused(1, "--as", "root", "open", "ALPHA")
    ok("open", "ALPHA", "--name", "Alpha Power", "--as", "li")  # options after the action work too
    ok("--as", "li", "open", "BETA", "--type", "institution")
    assert "done: C3 deposit 1234.56 CNY" in ok("--as", "li", "deposit", "ALPHA", "1,234.56")
    assert "at most 2 decimals" in refused(2, "--as", "li", "deposit", "ALPHA", "0.001")
    assert "non-negative" in refused(2, "--as", "li", "deposit", "ALPHA", "-5")
    assert "NOT_PERMITTED" in refused(1, "--as", "li", "allocate", "ALPHA", "CEA24", "100")
    ok("--as", "mee", "allocate", "ALPHA", "CEA24", "1000")
    ok("--as", "mee", "allocate", "ALPHA", "CCER", "100")
    ok("--as", "mee", "obligation", "ALPHA", "2024", "1000")
    assert "CCER_LIMIT (215)" in refused(1, "--as", "li", "surrender", "ALPHA", "CCER", "51", "2024")
    ok("--as", "li", "surrender", "ALPHA", "CCER", "50", "2024")
    assert "whole tonnes" in refused(2, "--as", "li", "transfer", "ALPHA", "BETA", "CEA24", "1.5")
    ok("--as", "li", "transfer", "ALPHA", "BETA", "CEA24", "300")
    ok("--as", "li", "retire", "BETA", "CEA24", "10")
    assert "INSUFFICIENT_CASH (207)" in refused(1, "--as", "li", "withdraw", "ALPHA", "1234.57")
    ok("--as", "li", "withdraw", "ALPHA", "0.56")
    ok("--as", "li", "end-of-day")
    ok("--as", "li", "suspend", "BETA")
    assert "ACCOUNT_SUSPENDED" in refused(1, "--as", "li", "retire", "BETA", "CEA24", "1")
    ok("--as", "li", "reinstate", "BETA")

    out = ok("accounts")
    assert "ALPHA" in out and "institution" in out and "AUTHORITY" in out
    out = ok("balances", "ALPHA")
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines()[1:]}
    assert lines["ALPHA", "CNY"] == ["1234.00", "0.00", "0.00", "1234.00"]
    assert lines["ALPHA", "CEA24"] == ["700", "0", "0", "700"]
    assert lines["ALPHA", "CCER"] == ["50", "0", "0", "50"]
    assert "UNKNOWN_ACCOUNT" in refused(1, "balances", "NOPE")
    out = ok("history", "ALPHA")
    assert "+1234.56 CNY" in out and "by li" in out and "-300 t CEA24" in out and "by mee" in out
    assert len(ok("history", "ALPHA", "--limit", "2").splitlines()) == 2
    assert "must be in" in refused(2, "history", "ALPHA", "--limit", "0")
    assert "clean" in ok("audit")

    store = open_store(store_url)
    try:
        store._exec("UPDATE balances SET balance = balance + 1 WHERE account = 'ALPHA' AND asset = 'CNY'")
    finally:
        store.close()
    code, out, _ = etx(store_url, "audit", capsys=capsys)
    assert code == 1 and "ALPHA CNY" in out and "deposited - withdrawn" in out


def test_bad_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = etx(str(tmp_path / "no" / "such" / "dir.sqlite"), "accounts", capsys=capsys)
    assert code == 2 and "cannot open" in err


def test_the_etx_command(tmp_path: Path) -> None:
    store = str(tmp_path / "r.sqlite")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "gateway.cli", "registry", "--store", store]
    for argv in (["user", "root", "admin"], ["--as", "root", "user", "li", "clerk"], ["--as", "li", "open", "A"],
                 ["--as", "li", "deposit", "A", "10.05"]):
        done = subprocess.run(base + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(base + ["balances"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "10.05" in done.stdout

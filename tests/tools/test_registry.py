"""``etx registry`` on a stopped exchange: every operation is a journaled command of the
core, run as a configured staff user whose secret comes from an owner-only file; the
reads and the audit; the example session of docs/registry.md, run as written. Both
stores (SQLite and PostgreSQL) for the session. (Operations through a running exchange:
tests/integration/.)"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

import pytest

from engine.journal import command_decoder, read_journal
from gateway.auth import hash_secret
from gateway.credentials import Credentials, write_file
from gateway.recovery import journal_command_types
from settlement import Deposit
from tools import registry as registry_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "registry.md"
SECRET = "registry-test-secret"
USERS = (("EXCH", "clerk", "clerk"), ("EXCH", "authority", "authority"), ("EXCH", "ops", "operator"),
         ("M1", "t1", "trader"))


def write_setup(tmp: Path, registry: str = "registry.sqlite") -> Path:
    """etx.toml with the staff users, and a credentials file for each user."""
    digest = hash_secret(SECRET, n=1 << 10)
    lines = ["[exchange]", f'registry = "{registry}"', 'schedule = "always"', "",
             "[[instrument]]", 'symbol = "CEA24"', "ref_price = 100.00", "", "[[member]]", 'id = "M1"', ""]
    for member, user, role in USERS:
        lines += ["[[user]]", f'member = "{member}"', f'user = "{user}"', f'role = "{role}"', f'secret_hash = "{digest}"', ""]
        write_file(tmp / f"{user}.cred", Credentials(member, user, SECRET))
    (tmp / "etx.toml").write_text("\n".join(lines))
    return tmp / "etx.toml"


def etx(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="etx registry")
    registry_cli.add_arguments(parser)
    code = registry_cli.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_registry_doc_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_setup(tmp_path)
    text = DOC.read_text()
    block = text[text.index("$ etx registry --data etx-data --config etx.toml"):]
    block = block[:block.index("```")]
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ etx registry "):
            steps.append((shlex.split(line[len("$ etx registry "):]), []))
        elif line.strip():
            steps[-1][1].append(line)
    assert len(steps) >= 5
    paths = {"etx-data": str(tmp_path / "etx-data"), "etx.toml": str(tmp_path / "etx.toml"),
             "clerk.cred": str(tmp_path / "clerk.cred"), "authority.cred": str(tmp_path / "authority.cred")}
    for argv, expected in steps:
        code, out, err = etx([paths.get(a, a) for a in argv], capsys)
        assert code == 0, (argv, out, err)
        if expected:
            assert [" ".join(x.split()) for x in out.splitlines()] == [" ".join(x.split()) for x in expected], argv


def test_registry_session(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = store_url if "://" in store_url else "registry.sqlite"
    config = write_setup(tmp_path, registry)
    data = str(tmp_path / "data")

    def run_as(user: str, *argv: str) -> tuple[int, str, str]:
        return etx(["--data", data, "--config", str(config), "--credentials", str(tmp_path / f"{user}.cred"), *argv],
                   capsys)

    def ok(user: str, *argv: str) -> str:
        code, out, err = run_as(user, *argv)
        assert code == 0, (argv, out, err)
        return out

    def refused(code_wanted: int, user: str, *argv: str) -> str:
        code, out, err = run_as(user, *argv)
        assert code == code_wanted, (argv, out, err)
        return err

    ok("clerk", "open", "ALPHA", "--name", "Alpha Power")
    ok("clerk", "open", "BETA", "--type", "institution")
    assert "done: C3 deposit 1234.56 CNY (seq 3)" in ok("clerk", "deposit", "ALPHA", "1,234.56")
    assert "at most 2 decimals" in refused(2, "clerk", "deposit", "ALPHA", "0.001")
    assert "non-negative" in refused(2, "clerk", "deposit", "ALPHA", "-5")
    assert "NOT_PERMITTED (219)" in refused(1, "clerk", "allocate", "ALPHA", "CEA24", "100")
    assert "NOT_PERMITTED (219)" in refused(1, "t1", "deposit", "ALPHA", "1")  # a trader is not registry staff
    assert "NOT_PERMITTED (219)" in refused(1, "ops", "deposit", "ALPHA", "1")  # nor is an operator
    ok("authority", "allocate", "ALPHA", "CEA24", "1000")
    ok("authority", "allocate", "ALPHA", "CCER", "100")
    ok("authority", "obligation", "ALPHA", "2024", "1000")
    assert "CCER_LIMIT (215)" in refused(1, "clerk", "surrender", "ALPHA", "CCER", "51", "2024")
    ok("clerk", "surrender", "ALPHA", "CCER", "50", "2024")
    assert "whole tonnes" in refused(2, "clerk", "transfer", "ALPHA", "BETA", "CEA24", "1.5")
    ok("clerk", "transfer", "ALPHA", "BETA", "CEA24", "300")
    ok("clerk", "retire", "BETA", "CEA24", "10")
    assert "INSUFFICIENT_CASH (207)" in refused(1, "clerk", "withdraw", "ALPHA", "1234.57")
    ok("clerk", "withdraw", "ALPHA", "0.56")
    ok("clerk", "suspend", "BETA")
    assert "ACCOUNT_SUSPENDED (203)" in refused(1, "clerk", "retire", "BETA", "CEA24", "1")
    ok("clerk", "reinstate", "BETA")

    read = ["--data", data]
    code, out, _ = etx([*read, "balances", "ALPHA"], capsys)
    assert code == 0 and "1234.00" in out and " 700 " in out  # CEA24: 1000 allocated, 300 transferred
    code, out, _ = etx([*read, "accounts"], capsys)
    assert "ALPHA" in out and "institution" in out
    code, out, _ = etx([*read, "history", "ALPHA"], capsys)
    assert code == 0 and "deposit" in out and "by EXCH/clerk" in out and "transfer" in out
    code, _, err = etx([*read, "history", "NOPE"], capsys)
    assert code == 1 and "UNKNOWN_ACCOUNT" in err
    code, out, err = etx([*read, "audit"], capsys)
    assert code == 0 and out.startswith("audit: clean"), out + err
    # Every operation, refused ones too, is in the journal, in order, named by its user.
    deposits = [c for batch in read_journal(Path(data) / "journal", command_decoder(journal_command_types()))
                for c in batch if type(c) is Deposit]
    assert [(d.actor, d.amount) for d in deposits] == [("EXCH/clerk", 123456)]


def test_credentials_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_setup(tmp_path)
    base = ["--data", str(tmp_path / "data"), "--config", str(config)]
    loose = tmp_path / "clerk.cred"
    os.chmod(loose, 0o644)
    code, _, err = etx([*base, "--credentials", str(loose), "open", "A"], capsys)
    assert code == 2 and "can be read by others (mode 644)" in err and "chmod 600" in err
    os.chmod(loose, 0o600)
    wrong = write_file(tmp_path / "wrong.cred", Credentials("EXCH", "clerk", "not-the-secret"))
    code, _, err = etx([*base, "--credentials", str(wrong), "open", "A"], capsys)
    assert code == 2 and "wrong secret" in err
    code, _, err = etx([*base, "open", "A"], capsys)  # no file, no terminal
    assert code == 2 and "--credentials" in err
    assert not (tmp_path / "data" / "journal").exists() or not any((tmp_path / "data" / "journal").iterdir())


def test_operations_need_the_data_folder_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_setup(tmp_path)
    code, _, err = etx(["--store", str(tmp_path / "x.sqlite"), "--config", str(config), "--credentials",
                        str(tmp_path / "clerk.cred"), "deposit", "A", "5"], capsys)
    assert code == 2 and "--data" in err and "commands of the exchange" in err
    assert not (tmp_path / "x.sqlite").exists()


def test_an_operation_beside_another_writer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.datadir import DataFolder

    config = write_setup(tmp_path)
    with DataFolder(tmp_path / "data", "etx registry deposit"):
        code, _, err = etx(["--data", str(tmp_path / "data"), "--config", str(config), "--credentials",
                            str(tmp_path / "clerk.cred"), "open", "A"], capsys)
    assert code == 2 and f"in use by process {os.getpid()} (etx registry deposit)" in err

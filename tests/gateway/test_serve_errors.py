"""``etx serve`` on an operator's mistake: the real installed command, run on a config
written here, ends with exit status 2 and one line that says what is wrong (the key,
path, address or value, as written) and what to fix; never a traceback, never a hang.
The unit tests below it check the same ``ConfigError`` messages through ``loads``, the
path ``etx demo``, ``etx journal verify`` and the tests share."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from gateway.auth import hash_secret
from gateway.config import ConfigError, loads

ETX = str(Path(sys.executable).parent / "etx")  # the installed command, beside this interpreter
TIMEOUT_S = 60  # the command must end by itself, long before this
HASH = hash_secret("secret-of-trader1", n=1 << 10)
FEES = "trading_rate = 0.0003\nregistry_rate = 0.00005\n"
CEA24 = '[[instrument]]\nsymbol = "CEA24"\nref_price = 100.00\n'
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")


def config_text(*, exchange: str = "", fees: str = FEES, instruments: str = CEA24, secret_hash: str = HASH) -> str:
    """A valid configuration (one instrument, member and trader) with one part replaced."""
    return f"""
[exchange]
listen = "127.0.0.1:0"
schedule = "always"
{exchange}

[fees]
{fees}

{instruments}

[[member]]
id = "M001"

[[user]]
member = "M001"
user = "trader1"
role = "trader"
secret_hash = "{secret_hash}"
"""


def serve(tmp_path: Path, text: str, *, data: Path | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "etx.toml"
    config.write_text(text)
    data = tmp_path / "data" if data is None else data
    return subprocess.run([ETX, "serve", "--config", str(config), "--data", str(data), "--no-market-data", *extra],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)


def refused(tmp_path: Path, text: str, *, data: Path | None = None, extra: tuple[str, ...] = ()) -> str:
    """The one line ``etx serve`` ends with; asserts exit status 2 and nothing else said
    but startup progress (INFO log lines, which come before the failure)."""
    done = serve(tmp_path, text, data=data, extra=extra)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line and not LOG_LINE.match(line)]
    assert done.returncode == 2, output
    assert len(lines) == 1 and lines[0].startswith("etx serve: "), output
    assert done.stdout.strip() == lines[0], output
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_base_config_serves(tmp_path: Path) -> None:
    # Every refusal below is one change away from this configuration, which starts.
    (tmp_path / "etx.toml").write_text(config_text())
    proc = subprocess.Popen([ETX, "serve", "--config", str(tmp_path / "etx.toml"), "--data", str(tmp_path / "data"),
                             "--no-market-data"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout is not None
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)  # a start that hangs fails the test instead
    watchdog.start()
    try:
        assert proc.stdout.readline().startswith("etx serving on 127.0.0.1:")
    finally:
        watchdog.cancel()
        proc.terminate()
        out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out + err


# --- what the host gives or refuses ----------------------------------------------------


def test_listen_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(tmp_path, config_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    assert f"exchange.listen 127.0.0.1:{port}" in line and "already in use" in line, line


def test_listen_port_in_use_given_on_the_command_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(tmp_path, config_text(), extra=("--listen", f"127.0.0.1:{port}"))
    assert f"listen address 127.0.0.1:{port}" in line and "already in use" in line, line


def test_data_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    line = refused(tmp_path, config_text(), data=data)
    assert f"data folder {data} cannot be created" in line, line


def test_data_folder_that_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "a-file"
    data.write_text("")
    line = refused(tmp_path, config_text(), data=data)
    assert f"data folder {data} is a file, not a folder" in line, line


def test_data_folder_that_is_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes into a read-only folder; sysfs takes no files even from root
        data = Path("/sys/kernel")
        with pytest.raises(OSError):  # the premise of the test, not a skip: it must hold here
            tempfile.TemporaryFile(dir=data).close()
    else:
        data = tmp_path / "data"
        data.mkdir(mode=0o500)
    try:
        line = refused(tmp_path, config_text(), data=data)
    finally:
        if data.is_relative_to(tmp_path):
            data.chmod(0o700)
    assert f"data folder {data} is not writable" in line, line


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key"])
def test_tls_file_missing(tmp_path: Path, missing: str) -> None:
    files = {"tls_cert": tmp_path / "cert.pem", "tls_key": tmp_path / "key.pem"}
    for key, path in files.items():
        if key != missing:
            path.write_text("")
    line = refused(tmp_path, config_text(exchange=f'tls_cert = "{files["tls_cert"]}"\ntls_key = "{files["tls_key"]}"'))
    assert f"exchange.{missing} {files[missing]} cannot be read (No such file" in line, line
    assert not (tmp_path / "data").exists(), "nothing is opened before the TLS files are checked"


def test_tls_file_unreadable(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.mkdir()  # a folder: unreadable as a file even for root
    (tmp_path / "cert.pem").write_text("")
    line = refused(tmp_path, config_text(exchange=f'tls_cert = "{tmp_path / "cert.pem"}"\ntls_key = "{key}"'))
    assert f"exchange.tls_key {key} cannot be read (Is a directory)" in line, line


def test_tls_files_that_are_not_pem(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not a certificate\n")
    line = refused(tmp_path, config_text(exchange=f'tls_cert = "{tmp_path / "cert.pem"}"\n'
                                                  f'tls_key = "{tmp_path / "key.pem"}"'))
    assert f"exchange.tls_cert {tmp_path / 'cert.pem'}" in line and f"tls_key {tmp_path / 'key.pem'}" in line, line


def test_tls_key_of_another_certificate(tmp_path: Path) -> None:
    assert shutil.which("openssl"), "this test makes its certificates with the openssl command (Debian: openssl)"
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                        "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.crt")],
                       check=True, capture_output=True, timeout=TIMEOUT_S)
    cert, key = tmp_path / "a.crt", tmp_path / "b.key"
    line = refused(tmp_path, config_text(exchange=f'tls_cert = "{cert}"\ntls_key = "{key}"'))
    assert f"exchange.tls_key {key} is not the private key of exchange.tls_cert {cert}" in line, line


def test_postgresql_registry_unreachable(tmp_path: Path) -> None:
    port = closed_port()
    line = refused(tmp_path, config_text(exchange=f'registry = "postgresql://postgres:pa55-xyzzy@127.0.0.1:{port}/x"'))
    assert "exchange.registry" in line and f"127.0.0.1:{port}" in line and "pa55-xyzzy" not in line, line
    assert not (tmp_path / "data" / "journal").exists(), "no journal is opened for a registry that does not answer"


# --- what the configuration says --------------------------------------------------------


def one_instrument(**values: str) -> str:
    fields = {"symbol": '"CEA24"', "ref_price": "100.00", **values}
    return "[[instrument]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())


SERVE_CASES = [
    (config_text(instruments=one_instrument(ref_price="inf")), "instrument CEA24: ref_price inf is not a finite number"),
    (config_text(instruments=one_instrument(ref_price="nan")), "instrument CEA24: ref_price nan is not a finite number"),
    (config_text(instruments=one_instrument(ref_price="-1.5")), "instrument CEA24: ref_price -1.5 must be positive"),
    (config_text(instruments=one_instrument(ref_price="0")), "instrument CEA24: ref_price 0 must be positive"),
    (config_text(instruments=CEA24 + CEA24), "instrument CEA24: the symbol is configured twice"),
    (config_text(fees="trading_rate = 2"), "fees: trading_rate 2 is not between 0 and 1"),
    (config_text(instruments=one_instrument(ref_price="100.001")),
     "instrument CEA24: ref_price 100.001 has more decimals than a fen (0.01 yuan)"),
    (config_text(secret_hash=HASH.rsplit("$", 1)[0] + "$" + base64.b64encode(b"x" * 16).decode()),
     "user M001/trader1: secret_hash: the hash is 16 bytes, expected 32"),
    (config_text(secret_hash=HASH.rsplit("$", 1)[0] + "$not-base64!"),
     "user M001/trader1: secret_hash: the hash is not valid base64"),
]


@pytest.mark.parametrize(("text", "expected"), SERVE_CASES, ids=[e for _, e in SERVE_CASES])
def test_config_mistakes_end_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    line = refused(tmp_path, text)
    assert line.startswith(f"etx serve: {tmp_path / 'etx.toml'}: ") and expected in line, line
    assert not (tmp_path / "data").exists(), "nothing is opened for a configuration that is refused"


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        loads(text)
    return str(e.value)


@pytest.mark.parametrize(("values", "expected"), [
    ({"ref_price": "inf"}, "instrument CEA24: ref_price inf is not a finite number"),
    ({"ref_price": "-inf"}, "instrument CEA24: ref_price -inf is not a finite number"),
    ({"ref_price": "-nan"}, "instrument CEA24: ref_price nan is not a finite number"),
    ({"tick": "nan"}, "instrument CEA24: tick nan is not a finite number"),
    ({"band_pct": "inf"}, "instrument CEA24: band_pct inf is not a finite number"),
    ({"band_pct": "0", "price_max": "inf"}, "instrument CEA24: price_max inf is not a finite number"),
    ({"ref_price": "-1"}, "instrument CEA24: ref_price -1 must be positive"),
    ({"tick": "0"}, "instrument CEA24: tick 0 must be positive"),
    ({"tick": "0.001"}, "instrument CEA24: tick 0.001 has more decimals than a fen (0.01 yuan)"),
    ({"ref_price": "100.001"}, "instrument CEA24: ref_price 100.001 has more decimals than a fen (0.01 yuan)"),
    ({"ref_price": "1e-3"}, "instrument CEA24: ref_price 0.001 has more decimals than a fen (0.01 yuan)"),
    ({"ref_price": "1e9999999"}, "instrument CEA24: ref_price 1E+9999999 is too large"),
    ({"price_max": "100000000000000000"}, "instrument CEA24: price_max 100000000000000000 is too large"),
    ({"ref_price": "100.000000000000000000000000000000000001"},
     "instrument CEA24: ref_price 100.000000000000000000000000000000000001 has more decimals than a fen (0.01 yuan)"),
    ({"band_pct": "10.001"}, "instrument CEA24: band_pct 10.001 has more decimals than a basis point (0.01 %)"),
    ({"band_pct": "100"}, "instrument CEA24: band_pct 100 must be at least 0 and below 100 (0 = no band)"),
    ({"band_pct": "-5"}, "instrument CEA24: band_pct -5 must be at least 0 and below 100 (0 = no band)"),
    ({"lot": "0"}, "instrument CEA24: lot must be positive, got 0"),
    ({"block_band_pct": "100"}, "instrument CEA24: block_band_pct 100 must be above 0 and below 100"),
    ({"block_band_pct": "0"}, "instrument CEA24: block_band_pct 0 must be above 0 and below 100"),
    ({"block_band_pct": "30.001"}, "instrument CEA24: block_band_pct 30.001 has more decimals than a basis point"),
    ({"block_min": "0"}, "instrument CEA24: block_min 0 must be a positive number of tonnes"),
    ({"symbol": '""'}, "instrument: symbol is empty"),
])
def test_instrument_values(values: dict[str, str], expected: str) -> None:
    message = refusal(config_text(instruments=one_instrument(**values)))
    assert message.startswith(expected), message


def test_duplicate_instrument_symbol() -> None:
    cea23 = CEA24.replace("CEA24", "CEA23")
    assert refusal(config_text(instruments=CEA24 + cea23 + CEA24)).startswith("instrument CEA24: the symbol is configured twice")


@pytest.mark.parametrize(("fees", "expected"), [
    ("trading_rate = 2", "fees: trading_rate 2 is not between 0 and 1"),
    ("registry_rate = -0.0003", "fees: registry_rate -0.0003 is not between 0 and 1"),
    ("trading_rate = 1.5e0", "fees: trading_rate 1.5 is not between 0 and 1"),
    ("trading_rate = nan", "fees: trading_rate nan is not a finite number"),
    ("trading_rate = 0.6\nregistry_rate = 0.4",
     "fees: trading_rate 0.6 + registry_rate 0.4 must be below 1 (the seller's fees must leave proceeds)"),
    ("trading_rate = 0.00000001", "fees: trading_rate 0.00000001 has more decimals than a part per million (0.000001)"),
    ("trading_rate = 1e-99999999", "fees: trading_rate 1E-99999999 has more decimals than a part per million (0.000001)"),
])
def test_fee_rates(fees: str, expected: str) -> None:
    message = refusal(config_text(fees=fees))
    assert message.startswith(expected), message


def test_fee_rates_in_range_are_read_exactly() -> None:
    assert loads(config_text(fees="trading_rate = 0.000001\nregistry_rate = 0.5")).fee_rates_ppm() == (1, 500_000)


def test_values_given_as_strings_by_from_dict_are_quoted_as_given() -> None:
    # etx demo and the tests build configurations from dicts with strings for decimals.
    from gateway.config import from_dict
    raw = {"instrument": [{"symbol": "CEA24", "ref_price": "100.001"}], "member": [{"id": "M001"}]}
    with pytest.raises(ConfigError, match=r"^instrument CEA24: ref_price 100\.001 has more decimals"):
        from_dict(raw)


def _hash_with(**parts: str) -> str:
    names = ["scheme", "n", "r", "p", "salt", "digest"]
    fields = dict(zip(names, HASH.split("$"), strict=True)) | parts
    return "$".join(fields[k] for k in names)


HASH_CASES = [
    (_hash_with(digest=base64.b64encode(b"d" * 16).decode()), "the hash is 16 bytes, expected 32"),
    (_hash_with(digest=base64.b64encode(b"d" * 33).decode()), "the hash is 33 bytes, expected 32"),
    (_hash_with(digest=""), "the hash is 0 bytes, expected 32"),
    (_hash_with(salt=""), "the salt is empty"),
    (_hash_with(salt="abc"), "the salt is not valid base64"),
    (_hash_with(digest="#" * 44), "the hash is not valid base64"),
    (_hash_with(n="lots"), "N, r and p must be whole numbers"),
    ("scrypt$1024$8$1$" + HASH.split("$")[4], "expected scrypt$N$r$p$salt$hash"),
]


@pytest.mark.parametrize(("stored", "expected"), HASH_CASES, ids=[e for _, e in HASH_CASES])  # ids without the random salt
def test_malformed_secret_hash_names_the_user(stored: str, expected: str) -> None:
    message = refusal(config_text(secret_hash=stored))
    assert message.startswith(f"user M001/trader1: secret_hash: {expected}"), message
    assert HASH.split("$")[5] not in message and HASH.split("$")[4] not in message, "no part of a hash is repeated"

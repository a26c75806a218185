"""The ``[market_data]`` section and ``exchange.id``: defaults, every value checked with
one line naming the key, the root derived from the exchange's id, and the files the
publisher reads at the start (the broker password, TLS certificates) refused with the
key, the path and what to do (by ``etx serve`` too: one line, exit 2). Nothing here
needs a broker."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, Instrument
from gateway.auth import hash_secret
from gateway.config import ConfigError, MarketDataSection, loads
from gateway.marketdata import MarketDataPublisher
from tests.tls import make_certificate

HASH = hash_secret("secret-of-trader1", n=1 << 10)
ROOT = Path(__file__).resolve().parents[2]


def config_text(*, exchange: str = "", market_data: str | None = None) -> str:
    """A valid configuration with extra lines in [exchange] and, when given, a
    [market_data] section."""
    section = "" if market_data is None else f"[market_data]\n{market_data}\n"
    return f"""
[exchange]
listen = "127.0.0.1:0"
schedule = "always"
{exchange}

{section}

[[instrument]]
symbol = "CEA24"
ref_price = 100.00

[[member]]
id = "M001"

[[user]]
member = "M001"
user = "trader1"
role = "trader"
secret_hash = "{HASH}"
"""


def test_defaults() -> None:
    cfg = loads(config_text())
    md = cfg.market_data
    assert cfg.exchange.id == "etx"
    assert (md.enabled, md.host, md.port, md.root, md.depth) == (True, "127.0.0.1", 1883, "", 5)
    assert (md.interval_ms, md.health_interval_ms) == (100, 5000)
    assert (md.username, md.password_file, md.tls, md.tls_ca, md.tls_cert, md.tls_key) == ("", "", False, "", "", "")
    assert cfg.md_root() == "etx/v1/etx"


def test_the_root_names_the_exchange() -> None:
    assert loads(config_text(exchange='id = "sh-1"')).md_root() == "etx/v1/sh-1"
    cfg = loads(config_text(exchange='id = "sh-1"', market_data='root = "cn/ets/v1/shanghai"'))
    assert cfg.md_root() == "cn/ets/v1/shanghai"


def test_every_key_is_read() -> None:
    cfg = loads(config_text(market_data="""
enabled = false
host = "mqtt.example"
port = 8883
depth = 10
interval_ms = 50
health_interval_ms = 1000
username = "etx"
password_file = "/etc/etx/mqtt.pass"
tls = true
tls_ca = "/etc/etx/ca.pem"
tls_cert = "/etc/etx/client.pem"
tls_key = "/etc/etx/client.key"
"""))
    md = cfg.market_data
    assert (md.enabled, md.host, md.port, md.depth, md.interval_ms, md.health_interval_ms) == (
        False, "mqtt.example", 8883, 10, 50, 1000)
    assert (md.username, md.password_file, md.tls) == ("etx", "/etc/etx/mqtt.pass", True)
    assert (md.tls_ca, md.tls_cert, md.tls_key) == ("/etc/etx/ca.pem", "/etc/etx/client.pem", "/etc/etx/client.key")


@pytest.mark.parametrize(("exchange", "market_data", "expected"), [
    ('id = ""', None, "exchange.id: expected 1 to 32 letters, digits, '-' or '_'"),
    ('id = "a/b"', None, "exchange.id: expected 1 to 32 letters, digits, '-' or '_'"),
    ('id = "etx+1"', None, "got 'etx+1'"),
    (f'id = "{"x" * 33}"', None, "exchange.id: expected 1 to 32"),
    ('id = "bö"', None, "exchange.id"),
    ("", "depth = 0", "market_data.depth must be between 1 and 50, got 0"),
    ("", "depth = 51", "market_data.depth must be between 1 and 50, got 51"),
    ("", "port = 0", "market_data.port must be between 1 and 65535, got 0"),
    ("", "port = 70000", "market_data.port must be between 1 and 65535, got 70000"),
    ("", 'host = ""', "market_data.host"),
    ("", "interval_ms = 0", "market_data.interval_ms must be between 1 and 60000, got 0"),
    ("", "interval_ms = 500\nhealth_interval_ms = 100",
     "market_data.health_interval_ms must be between market_data.interval_ms (500) and 3600000, got 100"),
    ("", 'root = "etx/#"', "market_data.root"),
    ("", 'root = "/etx/v1"', "market_data.root"),
    ("", 'root = "etx/v1/"', "market_data.root"),
    ("", 'root = "etx/+/x"', "market_data.root"),
    ("", f'root = "{"r" * 201}"', "market_data.root"),
    ("", 'password_file = "/x"', "market_data.password_file needs market_data.username"),
    ("", 'tls_ca = "/x"', "market_data.tls_ca is set but market_data.tls is false"),
    ("", 'tls = true\ntls_cert = "/x"', "market_data.tls_cert and market_data.tls_key go together"),
    ("", 'tls = true\ntls_key = "/x"', "market_data.tls_cert and market_data.tls_key go together"),
    ("", "depth = \"10\"", "market_data.depth"),
    ("", "enabled = 1", "market_data.enabled"),
    ("", "colour = 1", "colour"),
])
def test_mistakes_are_one_line_naming_the_key(exchange: str, market_data: str | None, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(config_text(exchange=exchange, market_data=market_data))
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


# --- the files, read when the publisher is made (etx serve: at the start) -------------


def engine() -> Engine:
    return Engine([Instrument(symbol="CEA24", ref_price=10000, holds=False)])


def publisher(tmp_path: Path, market_data: str) -> MarketDataPublisher:
    return MarketDataPublisher.from_config(engine(), loads(config_text(market_data=market_data)))


def password_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "mqtt.pass"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_password_file_read_and_kept_out_of_sight(tmp_path: Path) -> None:
    path = password_file(tmp_path, "pa55-xyzzy\n")
    md = publisher(tmp_path, f'username = "etx"\npassword_file = "{path}"')
    assert md.username == "etx" and md.has_password
    assert "pa55-xyzzy" not in repr(md) and "pa55-xyzzy" not in str(vars(md))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_file_others_can_read_is_refused_naming_its_mode(tmp_path: Path, mode: int) -> None:
    path = password_file(tmp_path, "pa55-xyzzy\n", mode)
    with pytest.raises(ConfigError) as e:
        publisher(tmp_path, f'username = "etx"\npassword_file = "{path}"')
    text = str(e.value)
    assert f"market_data.password_file {path} can be read by others (mode {mode:03o})" in text, text
    assert f"chmod 600 {path}" in text and "pa55-xyzzy" not in text and "\n" not in text, text


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: None, "cannot be read (No such file"),
    (lambda p: p.mkdir(mode=0o700), "is not a regular file"),
    (lambda p: (p.write_text(""), p.chmod(0o600)), "holds no password"),
    (lambda p: (p.write_text("\n"), p.chmod(0o600)), "holds no password"),
    (lambda p: (p.write_text("one\ntwo\n"), p.chmod(0o600)), "has more than one line"),
])
def test_password_file_problems(tmp_path: Path, make: object, expected: str) -> None:
    path = tmp_path / "mqtt.pass"
    make(path)  # type: ignore[operator]
    with pytest.raises(ConfigError) as e:
        publisher(tmp_path, f'username = "etx"\npassword_file = "{path}"')
    assert f"market_data.password_file {path}" in str(e.value) and expected in str(e.value), str(e.value)


def test_tls_files(tmp_path: Path) -> None:
    ca, ca_key = make_certificate(tmp_path, "broker")
    cert, key = make_certificate(tmp_path, "client")
    md = publisher(tmp_path, f'tls = true\ntls_ca = "{ca}"\ntls_cert = "{cert}"\ntls_key = "{key}"')
    assert isinstance(md.tls_context, ssl.SSLContext) and md.tls_context.check_hostname
    assert publisher(tmp_path, "tls = true").tls_context is not None  # the system's CAs
    assert publisher(tmp_path, "").tls_context is None
    for text, expected in [
        (f'tls = true\ntls_ca = "{tmp_path / "none.pem"}"', f"market_data.tls_ca {tmp_path / 'none.pem'} cannot be read"),
        (f'tls = true\ntls_ca = "{ca_key}"', f"market_data.tls_ca {ca_key} is not a PEM certificate"),
        (f'tls = true\ntls_cert = "{cert}"\ntls_key = "{ca_key}"',
         f"market_data.tls_key {ca_key} is not the private key of market_data.tls_cert {cert}"),
        (f'tls = true\ntls_cert = "{tmp_path}"\ntls_key = "{key}"', f"market_data.tls_cert {tmp_path} cannot be read"),
    ]:
        with pytest.raises(ConfigError) as e:
            publisher(tmp_path, text)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_publisher_takes_the_section(tmp_path: Path) -> None:
    md = publisher(tmp_path, 'host = "mqtt.example"\nport = 8883\ndepth = 10\ninterval_ms = 50\nhealth_interval_ms = 1000')
    assert (md.host, md.port, md.root, md.depth, md.interval_s, md.health_interval_s) == (
        "mqtt.example", 8883, "etx/v1/etx", 10, 0.05, 1.0)
    assert md.username is None and not md.has_password


def test_the_example_configuration_shows_every_key() -> None:
    example = Path(__file__).resolve().parents[2] / "etx.example.toml"
    cfg = loads(example.read_text())
    assert cfg.market_data == MarketDataSection() and cfg.md_root() == "etx/v1/etx"  # the defaults, written out
    text = example.read_text()
    section = text[text.index("[market_data]"):]
    for key in MarketDataSection.__struct_fields__:
        assert f"\n{key} = " in section, key
    assert '\nid = "etx"' in text


# --- etx serve: a file that cannot be used, or a bad --mqtt, is one line and exit 2 ---


def serve(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "etx.toml").write_text(text)
    return subprocess.run([sys.executable, "-m", "tools.cli", "serve", "--config", str(tmp_path / "etx.toml"),
                           "--data", str(tmp_path / "data"), "--log-level", "WARNING", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_password_file_others_can_read(tmp_path: Path) -> None:
    path = password_file(tmp_path, "pa55-xyzzy\n", 0o644)
    done = serve(tmp_path, config_text(market_data=f'username = "etx"\npassword_file = "{path}"'),
                 "--mqtt", "127.0.0.1:1")  # the file is read before any broker is asked
    output = done.stdout + done.stderr
    lines = output.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in output, output
    assert lines[-1] == (f"etx serve: market_data.password_file {path} can be read by others (mode 644); "
                         f"make it private: chmod 600 {path}"), output
    assert "pa55-xyzzy" not in output


@pytest.mark.parametrize("mqtt", ["localhost", "localhost:", ":1883", "localhost:x", "localhost:70000"])
def test_serve_refuses_a_bad_mqtt_address(tmp_path: Path, mqtt: str) -> None:
    done = serve(tmp_path, config_text(), "--mqtt", mqtt)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert done.stdout.strip() == f"etx serve: --mqtt: expected HOST:PORT (port 1 to 65535), got {mqtt!r}"

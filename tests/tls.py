"""A self-signed certificate for TLS tests, made with the ``openssl`` command (Debian's
``openssl`` package; ``./dev test`` installs it). Missing, the tests that need it fail."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path


def make_certificate(folder: Path, name: str = "etx-test") -> tuple[Path, Path]:
    """(certificate, key) files for ``CN=name`` (also its subjectAltName)."""
    assert shutil.which("openssl"), "TLS tests make their certificates with the openssl command (Debian: openssl)"
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=120)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    return ctx

"""A PostgreSQL server for tests, and a fresh database on it for each test run.

``pg_admin_dsn()`` gives the DSN of a server the tests may create databases on:
- the one ``ETX_PG_DSN`` names (e.g. ``postgresql://postgres@127.0.0.1:5432/test``), or
- a private instance started here: ``initdb`` and ``pg_ctl`` from
  ``/usr/lib/postgresql/*/bin`` (the newest version), in a temporary directory, on a
  free port on 127.0.0.1, trust authentication, stopped by ``PgServer.stop()``. When
  running as root it runs as the ``postgres`` user (PostgreSQL refuses root), and the
  directory belongs to that user.
``fresh_database(admin_dsn)`` creates ``etx_test_<random>`` and returns its DSN and a
function that drops it. Nothing here skips: when no server can be had, the error says
why and how to fix it (``./dev test`` installs PostgreSQL's packages).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                           "apt-get install postgresql, or set ETX_PG_DSN (./dev test installs it)")
    return Path(found[-1]).parent


class PgServer:
    """A private PostgreSQL instance in its own temporary directory."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="etx-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError("running as root needs the 'postgres' user to run PostgreSQL "
                                   "(apt-get install postgresql creates it)") from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-locale")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c max_connections=50"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(START_TIMEOUT_S), "start")
        return self.dsn

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def wait_ready(dsn: str, timeout_s: float = 10.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fresh_database(admin_dsn: str) -> tuple[str, Callable[[], None]]:
    """Create ``etx_test_<random>``; returns its DSN and a function that drops it."""
    import psycopg

    name = f"etx_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return _with_database(admin_dsn, name), drop


def schema_dsn(dsn: str, schema: str) -> str:
    """The DSN with the search path set to one schema: a fresh, empty store per test
    inside the run's database, without the cost of a database per test."""
    parts = urlsplit(dsn)
    query = (parts.query + "&" if parts.query else "") + f"options=-csearch_path%3D{schema}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

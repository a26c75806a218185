"""Fixtures for every test package: the same tests run against a real SQLite file and a
real PostgreSQL.

``pg_dsn`` (session): a database created for this run (``etx_test_<random>``, dropped at
the end) on the server ``ETX_PG_DSN`` names, or on a private server started for the
run. When neither works the PostgreSQL tests fail; they never skip.
``store_url`` / ``store`` (per test, parametrized "sqlite" and "postgresql"): a fresh,
empty, migrated store (a new file; a new schema in the run's database).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from settlement.store import PostgresStore, SqliteStore, open_store
from tests.pgserver import PgServer, fresh_database, schema_dsn, wait_ready


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    server: PgServer | None = None
    try:
        admin = os.environ.get("ETX_PG_DSN")
        if not admin:
            server = PgServer()
            admin = server.start()
        wait_ready(admin)
        dsn, drop = fresh_database(admin)
    except Exception as exc:  # noqa: BLE001 - any failure to get a server fails the tests loudly
        if server is not None:
            server.stop()
        pytest.fail(f"no PostgreSQL for the tests: {exc}", pytrace=False)
    try:
        yield dsn
    finally:
        try:
            drop()
        finally:
            if server is not None:
                server.stop()


def new_pg_schema(pg_dsn: str) -> str:
    import psycopg

    schema = f"s_{secrets.token_hex(6)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema_dsn(pg_dsn, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "registry.sqlite")
    return new_pg_schema(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def store(store_url: str) -> Iterator[SqliteStore | PostgresStore]:
    s = open_store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()

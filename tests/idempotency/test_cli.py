"""``stoic idempotency migrate`` and ``purge`` through the assembled ``stoic`` command."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from stoic.cli import build_app
from stoic.idempotency import PostgresStore, SQLiteStore


def test_migrate_creates_the_postgres_table_once_and_again(postgres_dsn: str) -> None:
    table = f"stoic_idem_cli_{uuid.uuid4().hex[:10]}"
    runner = CliRunner()
    try:
        said = []
        for _ in range(2):
            result = runner.invoke(build_app(), ["idempotency", "migrate", "--store",
                                                 postgres_dsn, "--table", table])
            assert result.exit_code == 0, result.output
            assert f"table {table} is ready" in result.output
            said.append(result.output)
        assert "created it and its index" in said[0]
        assert "it already existed" in said[1]
        store = PostgresStore(postgres_dsn, table=table, create_table=False)
        assert store.claim("k", "f", lease=5, ttl=5).claimed
        store.close()
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_migrate_print_sql_shows_the_ddl_without_connecting() -> None:
    result = CliRunner().invoke(build_app(), ["idempotency", "migrate", "postgresql://nowhere",
                                              "--print-sql", "--table", "t_1"])
    assert result.exit_code == 0
    assert "CREATE TABLE IF NOT EXISTS t_1" in result.output


def test_purge_removes_expired_sqlite_records(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    store = SQLiteStore(path)
    claim = store.claim("k", "f", lease=1, ttl=1)
    store.complete("k", claim.token or "", "r", ttl=0.001)
    store.close()
    time.sleep(0.01)  # a real process reads the real clock: let the record expire for real
    result = CliRunner().invoke(build_app(), ["idempotency", "purge", "--store",
                                              f"sqlite:///{path}"])
    assert result.exit_code == 0, result.output
    assert "purged 1 expired record" in result.output


def test_the_positional_store_url_still_works_with_a_deprecation_note(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    store = SQLiteStore(path)
    store.claim("k", "f", lease=60, ttl=60)  # the store creates its file on first use
    store.close()
    result = CliRunner().invoke(build_app(), ["idempotency", "purge", f"sqlite:///{path}"])
    assert result.exit_code == 0, result.output
    assert "purged 0 expired records" in result.output
    assert "positional URL is deprecated; use --store URL" in result.output


def test_purge_never_creates_a_postgres_table(postgres_dsn: str) -> None:
    table = f"stoic_idem_cli_{uuid.uuid4().hex[:10]}"
    result = CliRunner().invoke(build_app(), ["idempotency", "purge", "--store", postgres_dsn,
                                              "--table", table])
    assert result.exit_code == 1
    assert f"no table {table} (create it with stoic idempotency migrate)" in result.stderr
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)


def test_purge_never_adds_a_table_to_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).execute("CREATE TABLE users (id)").connection.close()
    before = path.read_bytes()
    result = CliRunner().invoke(build_app(), ["idempotency", "purge", "--store",
                                              f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "not a stoic database: it has no table stoic_idempotency" in result.stderr
    assert path.read_bytes() == before

"""``stoic idempotency``: operate idempotency stores from the shell.

    stoic idempotency migrate --store postgresql://admin@db/app [--table NAME] [--print-sql]
    stoic idempotency purge --store sqlite:///idempotency.db

``migrate`` creates the PostgreSQL table ahead of time, for deployments whose application
role may not run DDL (then construct ``PostgresStore(..., create_table=False)``), and says
whether it created it. ``purge`` removes expired records from an existing store; it never
creates a file or a table. ``--store`` defaults to the ``STOIC_STORE`` environment variable;
the URL given as a positional argument (the first spelling) still works, with a note.
"""

from __future__ import annotations

from typing import Any

import typer

from .._cli import (
    DEFAULT_TIMEOUT,
    TIMEOUT_OPTION,
    USAGE,
    Backend,
    CommandError,
    UrlOption,
    check_reachable,
    existing_sqlite_file,
    reaching,
    redis_client,
)
from .postgres import PostgresStore, create_table_sql
from .store import check_table

__all__ = ["app", "open_store"]

app = typer.Typer(
    name="idempotency", no_args_is_help=True, add_completion=False,
    help="Idempotency-key stores: create tables, purge expired records.",
)

_STORE = UrlOption("--store", "STOIC_STORE", ("sqlite", "redis", "postgresql"))

StoreOption = typer.Option(
    None, "--store", "-s", envvar="STOIC_STORE", metavar="URL",
    help="Store URL: sqlite:///file.db, redis://host:port/db or postgresql://user@host/db.",
)
PositionalUrl = _STORE.positional()
TableOption = typer.Option("stoic_idempotency", help="Table name (SQLite, PostgreSQL).")


def open_store(
    url: str, table: str = "stoic_idempotency", *, timeout: float | None = None,
    create: bool = True,
) -> Any:
    """A store from a URL: ``sqlite:///path.db``, ``redis://…``, ``postgresql://…``.

    With ``timeout`` the server is checked first (a handshake bounded by it) and a Redis
    client waits at most that long. With ``create=False`` the SQLite file or the table must
    already exist: ``CommandError`` instead of creating them.
    """
    backend = _STORE.parse(url)
    _table(table)
    if timeout is not None:
        check_reachable(backend, timeout)
    with reaching(backend):
        if backend.family == "sqlite":
            from .sqlite import SQLiteStore

            if not create:
                _has_table(existing_sqlite_file(backend), table)
            return SQLiteStore(backend.path or "", table=table)
        if backend.family == "redis":
            from .redis import RedisStore

            client = None if timeout is None else redis_client(url, timeout,
                                                                decode_responses=False)
            return RedisStore(url, client=client)
        if not create and not _postgres_table_exists(backend, table, timeout):
            raise CommandError(f"{backend.shown}: no table {table} (create it with "
                               f"stoic idempotency migrate)")
        return PostgresStore(url, table=table, create_table=create)


def _table(table: str) -> None:
    try:
        check_table(table)
    except ValueError as exc:
        raise CommandError(f"--table: {exc}", USAGE) from None


def _has_table(path: Any, table: str) -> None:
    """A SQLite store file holds the table: opened read-only, so a wrong file stays as it was."""
    import sqlite3
    from pathlib import Path
    from urllib.parse import quote

    db = sqlite3.connect(f"file:{quote(str(Path(path).absolute()))}?mode=ro", uri=True)
    try:
        db.execute(f"SELECT 1 FROM {table} LIMIT 0")  # the name passed check_table
    finally:
        db.close()


@app.command()
def migrate(
    dsn: str | None = PositionalUrl,
    store: str | None = StoreOption,
    table: str = TableOption,
    print_sql: bool = typer.Option(False, "--print-sql", help="Print the DDL, run nothing."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Create the PostgreSQL table and index (safe to run again); says if it created them."""
    _table(table)
    if print_sql:
        typer.echo(create_table_sql(table))
        return
    url = _STORE.choose(store, dsn)
    backend = _STORE.parse(url, ("postgresql",))
    check_reachable(backend, timeout)
    with reaching(backend):
        existed = _postgres_table_exists(backend, table, timeout)
        pg = PostgresStore(url, table=table, min_size=0, max_size=1)
        try:
            pg.migrate()
        finally:
            pg.close()
    if existed:
        typer.echo(f"table {table} is ready (it already existed in {backend.shown})")
    else:
        typer.echo(f"table {table} is ready: created it and its index in {backend.shown}")
    _STORE.note_deprecated(dsn)


def _postgres_table_exists(backend: Backend, table: str, timeout: float | None) -> bool:
    import psycopg

    seconds = max(2, round(timeout if timeout is not None else DEFAULT_TIMEOUT))
    with psycopg.connect(backend.url, connect_timeout=seconds) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


@app.command()
def purge(
    url: str | None = PositionalUrl,
    store: str | None = StoreOption,
    table: str = TableOption,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Delete expired records (reads ignore them anyway; this reclaims the space)."""
    target = _STORE.choose(store, url)
    opened = open_store(target, table, timeout=timeout, create=False)
    backend = _STORE.parse(target)
    with reaching(backend):
        try:
            count = opened.purge_expired()
        finally:
            opened.close()
    if backend.family == "redis":
        typer.echo("purged 0 expired records (Redis expires them by itself)")
    else:
        typer.echo(f"purged {count} expired record{'s' if count != 1 else ''}")
    _STORE.note_deprecated(url)

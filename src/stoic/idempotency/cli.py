"""``stoic idempotency``: operate idempotency stores from the shell.

``migrate`` creates the PostgreSQL table ahead of time, for deployments whose application
role may not run DDL (then construct ``PostgresStore(..., create_table=False)``).
``purge`` removes expired records from a store given by URL.
"""

from __future__ import annotations

from typing import Any

import typer

from .postgres import PostgresStore, create_table_sql

__all__ = ["app", "open_store"]

app = typer.Typer(
    name="idempotency", no_args_is_help=True, add_completion=False,
    help="Idempotency-key stores: create tables, purge expired records.",
)


def open_store(url: str, table: str = "stoic_idempotency") -> Any:
    """A store from a URL: ``sqlite:///path.db``, ``redis://…``, ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite:///"):], table=table)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore

        return RedisStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, table=table)
    raise typer.BadParameter(f"unsupported store URL {url!r}", param_hint="URL")


@app.command()
def migrate(
    dsn: str = typer.Argument(..., help="PostgreSQL DSN, e.g. postgresql://user@host/db"),
    table: str = typer.Option("stoic_idempotency", help="Table name."),
    print_sql: bool = typer.Option(False, "--print-sql", help="Print the DDL, run nothing."),
) -> None:
    """Create the PostgreSQL table and index (safe to run again)."""
    if print_sql:
        typer.echo(create_table_sql(table))
        return
    store = PostgresStore(dsn, table=table, min_size=0, max_size=1)
    try:
        store.migrate()
    finally:
        store.close()
    typer.echo(f"table {table} is ready")


@app.command()
def purge(
    url: str = typer.Argument(..., help="sqlite:///path.db, redis://... or postgresql://..."),
    table: str = typer.Option("stoic_idempotency", help="Table name (SQLite, PostgreSQL)."),
) -> None:
    """Delete expired records (reads ignore them anyway; this reclaims the space)."""
    store = open_store(url, table)
    try:
        count = store.purge_expired()
    finally:
        store.close()
    typer.echo(f"purged {count} expired record{'s' if count != 1 else ''}")

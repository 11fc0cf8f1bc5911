"""The SQL ``PostgresStore`` runs, and how it reads the rows that come back.

Everything here is plain strings and pure functions of rows: no connection, no psycopg.
"""

from __future__ import annotations

import zlib
from typing import Any

from .. import clock
from .store import (
    SQL_COLUMNS,
    SQL_COMPLETED,
    SQL_IN_FLIGHT,
    Claim,
    Record,
    check_table,
    live_answer,
    record_from_row,
    report_corrupted,
    won_claim,
)

__all__ = [
    "Statements",
    "claim_answer",
    "claim_params",
    "claim_read",
    "completed_by",
    "create_table_sql",
    "read_record",
]


def create_table_sql(table: str) -> str:
    """The DDL for the records table (what ``stoic idempotency migrate`` runs)."""
    check_table(table)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state SMALLINT NOT NULL,"
        " token TEXT NOT NULL, lease_until DOUBLE PRECISION NOT NULL,"
        " expires_at DOUBLE PRECISION NOT NULL, response TEXT);"
        f" CREATE INDEX IF NOT EXISTS {table}_expires ON {table} (expires_at)"
    )


class Statements:
    """The statements for one (checked) table name, built once per store."""

    __slots__ = ("claim", "complete", "delete", "extend", "get", "lock_id", "purge", "release")

    def __init__(self, t: str) -> None:
        check_table(t)
        self.claim = (
            f"WITH old AS (SELECT {SQL_COLUMNS} FROM {t} WHERE key = %(key)s),"
            f" ins AS (INSERT INTO {t} AS r"
            f" (key, fingerprint, state, token, lease_until, expires_at, response)"
            f" VALUES (%(key)s, %(fp)s, {SQL_IN_FLIGHT}, %(token)s, %(lease)s, %(exp)s, NULL)"
            f" ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            f" state = {SQL_IN_FLIGHT}, token = excluded.token, lease_until = excluded.lease_until,"
            f" expires_at = excluded.expires_at, response = NULL"
            f" WHERE r.expires_at <= %(now)s"
            f" OR (r.state = {SQL_IN_FLIGHT} AND r.lease_until <= %(now)s)"
            f" OR r.state NOT IN ({SQL_IN_FLIGHT}, {SQL_COMPLETED})"
            f" RETURNING token)"
            f" SELECT EXISTS (SELECT 1 FROM ins), old.fingerprint, old.state, old.token,"
            f" old.lease_until, old.expires_at, old.response"
            f" FROM (SELECT 1) AS one LEFT JOIN old ON true"
        )
        self.complete = (
            f"UPDATE {t} SET state = {SQL_COMPLETED}, response = %s, expires_at = %s,"
            f" lease_until = %s WHERE key = %s AND token = %s AND state = {SQL_IN_FLIGHT}"
            f" AND expires_at > %s"
        )
        self.release = (
            f"DELETE FROM {t} WHERE key = %s AND token = %s AND state = {SQL_IN_FLIGHT}"
            f" AND expires_at > %s"
        )
        self.extend = (
            f"UPDATE {t} SET lease_until = %s, expires_at = greatest(expires_at, %s)"
            f" WHERE key = %s AND token = %s AND state = {SQL_IN_FLIGHT} AND expires_at > %s"
        )
        self.get = f"SELECT {SQL_COLUMNS} FROM {t} WHERE key = %s AND expires_at > %s"
        self.delete = f"DELETE FROM {t} WHERE key = %s"
        self.purge = f"DELETE FROM {t} WHERE expires_at <= %s"
        #: the advisory lock that serialises creating the table
        self.lock_id = zlib.crc32(f"stoic:{t}".encode())


def claim_params(
    key: str, fingerprint: str, token: str, lease: float, ttl: float
) -> tuple[dict[str, Any], float]:
    """The parameters of ``Statements.claim`` for a claim made now, and now."""
    now = clock.wall()
    params = {"key": key, "fp": fingerprint, "token": token, "lease": now + lease,
              "exp": now + max(ttl, lease), "now": now}
    return params, now


def _record(key: str, row: Any) -> Record | None:
    """The record in a row of ``SQL_COLUMNS``; None when the row does not hold one."""
    try:
        return record_from_row(key, row)
    except (TypeError, ValueError):
        return None


def read_record(key: str, row: Any) -> Record | None:
    """The record a ``SELECT`` found, or None: no row, or one that is reported unreadable."""
    if row is None:
        return None
    try:
        return record_from_row(key, row)
    except (TypeError, ValueError) as exc:
        report_corrupted("PostgresStore", key, exc)
        return None


def claim_answer(key: str, fingerprint: str, token: str, now: float, row: Any) -> Claim | None:
    """The claim's result from the claim statement's one row, or None to try again."""
    won, seen = row[0], row[1:]
    old = None if seen[0] is None else _record(key, seen)
    if won:
        return won_claim(key, token, old, now, corrupted=seen[0] is not None and old is None)
    # None: a concurrent claim committed after our snapshot, or the row we saw has since
    # expired or been released; the caller reads again.
    return live_answer(old, fingerprint, now)


def claim_read(key: str, fingerprint: str, token: str, row: Any, now: float) -> Claim | None:
    """What the first read of a claim answers: None when the key is free to claim.

    A live in-flight record holding our own ``token`` is our claim, won by an attempt whose
    commit was lost with its connection: the retry takes it, it does not refuse it."""
    seen = read_record(key, row)
    if seen is not None and seen.token == token and not seen.completed:
        return won_claim(key, token, None, now)
    return live_answer(seen, fingerprint, now)


def completed_by(key: str, token: str, response: str | None, row: Any) -> bool:
    """Whether the record in ``row`` is ``token``'s, completed with ``response``."""
    record = read_record(key, row)
    return (record is not None and record.completed and record.token == token
            and record.response == response)

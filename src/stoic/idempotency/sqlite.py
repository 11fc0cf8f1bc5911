"""The embedded default store: one SQLite file shared by every thread and process using it.

Each thread gets its own connection (SQLite connections must not be shared between threads,
and a forked child opens a fresh one). The database runs in WAL mode, so readers never wait
for the writer, with a busy timeout so writers queue instead of failing. Every state change
is one atomic statement:

* claim: read first (a replay or an in-flight answer takes no write lock), and only when
  nothing live is there, ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <dead> RETURNING``;
  exactly one concurrent caller gets a row back;
* complete / release / extend: an ``UPDATE`` or ``DELETE`` guarded by ``token`` and state.

``synchronous`` defaults to NORMAL: in WAL mode a power cut may lose the last commits but
never corrupts the file; a crash of the process loses nothing. Pass ``synchronous="FULL"``
to survive power loss too, at a cost in writes per second.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TypeVar

from .. import clock
from ..integrations._deadlines import SQLiteBusy, outside_deadline, sqlite_busy_ran_out
from .store import (
    SQL_COLUMNS,
    SQL_COMPLETED,
    SQL_IN_FLIGHT,
    BaseStore,
    Claim,
    Record,
    check_seconds,
    check_table,
    live_answer,
    new_token,
    record_from_row,
    report_corrupted,
    unexpired,
    won_claim,
)

__all__ = ["SQLiteStore"]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

F = TypeVar("F", bound=Callable[..., object])


def _bounded(method: F) -> F:
    """Raise ``DeadlineExceeded`` (chained) when SQLite stopped waiting for a lock because
    the caller's deadline ran out. Every operation is one autocommit statement, so a
    statement that failed wrote nothing."""

    @wraps(method)
    def run(*args: object, **kwargs: object) -> object:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            error = sqlite_busy_ran_out(exc, "an SQLiteStore operation")
            if error is None:
                raise
            raise error from exc

    return run  # type: ignore[return-value]


class SQLiteStore(BaseStore):
    """Idempotency records in a SQLite file.

    Args:
        path: the database file (created if missing). ``":memory:"`` is refused: each thread
            would get its own empty database.
        table: table name, created on first use.
        busy_timeout: seconds a writer waits for the lock before failing. Under
            ``stoic.deadline`` it waits no longer than the time left, then raises
            ``stoic.DeadlineExceeded``; an operation is not started once the deadline passed.
        synchronous: SQLite's durability level, NORMAL by default (see module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "stoic_idempotency",
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:":
            raise ValueError(f"path must be a file path, got {path!r}")
        check_table(table)
        busy_timeout = check_seconds("busy_timeout", busy_timeout)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        self.path = path
        self.table = table
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        t = table
        self._sql_select = (
            f"SELECT {SQL_COLUMNS} FROM {t} WHERE key = ?"
        )
        self._sql_claim = (
            f"INSERT INTO {t} (key, fingerprint, state, token, lease_until, expires_at, response)"
            f" VALUES (?1, ?2, {SQL_IN_FLIGHT}, ?3, ?4, ?5, NULL)"
            f" ON CONFLICT(key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            f" state = {SQL_IN_FLIGHT}, token = excluded.token,"
            f" lease_until = excluded.lease_until, expires_at = excluded.expires_at,"
            f" response = NULL"
            f" WHERE {t}.expires_at <= ?6 OR ({t}.state = {SQL_IN_FLIGHT} AND {t}.lease_until <= ?6)"
            f" OR {t}.state NOT IN ({SQL_IN_FLIGHT}, {SQL_COMPLETED})"
            f" OR typeof({t}.expires_at) NOT IN ('real', 'integer')"
            f" OR typeof({t}.lease_until) NOT IN ('real', 'integer')"
            f" OR typeof({t}.fingerprint) != 'text' OR typeof({t}.token) != 'text'"
            f" RETURNING token"
        )
        self._sql_complete = (
            f"UPDATE {t} SET state = {SQL_COMPLETED}, response = ?3, expires_at = ?4,"
            f" lease_until = ?5 WHERE key = ?1 AND token = ?2 AND state = {SQL_IN_FLIGHT}"
            f" AND expires_at > ?5"
        )
        self._sql_release = (
            f"DELETE FROM {t} WHERE key = ?1 AND token = ?2 AND state = {SQL_IN_FLIGHT}"
            f" AND expires_at > ?3"
        )
        self._sql_extend = (
            f"UPDATE {t} SET lease_until = ?3, expires_at = max(expires_at, ?3)"
            f" WHERE key = ?1 AND token = ?2 AND state = {SQL_IN_FLIGHT} AND expires_at > ?4"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = ?"
        self._sql_purge = (
            f"DELETE FROM {t} WHERE expires_at <= ? OR typeof(expires_at) NOT IN ('real', 'integer')"
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, table={self.table!r})"

    # -- connections -----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            local.busy("an SQLiteStore operation")
            return conn
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        local.conn, local.pid, local.busy = conn, os.getpid(), SQLiteBusy(conn, self.busy_timeout)
        with self._lock:
            self._connections.append(conn)
        local.busy("an SQLiteStore operation")
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL and create the table, retrying while others hold locks.

        Switching a fresh file to WAL needs an exclusive lock, and SQLite reports "database
        is locked" at once, without its busy handler, when many processes open a new file
        together. This waits on other processes' file locks, which is real time no virtual
        clock can advance, so it reads ``time.monotonic`` and sleeps for real.
        """
        give_up = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise sqlite3.OperationalError("database is locked (journal mode)")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} ("
                    " key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state INTEGER NOT NULL,"
                    " token TEXT NOT NULL, lease_until REAL NOT NULL,"
                    " expires_at REAL NOT NULL, response TEXT) WITHOUT ROWID"
                )
                # No index on expires_at: it would cost every claim and complete a second
                # B-tree write, to speed up only purge_expired, rare housekeeping (a scan).
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() > give_up:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # -- the contract ----------------------------------------------------------------------

    def _read(self, conn: sqlite3.Connection, key: str) -> tuple[Record | None, bool]:
        """The stored record, and whether a row exists that could not be read."""
        row = conn.execute(self._sql_select, (key,)).fetchone()
        if row is None:
            return None, False
        try:
            return record_from_row(key, row), False
        except (TypeError, ValueError) as exc:
            report_corrupted("SQLiteStore", key, exc)
            return None, True

    @_bounded
    def _claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> Claim:
        for _ in range(100):  # bounded: each turn loses to a writer that changed the row
            now = clock.wall()
            old, corrupted = self._read(self._conn(), key)
            answer = live_answer(old, fingerprint, now)
            if answer is not None:
                return answer
            token = new_token()
            row = self._conn().execute(  # the busy wait bounded afresh for the write
                self._sql_claim,
                (key, fingerprint, token, now + lease, now + max(ttl, lease), now),
            ).fetchone()
            if row is not None and row[0] == token:
                return won_claim(key, token, old, now, corrupted=corrupted)
        raise RuntimeError(f"could not claim {key!r}: the record kept changing")

    @_bounded
    def _complete(self, key: str, token: str, response: str | None, ttl: float) -> bool:
        with outside_deadline():  # records work already done (see _deadlines)
            now = clock.wall()
            cur = self._conn().execute(self._sql_complete, (key, token, response, now + ttl, now))
            return cur.rowcount == 1

    @_bounded
    def release(self, key: str, token: str) -> bool:
        with outside_deadline():  # records work already done (see _deadlines)
            cur = self._conn().execute(self._sql_release, (key, token, clock.wall()))
            return cur.rowcount == 1

    @_bounded
    def _extend(self, key: str, token: str, lease: float) -> bool:
        now = clock.wall()
        cur = self._conn().execute(self._sql_extend, (key, token, now + lease, now))
        return cur.rowcount == 1

    @_bounded
    def _get(self, key: str) -> Record | None:
        record, _ = self._read(self._conn(), key)
        return unexpired(record, clock.wall())

    @_bounded
    def delete(self, key: str) -> bool:
        return self._conn().execute(self._sql_delete, (key,)).rowcount == 1

    @_bounded
    def purge_expired(self) -> int:
        return self._conn().execute(self._sql_purge, (clock.wall(),)).rowcount

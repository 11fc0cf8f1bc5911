"""The embedded workflow store: one SQLite file shared by every thread and process using it.

Each thread has its own connection; the file is in WAL mode (readers never wait for the
writer) with a busy timeout, so writers queue. Every write is one ``BEGIN IMMEDIATE``
transaction: a claim, a fenced checkpoint (the fence is an ``UPDATE ... WHERE token = ?``
that must match one row, so a stale worker writes nothing), a signal.

``synchronous`` defaults to FULL: each checkpoint is on disk before the next step starts,
even across a power cut. NORMAL keeps every commit through a crash of the process (what the
crash tests prove) but may lose the last ones on power loss, for fewer fsyncs. A
``readonly=True`` store opens the file read-only (the CLI's inspection commands).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .dialect import SQLITE
from .sql import SQLStore
from .store import check_seconds

__all__ = ["SQLiteStore"]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class _Group:
    """The state of group commit: the shared write connection and its open transaction."""

    def __init__(self) -> None:
        self.lock = threading.Lock()          # the connection and the open transaction
        self.done = threading.Condition()     # batches committed
        self.conn: sqlite3.Connection | None = None
        self.pid = 0
        self.open = False
        self.batch = 1                        # the batch the open transaction commits
        self.committed = 0
        self.committing = False
        self.failed: dict[int, BaseException] = {}


class SQLiteStore(SQLStore):
    """Workflow runs in a SQLite file.

    Args:
        path: the database file (created if missing, unless ``readonly``).
        prefix: table name prefix (``<prefix>_runs``, ``_steps``, ``_signals``).
        synchronous: SQLite's durability level, FULL by default (see the module docstring).
        busy_timeout: seconds a writer waits for the write lock before failing.
        readonly: open the file read-only; every write raises ``sqlite3.OperationalError``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, prefix: str = "stoic_wf",
        synchronous: str = "FULL", busy_timeout: float = 30.0, readonly: bool = False,
    ) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:":
            raise ValueError(f"path must be a file path, got {path!r}")
        super().__init__(prefix)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        if readonly and not Path(path).exists():
            raise FileNotFoundError(f"no workflow database at {path}")
        self.path = path
        self.synchronous = synchronous.upper()
        self.busy_timeout = check_seconds("busy_timeout", busy_timeout)
        self.readonly = bool(readonly)
        self._lock = threading.Lock()
        #: Reading connections by (process, thread): a thread's id is unique among live
        #: threads, so a new thread may take over the connection of one that ended.
        self._readers: dict[tuple[int, int], sqlite3.Connection] = {}
        self._others: list[sqlite3.Connection] = []   # the group's writers (one per process)
        self._closed = False
        self._group = _Group()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, prefix={self.prefix!r})"

    # --- connections ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        place = (os.getpid(), threading.get_ident())
        found = self._readers.get(place)
        return found if found is not None else self._open(place)

    def _open(self, place: tuple[int, int]) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self.readonly:
            target, uri = f"{Path(self.path).resolve().as_uri()}?mode=ro", True
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            target, uri = self.path, False
        opened = sqlite3.connect(target, uri=uri, timeout=self.busy_timeout,
                                 isolation_level=None, check_same_thread=False)
        try:
            opened.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self.readonly:
                opened.execute("PRAGMA journal_mode = WAL")
                opened.execute(f"PRAGMA synchronous = {self.synchronous}")
                self._create(opened)
        except BaseException:
            opened.close()
            raise
        with self._lock:
            self._readers[place] = opened
        return opened

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.executescript(";\n".join(SQLITE.schema(self.prefix)))

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write, durable when the block returns: group commit.

        Every thread of this process writes through one connection, each block inside a
        savepoint of the transaction that is open at the time; then one of the threads waiting
        commits the transaction for all of them (one fsync for many checkpoints). A block that
        raises rolls back to its savepoint only (the block that opened the transaction is
        alone in it, so it needs none: it rolls the transaction back).
        """
        group = self._group
        with group.lock:
            conn = self._writer()
            opener = not group.open  # alone in the transaction: no savepoint needed
            conn.execute("BEGIN IMMEDIATE" if opener else "SAVEPOINT w")
            group.open = True
            try:
                yield conn
            except BaseException:
                if opener:
                    conn.execute("ROLLBACK")
                    group.open = False
                else:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                raise
            if not opener:
                conn.execute("RELEASE w")
            batch = group.batch
        self._flush(batch)

    def _writer(self) -> sqlite3.Connection:
        group = self._group
        if group.conn is None or group.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._conn()  # creates the schema, in WAL
            group.conn, group.pid, group.open = conn, os.getpid(), False
            with self._lock:
                self._others.append(conn)
        return group.conn

    def _flush(self, batch: int) -> None:
        group = self._group
        with group.done:
            while group.committed < batch:
                if batch in group.failed:
                    raise group.failed[batch]
                if not group.committing:
                    group.committing = True
                    break
                group.done.wait()
            else:
                if batch in group.failed:
                    raise group.failed[batch]
                return
        error: BaseException | None = None
        with group.lock:
            committed = group.batch
            conn = group.conn
            try:
                if group.open and conn is not None:
                    conn.execute("COMMIT")
            except BaseException as exc:
                error = exc
                try:
                    if conn is not None:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            group.open = False
            group.batch += 1
        with group.done:
            if error is not None:
                group.failed[committed] = error
            group.committed = committed
            group.committing = False
            group.done.notify_all()
        if error is not None:
            raise error

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (for an ``Outbox`` table in the same file, or reads)."""
        return self._conn()

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            opened = [*self._readers.values(), *self._others]
            self._readers.clear()
            self._others.clear()
        for each in opened:
            with contextlib.suppress(sqlite3.Error):
                each.close()

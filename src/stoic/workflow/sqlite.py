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


class _Batch:
    """One transaction of group commit: its writers wait for its COMMIT."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Group:
    """The state of group commit: the shared write connection and its open transaction."""

    def __init__(self) -> None:
        self.lock = threading.Lock()          # the connection and its open transaction
        self.queue = threading.Lock()         # guards ``waiting``
        self.waiting = 0                      # threads queued for ``lock`` to write
        self.conn: sqlite3.Connection | None = None
        self.pid = 0
        self.batch: _Batch | None = None      # the open transaction (None: none is open)


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
        savepoint of the transaction that is open at the time (the block that opens the
        transaction is alone in it, so it needs none: on an error it rolls the transaction
        back). The last writer of a burst commits the transaction for everyone in it: a
        writer that finishes while other threads are queued to write leaves the COMMIT to
        them, so the writes that queued up during one COMMIT (SQLite allows no statement of
        the next transaction while it runs) share the next one, and its fsync.
        """
        group = self._group
        with group.queue:
            group.waiting += 1
        try:
            group.lock.acquire()
        except BaseException:  # interrupted while queued (KeyboardInterrupt in the main thread)
            self._leave_queue()
            raise
        batch: _Batch | None = None
        failed: BaseException | None = None
        try:
            with group.queue:
                group.waiting -= 1
            conn = self._writer()
            batch = group.batch
            opener = batch is None
            conn.execute("BEGIN IMMEDIATE" if opener else "SAVEPOINT w")
            if batch is None:
                batch = group.batch = _Batch()
            try:
                yield conn
            except BaseException as exc:
                failed = exc
                if opener:  # alone in the transaction: nothing of anyone else's to keep
                    group.batch = None
                    conn.execute("ROLLBACK")
                else:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                batch = None
            else:
                if not opener:
                    conn.execute("RELEASE w")
        finally:
            try:
                self._commit_if_last()
            finally:
                group.lock.release()
        if failed is not None:
            raise failed
        if batch is not None:
            batch.done.wait()
            if batch.error is not None:
                raise batch.error

    def _leave_queue(self) -> None:
        """A queued writer gives up before it got the connection: the writer before it may
        have left the transaction open for it, so commit it here unless another holds the
        connection (that one then sees the queue without this writer, and commits)."""
        group = self._group
        with group.queue:
            group.waiting -= 1
        if group.lock.acquire(blocking=False):
            try:
                self._commit_if_last()
            finally:
                group.lock.release()

    def _commit_if_last(self) -> None:
        """Commit the open transaction unless another writer is queued to join it (the
        caller holds the group's lock)."""
        group = self._group
        with group.queue:
            if group.waiting > 0:
                return
        batch, group.batch = group.batch, None
        if batch is None:
            return
        conn = group.conn
        try:
            if conn is not None:
                conn.execute("COMMIT")
        except BaseException as exc:
            batch.error = exc
            try:
                if conn is not None:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        batch.done.set()

    def _writer(self) -> sqlite3.Connection:
        group = self._group
        if group.conn is None or group.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._conn()  # creates the schema, in WAL
            group.conn, group.pid, group.batch = conn, os.getpid(), None
            with self._lock:
                self._others.append(conn)
        return group.conn

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

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

import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StaleLease, WorkflowNotFound
from .store import (
    ACTIVE,
    CLAIMABLE,
    DUE,
    TERMINAL,
    Claimed,
    Commit,
    Fence,
    Limits,
    NewRun,
    RunRecord,
    StepRecord,
    check_resolvable,
    check_retry,
    check_seconds,
    pick,
    settle,
)

__all__ = ["SQLiteStore"]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
#: A table prefix both SQL stores accept (it is spliced into SQL, so it is checked first).
TABLE_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
#: The columns ``run_from_row`` and ``step_from_row`` read, in order; the PostgreSQL store's
#: tables have the same ones.
RUN_COLUMNS = (
    "id, name, version, args, fingerprint, status, priority, ckey, due_at, deadline_at, owner,"
    " token, lease_until, cancel, result, error, created_at, started_at, updated_at,"
    " finished_at, recoveries, trace"
)
STEP_COLUMNS = (
    "seq, name, kind, key, status, attempts, started_at, result, error, due_at, finished_at, once"
)
_CLAIMABLE = ", ".join(f"'{s}'" for s in CLAIMABLE)
_DUE = ", ".join(f"'{s}'" for s in DUE)
_ACTIVE = ", ".join(f"'{s}'" for s in ACTIVE)
_TERMINAL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))


def run_from_row(row: Sequence[Any]) -> RunRecord:
    """A ``RunRecord`` from a row of ``RUN_COLUMNS`` (shared with the PostgreSQL store)."""
    return RunRecord(
        id=row[0], name=row[1], version=int(row[2]), args=row[3], fingerprint=row[4],
        status=row[5], priority=int(row[6]), key=row[7], due_at=float(row[8]),
        deadline_at=row[9], owner=row[10], token=int(row[11]), lease_until=row[12],
        cancel_requested=bool(row[13]), result=row[14], error=row[15], created_at=row[16],
        started_at=row[17], updated_at=row[18], finished_at=row[19], recoveries=int(row[20]),
        trace=row[21],
    )


def step_from_row(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        seq=int(row[0]), name=row[1], kind=row[2], key=row[3], status=row[4],
        attempts=int(row[5]), started_at=float(row[6]), result=row[7], error=row[8],
        due_at=row[9], finished_at=row[10], once=bool(row[11]),
    )


def step_params(run_id: str, s: StepRecord) -> tuple[Any, ...]:
    return (run_id, s.seq, s.name, s.kind, s.key, s.status, s.attempts, s.started_at, s.result,
            s.error, s.due_at, s.finished_at, int(s.once))


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


class SQLiteStore:
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
        if not isinstance(prefix, str) or not TABLE_PREFIX.match(prefix):
            raise ValueError(f"prefix must be a plain SQL identifier, got {prefix!r}")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        if readonly and not Path(path).exists():
            raise FileNotFoundError(f"no workflow database at {path}")
        self.path = path
        self.prefix = prefix
        self.synchronous = synchronous.upper()
        self.busy_timeout = check_seconds("busy_timeout", busy_timeout)
        self.readonly = bool(readonly)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._group = _Group()
        self._runs = f"{prefix}_runs"
        self._steps = f"{prefix}_steps"
        self._signals = f"{prefix}_signals"

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, prefix={self.prefix!r})"

    # --- connections ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self.readonly:
            uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self.readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                self._create(conn)
        except BaseException:
            conn.close()
            raise
        local.conn, local.pid = conn, os.getpid()
        with self._lock:
            self._connections.append(conn)
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.executescript(f"""
            CREATE TABLE IF NOT EXISTS {self._runs} (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
                kind TEXT NOT NULL, args TEXT NOT NULL, fingerprint TEXT NOT NULL,
                status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, ckey TEXT,
                due_at REAL NOT NULL, deadline_at REAL, owner TEXT,
                token INTEGER NOT NULL DEFAULT 0, lease_until REAL,
                cancel INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT,
                created_at REAL NOT NULL, started_at REAL, updated_at REAL NOT NULL,
                finished_at REAL, recoveries INTEGER NOT NULL DEFAULT 0, trace TEXT);
            CREATE INDEX IF NOT EXISTS {self._runs}_due ON {self._runs} (status, due_at);
            CREATE INDEX IF NOT EXISTS {self._runs}_created ON {self._runs} (created_at);
            CREATE TABLE IF NOT EXISTS {self._steps} (
                run_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,
                kind TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
                attempts INTEGER NOT NULL, started_at REAL NOT NULL, result TEXT, error TEXT,
                due_at REAL, finished_at REAL, once INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS {self._signals} (
                seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL, name TEXT NOT NULL,
                payload TEXT NOT NULL, sent_at REAL NOT NULL, taken INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS {self._signals}_run ON {self._signals} (run_id, name, seq);
        """)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write, durable when the block returns: group commit.

        Every thread of this process writes through one connection, each block inside a
        savepoint of the transaction that is open at the time; then one of the threads waiting
        commits the transaction for all of them (one fsync for many checkpoints). A block that
        raises rolls back to its savepoint only.
        """
        group = self._group
        with group.lock:
            conn = self._writer()
            if not group.open:
                conn.execute("BEGIN IMMEDIATE")
                group.open = True
            conn.execute("SAVEPOINT w")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
                raise
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
                self._connections.append(conn)
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

    # --- the engine's path ----------------------------------------------------------------

    def create(self, run: NewRun) -> RunRecord | None:
        with self._write() as conn:
            cur = conn.execute(
                f"INSERT INTO {self._runs} (id, name, version, kind, args, fingerprint, status,"
                " priority, ckey, due_at, deadline_at, created_at, updated_at, trace, owner,"
                " token, lease_until, started_at) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (run.id, run.name, run.version, f"{run.name}@{run.version}", run.args,
                 run.fingerprint, run.status, run.priority, run.key, run.created_at,
                 run.deadline_at, run.created_at, run.created_at, run.trace, run.owner,
                 run.token, run.lease_until, run.started_at),
            )
            if cur.rowcount == 1:
                return None
            row = conn.execute(f"SELECT {RUN_COLUMNS} FROM {self._runs} WHERE id = ?",
                               (run.id,)).fetchone()
        return run_from_row(row)

    def claim(
        self, owner: str, kinds: Sequence[str], now: float, lease: float, limit: int,
        limits: Mapping[str, Limits], only: str | None = None,
    ) -> list[Claimed]:
        if limit < 1 or not kinds:
            return []
        marks = ", ".join("?" * len(kinds))
        where = (f"kind IN ({marks}) AND ((status IN ({_CLAIMABLE}) AND due_at <= ?)"
                 " OR (status = 'running' AND lease_until < ?))")
        params: list[Any] = [*kinds, now, now]
        if only is not None:
            where += " AND id = ?"
            params.append(only)
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT id, name, ckey, started_at IS NOT NULL, status FROM {self._runs}"
                f" WHERE {where} ORDER BY priority DESC, due_at LIMIT ?",
                (*params, limit * 4 if limits else limit),
            ).fetchall()
            if not rows:
                return []

            def active(name: str, key: str | None) -> tuple[int, int]:
                total, per_key = conn.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(ckey IS ?), 0) FROM {self._runs} WHERE"
                    f" name = ? AND started_at IS NOT NULL AND status IN ({_ACTIVE})",
                    (key, name),
                ).fetchone()
                return int(total), int(per_key)

            chosen = pick([(r[0], r[1], r[2], bool(r[3])) for r in rows], limit, limits, active)
            was = {r[0]: r[4] for r in rows}
            claimed = []
            for run_id in chosen:
                recovered = was[run_id] == "running"
                row = conn.execute(
                    f"UPDATE {self._runs} SET status = 'running', owner = ?, token = token + 1,"
                    " lease_until = ?, updated_at = ?, started_at = COALESCE(started_at, ?),"
                    f" recoveries = recoveries + ? WHERE id = ? RETURNING {RUN_COLUMNS}",
                    (owner, now + lease, now, now, int(recovered), run_id),
                ).fetchone()
                run = run_from_row(row)
                steps = tuple(step_from_row(s) for s in conn.execute(
                    f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = ? ORDER BY seq",
                    (run_id,)))
                claimed.append(Claimed(run, steps, Fence(run_id, run.token, owner), recovered))
        return claimed

    def commit(self, fence: Fence, commit: Commit, now: float, lease: float) -> bool:
        with self._write() as conn:
            update = commit.run
            if update is None:
                row = conn.execute(
                    f"UPDATE {self._runs} SET lease_until = ?, updated_at = ? WHERE id = ? AND"
                    " token = ? AND status = 'running' RETURNING cancel",
                    (now + lease, now, fence.run_id, fence.token),
                ).fetchone()
            else:
                due = update.due_at
                if update.wake_on_signal is not None and conn.execute(
                    f"SELECT 1 FROM {self._signals} WHERE run_id = ? AND name = ? AND taken = 0"
                    " LIMIT 1", (fence.run_id, update.wake_on_signal),
                ).fetchone():
                    due = now
                row = conn.execute(
                    f"UPDATE {self._runs} SET status = ?, due_at = COALESCE(?, due_at),"
                    " result = COALESCE(?, result), error = ?, owner = NULL, lease_until = NULL,"
                    " updated_at = ?, finished_at = ? WHERE id = ? AND token = ? AND"
                    " status = 'running' RETURNING cancel",
                    (update.status, due, update.result, update.error, now,
                     now if update.status in TERMINAL else None, fence.run_id, fence.token),
                ).fetchone()
            if row is None:
                raise StaleLease(f"run {fence.run_id!r}: token {fence.token} is not current")
            if commit.steps:
                conn.executemany(
                    f"INSERT OR REPLACE INTO {self._steps} (run_id, {STEP_COLUMNS}) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [step_params(fence.run_id, s) for s in commit.steps],
                )
            for seq in commit.signals_taken:
                conn.execute(f"UPDATE {self._signals} SET taken = 1 WHERE seq = ?", (seq,))
            for outbox, topic, payload, msg_id in commit.outbox:
                outbox.add(conn, topic, payload, id=msg_id)
        return bool(row[0])

    def renew(self, fences: Sequence[Fence], now: float, lease: float) -> list[str]:
        if not fences:
            return []
        lost = []
        with self._write() as conn:
            for fence in fences:
                cur = conn.execute(
                    f"UPDATE {self._runs} SET lease_until = ? WHERE id = ? AND token = ? AND"
                    " status = 'running'", (now + lease, fence.run_id, fence.token))
                if cur.rowcount != 1:
                    lost.append(fence.run_id)
        return lost

    # --- reads ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        row = self._conn().execute(
            f"SELECT {RUN_COLUMNS} FROM {self._runs} WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else run_from_row(row)

    def steps(self, run_id: str) -> list[StepRecord]:
        return [step_from_row(r) for r in self._conn().execute(
            f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = ? ORDER BY seq",
            (run_id,))]

    def runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [run_from_row(r) for r in self._conn().execute(
            f"SELECT {RUN_COLUMNS} FROM {self._runs} {where} ORDER BY created_at DESC LIMIT ?",
            (*params, limit))]

    def next_signal(self, run_id: str, name: str) -> tuple[int, str] | None:
        row = self._conn().execute(
            f"SELECT seq, payload FROM {self._signals} WHERE run_id = ? AND name = ? AND"
            " taken = 0 ORDER BY seq LIMIT 1", (run_id, name)).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def next_due(self, kinds: Sequence[str], after: float) -> float | None:
        if not kinds:
            return None
        marks = ", ".join("?" * len(kinds))
        row = self._conn().execute(
            f"SELECT MIN(at) FROM (SELECT CASE WHEN status = 'running' THEN lease_until ELSE"
            f" due_at END AS at FROM {self._runs} WHERE kind IN ({marks}) AND status IN"
            f" ({_CLAIMABLE}, 'running')) WHERE at > ?", (*kinds, after)).fetchone()
        return None if row[0] is None else float(row[0])

    def count_due(self, now: float) -> dict[str, int]:
        return {name: int(n) for name, n in self._conn().execute(
            f"SELECT name, COUNT(*) FROM {self._runs} WHERE (status IN ({_DUE}) AND due_at <= ?)"
            " OR (status = 'running' AND lease_until < ?) GROUP BY name", (now, now))}

    # --- from outside the run -------------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: str, now: float) -> bool:
        with self._write() as conn:
            if conn.execute(f"SELECT 1 FROM {self._runs} WHERE id = ?", (run_id,)).fetchone() \
                    is None:
                return False
            conn.execute(f"INSERT INTO {self._signals} (run_id, name, payload, sent_at) VALUES"
                         " (?, ?, ?, ?)", (run_id, name, payload, now))
            conn.execute(f"UPDATE {self._runs} SET due_at = ? WHERE id = ? AND status ="
                         " 'waiting'", (now, run_id))
        return True

    def cancel(self, run_id: str, now: float) -> str | None:
        with self._write() as conn:
            row = conn.execute(f"SELECT status, started_at FROM {self._runs} WHERE id = ?",
                               (run_id,)).fetchone()
            if row is None:
                return None
            status, started = row
            if status in TERMINAL:
                return str(status)
            if started is None:
                status = "cancelled"
                conn.execute(f"UPDATE {self._runs} SET status = 'cancelled', cancel = 1,"
                             " finished_at = ?, updated_at = ? WHERE id = ?", (now, now, run_id))
            elif status == "running":
                conn.execute(f"UPDATE {self._runs} SET cancel = 1, updated_at = ? WHERE id = ?",
                             (now, run_id))
            else:
                status = "pending"
                conn.execute(f"UPDATE {self._runs} SET cancel = 1, status = 'pending',"
                             " due_at = ?, updated_at = ? WHERE id = ?", (now, now, run_id))
        return str(status)

    def park_unknown(self, kinds: Sequence[str], now: float, reason: str) -> list[str]:
        marks = ", ".join("?" * len(kinds)) or "NULL"
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE {self._runs} SET status = 'unknown_workflow', error = ?, owner = NULL,"
                f" lease_until = NULL, updated_at = ? WHERE kind NOT IN ({marks}) AND"
                f" ((status IN ({_CLAIMABLE}) AND status != 'unknown_workflow' AND due_at <= ?)"
                " OR (status = 'running' AND lease_until < ?)) RETURNING id",
                (reason, now, *kinds, now, now)).fetchall()
        return [r[0] for r in rows]

    def resolve(self, run_id: str, step: str, done: bool, result: str | None, now: float) -> None:
        with self._write() as conn:
            row = conn.execute(f"SELECT status FROM {self._runs} WHERE id = ?",
                               (run_id,)).fetchone()
            check_resolvable(run_id, None if row is None else row[0])
            found = conn.execute(
                f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = ? AND name = ?"
                " ORDER BY seq DESC LIMIT 1", (run_id, step)).fetchone()
            if found is None:
                raise ValueError(f"run {run_id!r} has no step {step!r}")
            settled = settle(step_from_row(found), done, result, now)
            conn.execute(f"INSERT OR REPLACE INTO {self._steps} (run_id, {STEP_COLUMNS}) VALUES"
                         " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", step_params(run_id, settled))
            conn.execute(f"UPDATE {self._runs} SET status = 'pending', due_at = ?, error = NULL,"
                         " updated_at = ? WHERE id = ?", (now, now, run_id))

    def retry(self, run_id: str, now: float) -> None:
        with self._write() as conn:
            row = conn.execute(f"SELECT {RUN_COLUMNS} FROM {self._runs} WHERE id = ?",
                               (run_id,)).fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow run {run_id!r}")
            steps = [step_from_row(s) for s in conn.execute(
                f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = ?", (run_id,))]
            check_retry(run_from_row(row), steps)
            conn.execute(f"UPDATE {self._steps} SET status = 'retrying', due_at = ? WHERE"
                         " run_id = ? AND status = 'failed'", (now, run_id))
            conn.execute(f"UPDATE {self._runs} SET status = 'pending', due_at = ?, error = NULL,"
                         " result = NULL, finished_at = NULL, updated_at = ? WHERE id = ?",
                         (now, now, run_id))

    def purge(self, older_than: float, now: float) -> int:
        with self._write() as conn:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM {self._runs} WHERE status IN ({_TERMINAL}) AND"
                " COALESCE(finished_at, updated_at) < ?", (now - older_than,))]
            for run_id in ids:
                conn.execute(f"DELETE FROM {self._steps} WHERE run_id = ?", (run_id,))
                conn.execute(f"DELETE FROM {self._signals} WHERE run_id = ?", (run_id,))
                conn.execute(f"DELETE FROM {self._runs} WHERE id = ?", (run_id,))
        return len(ids)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass

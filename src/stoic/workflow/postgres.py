"""The PostgreSQL workflow store: psycopg 3 with a connection pool, for many worker machines.

Claims take due runs with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent workers never
wait on each other's rows; a name with a concurrency limit is claimed under a transaction
advisory lock, so two workers cannot both fill its last slot. Every checkpoint is one
transaction opened by the fenced ``UPDATE ... WHERE token = %s``: the row lock it takes also
orders it against a concurrent claim, so a stale worker either commits before the takeover
or writes nothing. Starts, signals, cancels and suspensions ``NOTIFY`` a channel that
``listen`` turns into an immediate wake-up of idle workers (``LISTEN``), instead of a poll.

Tables are ``<prefix>_runs``, ``<prefix>_steps`` and ``<prefix>_signals``, created on first
use. Needs the ``stoic[postgres]`` extra (psycopg >= 3.1, psycopg-pool).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import StaleLease, WorkflowNotFound
from .sqlite import (
    RUN_COLUMNS,
    STEP_COLUMNS,
    TABLE_PREFIX,
    run_from_row,
    step_from_row,
    step_params,
)
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
    pick,
    settle,
)

__all__ = ["PostgresStore"]

_log = logging.getLogger("stoic.workflow")
_CLAIMABLE = list(CLAIMABLE)
_ACTIVE = list(ACTIVE)
_TERMINAL = sorted(TERMINAL)


class PostgresStore:
    """Workflow runs in PostgreSQL.

    Args:
        dsn: a libpq connection string or URL.
        prefix: table name prefix.
        min_size, max_size: connection pool bounds.
    """

    def __init__(self, dsn: str, *, prefix: str = "stoic_wf", min_size: int = 1,
                 max_size: int = 16) -> None:
        if not isinstance(prefix, str) or not TABLE_PREFIX.match(prefix):
            raise ValueError(f"prefix must be a plain SQL identifier, got {prefix!r}")
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < max(
                1, min_size):
            raise ValueError(f"max_size must be an int >= max(1, min_size), got {max_size!r}")
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PostgresStore needs the postgres extra: pip install 'stoic[postgres]'") from exc
        self.dsn = dsn
        self.prefix = prefix
        self.min_size, self.max_size = min_size, max_size
        self.channel = f"{prefix}_due"
        self._runs, self._steps, self._signals = (f"{prefix}_runs", f"{prefix}_steps",
                                                  f"{prefix}_signals")
        self._lock = threading.Lock()
        self._pool: Any = None
        self._pid = os.getpid()
        self._listeners: list[threading.Event] = []

    def __repr__(self) -> str:
        return f"PostgresStore(prefix={self.prefix!r})"

    # --- connections ----------------------------------------------------------------------

    def _get_pool(self) -> Any:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                from psycopg_pool import ConnectionPool

                pool = ConnectionPool(self.dsn, min_size=self.min_size, max_size=self.max_size,
                                      open=True, name=f"stoic-workflow-{self.prefix}")
                with pool.connection() as conn:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.prefix,))
                    for statement in self._ddl():
                        conn.execute(statement)
                self._pool, self._pid = pool, os.getpid()
            return self._pool

    def _ddl(self) -> list[str]:
        r, s, g = self._runs, self._steps, self._signals
        return [
            f"CREATE TABLE IF NOT EXISTS {r} (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " version INTEGER NOT NULL, kind TEXT NOT NULL, args TEXT NOT NULL,"
            " fingerprint TEXT NOT NULL, status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,"
            " ckey TEXT, due_at DOUBLE PRECISION NOT NULL, deadline_at DOUBLE PRECISION,"
            " owner TEXT, token BIGINT NOT NULL DEFAULT 0, lease_until DOUBLE PRECISION,"
            " cancel SMALLINT NOT NULL DEFAULT 0, result TEXT, error TEXT,"
            " created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION,"
            " updated_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION,"
            " recoveries INTEGER NOT NULL DEFAULT 0, trace TEXT)",
            f"CREATE INDEX IF NOT EXISTS {r}_due ON {r} (status, due_at)",
            f"CREATE INDEX IF NOT EXISTS {r}_created ON {r} (created_at)",
            f"CREATE TABLE IF NOT EXISTS {s} (run_id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " name TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,"
            " attempts INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL, result TEXT,"
            " error TEXT, due_at DOUBLE PRECISION, finished_at DOUBLE PRECISION,"
            " once SMALLINT NOT NULL DEFAULT 0, PRIMARY KEY (run_id, seq))",
            f"CREATE TABLE IF NOT EXISTS {g} (seq BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL,"
            " name TEXT NOT NULL, payload TEXT NOT NULL, sent_at DOUBLE PRECISION NOT NULL,"
            " taken SMALLINT NOT NULL DEFAULT 0)",
            f"CREATE INDEX IF NOT EXISTS {g}_run ON {g} (run_id, name, seq)",
        ]

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A connection in one transaction: committed on success, rolled back on error."""
        with self._get_pool().connection() as conn, conn.transaction():
            yield conn

    def connection(self) -> Any:
        """A pooled connection as a context manager (for an ``Outbox`` table, or reads)."""
        return self._get_pool().connection()

    def drop(self) -> None:
        """Drop this store's tables (tests with a unique prefix clean up with it)."""
        with self._tx() as conn:
            for table in (self._signals, self._steps, self._runs):
                conn.execute(f"DROP TABLE IF EXISTS {table}")

    def _notify(self, conn: Any) -> None:
        conn.execute(f"NOTIFY {self.channel}")

    # --- the engine's path ----------------------------------------------------------------

    def create(self, run: NewRun) -> RunRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                f"INSERT INTO {self._runs} (id, name, version, kind, args, fingerprint, status,"
                " priority, ckey, due_at, deadline_at, created_at, updated_at, trace, owner,"
                " token, lease_until, started_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (run.id, run.name, run.version, f"{run.name}@{run.version}", run.args,
                 run.fingerprint, run.status, run.priority, run.key, run.created_at,
                 run.deadline_at, run.created_at, run.created_at, run.trace, run.owner,
                 run.token, run.lease_until, run.started_at),
            ).fetchone()
            if row is not None:
                self._notify(conn)
                return None
            found = conn.execute(f"SELECT {RUN_COLUMNS} FROM {self._runs} WHERE id = %s",
                                 (run.id,)).fetchone()
        return run_from_row(found)

    def claim(
        self, owner: str, kinds: Sequence[str], now: float, lease: float, limit: int,
        limits: Mapping[str, Limits], only: str | None = None,
    ) -> list[Claimed]:
        if limit < 1 or not kinds:
            return []
        where = ("kind = ANY(%s) AND ((status = ANY(%s) AND due_at <= %s)"
                 " OR (status = 'running' AND lease_until < %s))")
        params: list[Any] = [list(kinds), _CLAIMABLE, now, now]
        if only is not None:
            where += " AND id = %s"
            params.append(only)
        with self._tx() as conn:
            if limits:  # counting slots must not race another worker's claim
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                             (f"{self.prefix}:claim",))
            rows = conn.execute(
                f"SELECT id, name, ckey, started_at IS NOT NULL, status FROM {self._runs}"
                f" WHERE {where} ORDER BY priority DESC, due_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (*params, limit * 4 if limits else limit),
            ).fetchall()
            if not rows:
                return []

            def active(name: str, key: str | None) -> tuple[int, int]:
                total, per_key = conn.execute(
                    f"SELECT COUNT(*), COUNT(*) FILTER (WHERE ckey IS NOT DISTINCT FROM %s)"
                    f" FROM {self._runs} WHERE name = %s AND started_at IS NOT NULL AND"
                    " status = ANY(%s)", (key, name, _ACTIVE)).fetchone()
                return int(total), int(per_key)

            chosen = pick([(r[0], r[1], r[2], bool(r[3])) for r in rows], limit, limits, active)
            was = {r[0]: r[4] for r in rows}
            claimed = []
            for run_id in chosen:
                recovered = was[run_id] == "running"
                row = conn.execute(
                    f"UPDATE {self._runs} SET status = 'running', owner = %s, token = token + 1,"
                    " lease_until = %s, updated_at = %s, started_at = COALESCE(started_at, %s),"
                    f" recoveries = recoveries + %s WHERE id = %s RETURNING {RUN_COLUMNS}",
                    (owner, now + lease, now, now, int(recovered), run_id),
                ).fetchone()
                run = run_from_row(row)
                steps = tuple(step_from_row(s) for s in conn.execute(
                    f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = %s ORDER BY seq",
                    (run_id,)).fetchall())
                claimed.append(Claimed(run, steps, Fence(run_id, run.token, owner), recovered))
        return claimed

    def commit(self, fence: Fence, commit: Commit, now: float, lease: float) -> bool:
        # One pipeline: every statement is sent at once and the fence is checked at the end;
        # a stale token raises inside the transaction, which rolls all of it back.
        update = commit.run
        with self._tx() as conn:
            with conn.pipeline():
                if update is None:
                    fenced = conn.execute(
                        f"UPDATE {self._runs} SET lease_until = %s, updated_at = %s WHERE"
                        " id = %s AND token = %s AND status = 'running' RETURNING cancel",
                        (now + lease, now, fence.run_id, fence.token))
                else:
                    fenced = conn.execute(
                        f"UPDATE {self._runs} SET status = %s, due_at = COALESCE(%s, due_at),"
                        " result = COALESCE(%s, result), error = %s, owner = NULL,"
                        " lease_until = NULL, updated_at = %s, finished_at = %s WHERE id = %s"
                        " AND token = %s AND status = 'running' RETURNING cancel",
                        (update.status, update.due_at, update.result, update.error, now,
                         now if update.status in TERMINAL else None, fence.run_id,
                         fence.token))
                    if update.wake_on_signal is not None:
                        conn.execute(
                            f"UPDATE {self._runs} SET due_at = %s WHERE id = %s AND EXISTS"
                            f" (SELECT 1 FROM {self._signals} WHERE run_id = %s AND name = %s"
                            " AND taken = 0)",
                            (now, fence.run_id, fence.run_id, update.wake_on_signal))
                if commit.steps:
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"INSERT INTO {self._steps} (run_id, {STEP_COLUMNS}) VALUES (%s,"
                            " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT"
                            " (run_id, seq) DO UPDATE SET name = excluded.name,"
                            " kind = excluded.kind, key = excluded.key,"
                            " status = excluded.status, attempts = excluded.attempts,"
                            " started_at = excluded.started_at, result = excluded.result,"
                            " error = excluded.error, due_at = excluded.due_at,"
                            " finished_at = excluded.finished_at, once = excluded.once",
                            [step_params(fence.run_id, s) for s in commit.steps])
                if commit.signals_taken:
                    conn.execute(f"UPDATE {self._signals} SET taken = 1 WHERE seq = ANY(%s)",
                                 (commit.signals_taken,))
                for outbox, topic, payload, msg_id in commit.outbox:
                    outbox.add(conn, topic, payload, id=msg_id)
                if update is not None and update.status not in TERMINAL:
                    self._notify(conn)
            row = fenced.fetchone()
            if row is None:
                raise StaleLease(f"run {fence.run_id!r}: token {fence.token} is not current")
        return bool(row[0])

    def renew(self, fences: Sequence[Fence], now: float, lease: float) -> list[str]:
        if not fences:
            return []
        with self._tx() as conn:
            rows = conn.execute(
                f"UPDATE {self._runs} AS r SET lease_until = %s FROM unnest(%s::text[],"
                " %s::bigint[]) AS f(id, token) WHERE r.id = f.id AND r.token = f.token AND"
                " r.status = 'running' RETURNING r.id",
                (now + lease, [f.run_id for f in fences], [f.token for f in fences]),
            ).fetchall()
        kept = {r[0] for r in rows}
        return [f.run_id for f in fences if f.run_id not in kept]

    # --- reads ----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._tx() as conn:
            return list(conn.execute(sql, params).fetchall())

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM {self._runs} WHERE id = %s", (run_id,))
        return run_from_row(rows[0]) if rows else None

    def steps(self, run_id: str) -> list[StepRecord]:
        return [step_from_row(r) for r in self._read(
            f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = %s ORDER BY seq",
            (run_id,))]

    def runs(self, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        where, params = ("WHERE status = %s", (status,)) if status else ("", ())
        return [run_from_row(r) for r in self._read(
            f"SELECT {RUN_COLUMNS} FROM {self._runs} {where} ORDER BY created_at DESC LIMIT %s",
            (*params, limit))]

    def next_signal(self, run_id: str, name: str) -> tuple[int, str] | None:
        rows = self._read(
            f"SELECT seq, payload FROM {self._signals} WHERE run_id = %s AND name = %s AND"
            " taken = 0 ORDER BY seq LIMIT 1", (run_id, name))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def next_due(self, kinds: Sequence[str], after: float) -> float | None:
        if not kinds:
            return None
        rows = self._read(
            f"SELECT MIN(CASE WHEN status = 'running' THEN lease_until ELSE due_at END) FROM"
            f" {self._runs} WHERE kind = ANY(%s) AND (status = ANY(%s) OR status = 'running')"
            " AND (CASE WHEN status = 'running' THEN lease_until ELSE due_at END) > %s",
            (list(kinds), _CLAIMABLE, after))
        return None if rows[0][0] is None else float(rows[0][0])

    def count_due(self, now: float) -> dict[str, int]:
        rows = self._read(
            f"SELECT name, COUNT(*) FROM {self._runs} WHERE (status = ANY(%s) AND due_at <= %s)"
            " OR (status = 'running' AND lease_until < %s) GROUP BY name", (list(DUE), now, now))
        return {name: int(n) for name, n in rows}

    # --- from outside the run -------------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: str, now: float) -> bool:
        with self._tx() as conn:
            if conn.execute(f"SELECT 1 FROM {self._runs} WHERE id = %s",
                            (run_id,)).fetchone() is None:
                return False
            conn.execute(f"INSERT INTO {self._signals} (run_id, name, payload, sent_at) VALUES"
                         " (%s, %s, %s, %s)", (run_id, name, payload, now))
            conn.execute(f"UPDATE {self._runs} SET due_at = %s WHERE id = %s AND status ="
                         " 'waiting'", (now, run_id))
            self._notify(conn)
        return True

    def cancel(self, run_id: str, now: float) -> str | None:
        with self._tx() as conn:
            row = conn.execute(f"SELECT status, started_at FROM {self._runs} WHERE id = %s"
                               " FOR UPDATE", (run_id,)).fetchone()
            if row is None:
                return None
            status, started = row
            if status in TERMINAL:
                return str(status)
            if started is None:
                status = "cancelled"
                conn.execute(f"UPDATE {self._runs} SET status = 'cancelled', cancel = 1,"
                             " finished_at = %s, updated_at = %s WHERE id = %s",
                             (now, now, run_id))
            elif status == "running":
                conn.execute(f"UPDATE {self._runs} SET cancel = 1, updated_at = %s WHERE"
                             " id = %s", (now, run_id))
            else:
                status = "pending"
                conn.execute(f"UPDATE {self._runs} SET cancel = 1, status = 'pending',"
                             " due_at = %s, updated_at = %s WHERE id = %s", (now, now, run_id))
                self._notify(conn)
        return str(status)

    def park_unknown(self, kinds: Sequence[str], now: float, reason: str) -> list[str]:
        with self._tx() as conn:
            rows = conn.execute(
                f"UPDATE {self._runs} SET status = 'unknown_workflow', error = %s, owner = NULL,"
                " lease_until = NULL, updated_at = %s WHERE NOT (kind = ANY(%s)) AND"
                " ((status = ANY(%s) AND status != 'unknown_workflow' AND due_at <= %s)"
                " OR (status = 'running' AND lease_until < %s)) RETURNING id",
                (reason, now, list(kinds), _CLAIMABLE, now, now)).fetchall()
        return [r[0] for r in rows]

    def resolve(self, run_id: str, step: str, done: bool, result: str | None, now: float) -> None:
        with self._tx() as conn:
            row = conn.execute(f"SELECT status FROM {self._runs} WHERE id = %s FOR UPDATE",
                               (run_id,)).fetchone()
            check_resolvable(run_id, None if row is None else row[0])
            found = conn.execute(
                f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = %s AND name = %s"
                " ORDER BY seq DESC LIMIT 1", (run_id, step)).fetchone()
            if found is None:
                raise ValueError(f"run {run_id!r} has no step {step!r}")
            s = settle(step_from_row(found), done, result, now)
            conn.execute(f"UPDATE {self._steps} SET status = %s, result = %s, error = %s,"
                         " finished_at = %s WHERE run_id = %s AND seq = %s",
                         (s.status, s.result, s.error, s.finished_at, run_id, s.seq))
            conn.execute(f"UPDATE {self._runs} SET status = 'pending', due_at = %s,"
                         " error = NULL, updated_at = %s WHERE id = %s", (now, now, run_id))
            self._notify(conn)

    def retry(self, run_id: str, now: float) -> None:
        with self._tx() as conn:
            row = conn.execute(f"SELECT {RUN_COLUMNS} FROM {self._runs} WHERE id = %s"
                               " FOR UPDATE", (run_id,)).fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow run {run_id!r}")
            steps = [step_from_row(s) for s in conn.execute(
                f"SELECT {STEP_COLUMNS} FROM {self._steps} WHERE run_id = %s",
                (run_id,)).fetchall()]
            check_retry(run_from_row(row), steps)
            conn.execute(f"UPDATE {self._steps} SET status = 'retrying', due_at = %s WHERE"
                         " run_id = %s AND status = 'failed'", (now, run_id))
            conn.execute(f"UPDATE {self._runs} SET status = 'pending', due_at = %s,"
                         " error = NULL, result = NULL, finished_at = NULL, updated_at = %s"
                         " WHERE id = %s", (now, now, run_id))
            self._notify(conn)

    def purge(self, older_than: float, now: float) -> int:
        with self._tx() as conn:
            ids = [r[0] for r in conn.execute(
                f"DELETE FROM {self._runs} WHERE status = ANY(%s) AND"
                " COALESCE(finished_at, updated_at) < %s RETURNING id",
                (_TERMINAL, now - older_than)).fetchall()]
            conn.execute(f"DELETE FROM {self._steps} WHERE run_id = ANY(%s)", (ids,))
            conn.execute(f"DELETE FROM {self._signals} WHERE run_id = ANY(%s)", (ids,))
        return len(ids)

    # --- wake-ups -------------------------------------------------------------------------

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` whenever a run may have become due (a NOTIFY on the channel), from
        a background thread with its own connection; returns a function that stops it."""
        import psycopg

        stopped = threading.Event()

        def loop() -> None:
            while not stopped.is_set():
                try:
                    with psycopg.connect(self.dsn, autocommit=True) as conn:
                        conn.execute(f"LISTEN {self.channel}")
                        while not stopped.is_set():
                            for _ in conn.notifies(timeout=0.5, stop_after=1):
                                wake()
                except Exception:  # the server went away: reconnect after a pause
                    _log.warning("workflow store: LISTEN connection lost; reconnecting")
                    stopped.wait(1.0)

        threading.Thread(target=loop, name="stoic-workflow-listen", daemon=True).start()
        return stopped.set

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

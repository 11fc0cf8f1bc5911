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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .dialect import ASSERT_FENCE, POSTGRES, STEP_COLUMNS, step_params
from .errors import StaleLease
from .sql import SQLStore
from .store import TERMINAL, Commit, Fence, StepRecord

__all__ = ["PostgresStore"]

_log = logging.getLogger("stoic.workflow")


class PostgresStore(SQLStore):
    """Workflow runs in PostgreSQL.

    Args:
        dsn: a libpq connection string or URL.
        prefix: table name prefix.
        min_size, max_size: connection pool bounds.
    """

    dialect = POSTGRES

    def __init__(self, dsn: str, *, prefix: str = "stoic_wf", min_size: int = 1,
                 max_size: int = 16) -> None:
        super().__init__(prefix)
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < max(
                1, min_size):
            raise ValueError(f"max_size must be an int >= max(1, min_size), got {max_size!r}")
        try:
            import psycopg
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PostgresStore needs the postgres extra: pip install 'stoic[postgres]'") from exc
        self.dsn = dsn
        self.min_size, self.max_size = min_size, max_size
        self.channel = f"{prefix}_due"
        self._lock = threading.Lock()
        self._pool: Any = None
        self._pid = os.getpid()
        self._listeners: list[threading.Event] = []
        self._fence_failed = (psycopg.errors.DivisionByZero,)
        self._step_ctes: dict[int, str] = {}   # by number of step records

    def _steps_cte(self, count: int) -> str:
        """``, s AS (INSERT ...)``: ``count`` step records, written only if the fence ``f``
        matched (scalar parameters with their types: cheaper to send than arrays)."""
        cte = self._step_ctes.get(count)
        if cte is None:
            one = ("(%s::text, %s::int, %s::text, %s::text, %s::text, %s::text, %s::int,"
                   " %s::float8, %s::text, %s::text, %s::float8, %s::float8, %s::smallint)")
            put = self._sql.put_step
            cte = (f", s AS (INSERT INTO {self._sql.steps} (run_id, {STEP_COLUMNS}) SELECT *"
                   f" FROM (VALUES {', '.join([one] * count)}) AS x WHERE EXISTS (SELECT 1"
                   f" FROM f){put[put.index(' ON CONFLICT'):]})") if count else ""
            self._step_ctes[count] = cte
        return cte

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

                # the pool hands its connections out in turn, and the store runs a few
                # statements over and over: each is prepared on its first use on a connection
                # (psycopg waits for five), not after five uses on each of them
                pool = ConnectionPool(self.dsn, min_size=self.min_size, max_size=self.max_size,
                                      open=True, name=f"stoic-workflow-{self.prefix}",
                                      kwargs={"prepare_threshold": 0})
                with pool.connection() as conn:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.prefix,))
                    for statement in POSTGRES.schema(self.prefix):
                        conn.execute(statement)
                self._pool, self._pid = pool, os.getpid()
            return self._pool

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
            for table in (self._sql.signals, self._sql.steps, self._sql.runs):
                conn.execute(f"DROP TABLE IF EXISTS {table}")

    def _notify(self, conn: Any) -> None:
        conn.execute(f"NOTIFY {self.channel}")

    @contextmanager
    def _autocommit(self) -> Iterator[Any]:
        """A pooled connection in autocommit mode: each statement is its own transaction."""
        with self._get_pool().connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                if not conn.broken:
                    conn.autocommit = False

    def commit(self, fence: Fence, commit: Commit, now: float, lease: float) -> bool:
        """A step boundary or a run's end is one statement, in one round trip: the fenced
        UPDATE and the step records as CTEs of one query (atomic as any statement), which
        fails when the fence matched no row. Anything else takes the general path."""
        update = commit.run
        if commit.signals_taken or commit.outbox or (update is not None and (
                update.wake_on_signal is not None or update.status not in TERMINAL)):
            return super().commit(fence, commit, now, lease)
        sql = self._sql
        if update is None:
            fenced, params = sql.touch_update, [now + lease, now, fence.run_id, fence.token]
        else:
            fenced, params = sql.leave_update, [
                update.status, update.due_at, update.result, update.error, now, now,
                fence.run_id, fence.token]
        for step in commit.steps:
            params += step_params(fence.run_id, step)
        query = f"WITH f AS ({fenced}){self._steps_cte(len(commit.steps))} {ASSERT_FENCE}"
        try:
            with self._autocommit() as conn:
                row = conn.execute(query, params).fetchone()
        except self._fence_failed as exc:
            raise StaleLease(f"run {fence.run_id!r}: token {fence.token} is not current") from exc
        return bool(row[0])

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write in pipeline mode: its statements, BEGIN and COMMIT go to the server
        together (one round trip unless the block reads a result before its end). Returns
        once the COMMIT succeeded (``synchronous_commit`` as the server sets it)."""
        with self._get_pool().connection() as conn, conn.pipeline():
            yield conn
            conn.commit()

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._autocommit() as conn:
            return list(conn.execute(sql, params).fetchall())

    _one = _read  # in autocommit a statement is its own transaction, committed on return

    def _claim_lock(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.prefix}:claim",))

    def _put_steps(self, conn: Any, run_id: str, steps: Sequence[StepRecord]) -> None:
        with conn.cursor() as cur:
            cur.executemany(self._sql.put_step, [step_params(run_id, s) for s in steps])

    def renew(self, fences: Sequence[Fence], now: float, lease: float) -> list[str]:
        if not fences:
            return []
        with self._tx() as conn:
            rows = conn.execute(
                f"UPDATE {self._sql.runs} AS r SET lease_until = %s FROM unnest(%s::text[],"
                " %s::bigint[]) AS f(id, token) WHERE r.id = f.id AND r.token = f.token AND"
                " r.status = 'running' RETURNING r.id",
                (now + lease, [f.run_id for f in fences], [f.token for f in fences]),
            ).fetchall()
        kept = {r[0] for r in rows}
        return [f.run_id for f in fences if f.run_id not in kept]

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

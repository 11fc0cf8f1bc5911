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

from .dialect import POSTGRES, step_params
from .sql import SQLStore
from .store import Fence, StepRecord

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
            import psycopg  # noqa: F401
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

    _write = _tx

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._tx() as conn:
            return list(conn.execute(sql, params).fetchall())

    def _claim_lock(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.prefix}:claim",))

    def _batch(self, conn: Any) -> Any:
        return conn.pipeline()

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

"""Idempotency records in PostgreSQL, through psycopg 3 with a connection pool (sync and async).

A claim first reads the row: a replay or an in-flight answer is one plain ``SELECT``. Only
when no live record is there does it run ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE
<the old record is dead> RETURNING``, joined in a CTE with a read of the row it replaced.
PostgreSQL's unique index serialises concurrent claims: exactly one gets its own token back.
(Upserting first would lock the existing row on every replay, and a row lock is a WAL write
that waits for a disk flush.) Complete, release and extend are
single ``UPDATE``/``DELETE`` statements guarded by the owner's token.

Dead connections: a pooled connection whose server backend went away (a restart, a failover,
``pg_terminate_backend``, an idle timeout in a proxy) is found on checkout, where the pool
checks each connection before handing it out (``check_connections``), and thrown away. A
connection that dies while a statement runs is retried once on a fresh connection, for
every operation: ``complete`` and ``release`` so a finished call never leaves its key in
flight for a whole lease, and ``claim`` because it keeps its token across the retry (a
claim whose commit was lost with the connection finds its own token on the retry and is
won, not refused). Other errors are never retried.

The table is created on first use (``CREATE TABLE IF NOT EXISTS`` under an advisory lock so
concurrent first users do not collide), or ahead of time with ``stoic idempotency migrate``
for deployments whose application role may not create tables (pass ``create_table=False``).

Deadlines: under ``stoic.deadline`` each statement runs with PostgreSQL's
``statement_timeout`` set to the time left (``stoic.integrations.psycopg``'s connections, one
extra ``SET`` per statement, and one to put the default back on the first statement without a
deadline), which also bounds waits for row and table locks; the wait for a pooled connection
is bounded by the time left too. When the deadline ends either, the caller gets
``stoic.DeadlineExceeded`` chained to psycopg's error. Every statement commits on its own
(autocommit), so one cancelled wrote nothing.

Needs the ``stoic[postgres]`` extra (psycopg >= 3.1, psycopg-pool); imported when first used.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import clock
from ..integrations._deadlines import check_started, deadline_ran_out, outside_deadline
from .store import (
    SQL_COLUMNS,
    SQL_COMPLETED,
    SQL_IN_FLIGHT,
    BaseStore,
    Claim,
    Record,
    check_claim,
    check_key,
    check_seconds,
    check_table,
    live_answer,
    new_token,
    record_from_row,
    report_corrupted,
    won_claim,
)

__all__ = ["PostgresStore", "create_table_sql"]

T = TypeVar("T")

_log = logging.getLogger("stoic.idempotency")


def _lost(exc: Exception, conn: Any) -> bool:
    """Whether ``exc`` means the connection died (retry elsewhere), not that the statement
    failed: an ``OperationalError`` that left its connection broken or closed."""
    import psycopg

    return (isinstance(exc, psycopg.OperationalError) and conn is not None
            and bool(conn.broken or conn.closed))


_WHAT = "a PostgresStore operation"


def _ran_out(exc: Exception) -> BaseException | None:
    """``DeadlineExceeded`` when the wait for a pooled connection ended with the deadline."""
    from psycopg_pool import PoolTimeout

    return deadline_ran_out(exc, "the wait for a connection") if isinstance(
        exc, PoolTimeout) else None


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


class PostgresStore(BaseStore):
    """Idempotency records in a PostgreSQL table.

    Args:
        dsn: a libpq connection string or URL (``postgresql://user@host/db``).
        table: the table name (created on first use unless ``create_table=False``).
        min_size, max_size: connection pool bounds, per pool (sync and async have one each).
        create_table: create the table on first use.
        connect_timeout: seconds to wait for a connection, new (libpq's ``connect_timeout``,
            at least 2) or from a full pool; then ``psycopg_pool.PoolTimeout``. 30 s suits a
            server; a command-line tool wants about 5.
        check_connections: test each pooled connection as it is handed out, so a dead one is
            replaced before use. It adds one round trip to every operation (most felt by
            a replay, otherwise one ``SELECT``). False skips the test: a dead
            connection is then found by failing, and the operation is retried once after the
            pool has tested and replaced its idle connections.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "stoic_idempotency",
        min_size: int = 1,
        max_size: int = 10,
        create_table: bool = True,
        connect_timeout: float = 30.0,
        check_connections: bool = True,
    ) -> None:
        check_table(table)
        self.connect_timeout = check_seconds("connect_timeout", connect_timeout)
        self.check_connections = bool(check_connections)
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size!r}")
        if max_size < max(1, min_size):
            raise ValueError(f"max_size must be >= max(1, min_size), got {max_size!r}")
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PostgresStore needs the postgres extra: pip install 'stoic[postgres]'"
            ) from exc
        self.dsn = dsn
        self.table = table
        self.min_size, self.max_size = min_size, max_size
        self.create_table = create_table
        self._lock = threading.Lock()
        self._pool: Any = None
        self._pid = os.getpid()
        self._apool: Any = None
        self._apool_loop: asyncio.AbstractEventLoop | None = None
        self._ready = not create_table
        t = table
        self._sql_claim = (
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
        self._sql_complete = (
            f"UPDATE {t} SET state = {SQL_COMPLETED}, response = %s, expires_at = %s,"
            f" lease_until = %s WHERE key = %s AND token = %s AND state = {SQL_IN_FLIGHT}"
            f" AND expires_at > %s"
        )
        self._sql_release = (
            f"DELETE FROM {t} WHERE key = %s AND token = %s AND state = {SQL_IN_FLIGHT}"
            f" AND expires_at > %s"
        )
        self._sql_extend = (
            f"UPDATE {t} SET lease_until = %s, expires_at = greatest(expires_at, %s)"
            f" WHERE key = %s AND token = %s AND state = {SQL_IN_FLIGHT} AND expires_at > %s"
        )
        self._sql_get = (
            f"SELECT {SQL_COLUMNS} FROM {t} WHERE key = %s AND expires_at > %s"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = %s"
        self._sql_purge = f"DELETE FROM {t} WHERE expires_at <= %s"
        self._lock_id = zlib.crc32(f"stoic:{t}".encode())

    def __repr__(self) -> str:
        return f"PostgresStore(table={self.table!r})"

    # -- pools -----------------------------------------------------------------------------

    def _sync_pool(self) -> Any:
        pool = self._pool
        if pool is not None and self._ready and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is not None and self._pid != os.getpid():
                # A forked child (gunicorn --preload, multiprocessing) must not share the
                # parent's sockets: drop the inherited pool without closing its connections.
                self._pool = None
            self._pid = os.getpid()
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                from ..integrations.psycopg import DeadlineConnection

                self._pool = ConnectionPool(
                    self.dsn, min_size=self.min_size, max_size=self.max_size, open=True,
                    connection_class=DeadlineConnection,
                    kwargs=self._connection_options(), timeout=self.connect_timeout,
                    check=ConnectionPool.check_connection if self.check_connections else None,
                )
            if not self._ready:
                with self._pool.connection(self._wait()) as conn, conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
                    conn.execute(create_table_sql(self.table))
                self._ready = True
            return self._pool

    async def _async_pool(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._apool is not None and self._apool_loop is loop and self._ready:
            return self._apool
        if self._apool is None or self._apool_loop is not loop:
            from psycopg_pool import AsyncConnectionPool

            from ..integrations.psycopg import AsyncDeadlineConnection

            pool = AsyncConnectionPool(
                self.dsn, min_size=self.min_size, max_size=self.max_size, open=False,
                connection_class=AsyncDeadlineConnection,
                kwargs=self._connection_options(), timeout=self.connect_timeout,
                check=AsyncConnectionPool.check_connection if self.check_connections else None,
            )
            await pool.open()
            self._apool, self._apool_loop = pool, loop
        if not self._ready:
            async with self._apool.connection(self._wait()) as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
                await conn.execute(create_table_sql(self.table))
            self._ready = True
        return self._apool

    def _wait(self) -> float | None:
        """How long to wait for a pooled connection: the pool's timeout (None), or less
        when the caller's deadline comes first; ``DeadlineExceeded`` once it has passed."""
        left = check_started(_WHAT)
        return None if left is None or left >= self.connect_timeout else left

    def _connection_options(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": max(2, math.ceil(self.connect_timeout))}

    def migrate(self) -> None:
        """Create the table and index now (idempotent)."""
        self._ready = False
        self._sync_pool()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    async def aclose(self) -> None:
        if self._apool is not None:
            await self._apool.close()
            self._apool = None
        self.close()

    def drop(self) -> None:
        """Drop the table (tests and ``stoic idempotency``'s operators only)."""
        with self._sync_pool().connection() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self._ready = not self.create_table

    # -- shared ----------------------------------------------------------------------------

    def _claim_params(
        self, key: str, fingerprint: str, token: str, lease: float, ttl: float
    ) -> tuple[dict[str, Any], float]:
        now = clock.wall()
        params = {"key": key, "fp": fingerprint, "token": token, "lease": now + lease,
                  "exp": now + max(ttl, lease), "now": now}
        return params, now

    @staticmethod
    def _record(key: str, row: Any) -> Record | None:
        """The record in a row of ``SQL_COLUMNS``; None when the row does not hold one."""
        try:
            return record_from_row(key, row)
        except (TypeError, ValueError):
            return None

    def _read(self, key: str, row: Any) -> Record | None:
        """The record a ``SELECT`` found, or None: no row, or one that is reported unreadable."""
        if row is None:
            return None
        try:
            return record_from_row(key, row)
        except (TypeError, ValueError) as exc:
            report_corrupted("PostgresStore", key, exc)
            return None

    def _claim_answer(
        self, key: str, fingerprint: str, token: str, now: float, row: Any
    ) -> Claim | None:
        """The claim's result from the statement's one row, or None to try again."""
        won, seen = row[0], row[1:]
        old = None if seen[0] is None else self._record(key, seen)
        if won:
            return won_claim(key, token, old, now, corrupted=seen[0] is not None and old is None)
        # None: a concurrent claim committed after our snapshot, or the row we saw has since
        # expired or been released; the caller reads again.
        return live_answer(old, fingerprint, now)

    def _claim_read(self, key: str, fingerprint: str, token: str, row: Any,
                    now: float) -> Claim | None:
        """What the first read of a claim answers: None when the key is free to claim.

        A live in-flight record holding our own ``token`` is our claim, won by an attempt
        whose commit was lost with its connection: the retry takes it, it does not refuse it."""
        seen = self._read(key, row)
        if seen is not None and seen.token == token and not seen.completed:
            return won_claim(key, token, None, now)
        return live_answer(seen, fingerprint, now)

    def _completed_by(self, key: str, token: str, response: str | None, row: Any) -> bool:
        """Whether the record in ``row`` is ``token``'s, completed with ``response``."""
        record = self._read(key, row)
        return (record is not None and record.completed and record.token == token
                and record.response == response)

    # -- sync ------------------------------------------------------------------------------

    def _run(self, work: Callable[[Any, bool], T]) -> T:
        """``work(conn, retried)`` on a pooled connection; once more on a fresh connection
        when the first one died under it."""
        pool = self._sync_pool()
        used: Any = None
        try:
            with pool.connection(self._wait()) as conn:
                used = conn
                return work(conn, False)
        except Exception as exc:
            if not _lost(exc, used):
                error = _ran_out(exc)
                if error is None:
                    raise
                raise error from exc
            _log.warning("idempotency PostgresStore: connection lost (%s); retrying once on a "
                         "fresh connection", exc)
            if not self.check_connections:
                pool.check()  # replace every dead idle connection before the retry
        with pool.connection(self._wait()) as conn:
            return work(conn, True)

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        lease, ttl = check_claim(key, lease, ttl)
        token = new_token()  # one per claim, kept across a retry (see _claim_read)

        def work(conn: Any, retried: bool) -> Claim:
            for _ in range(100):
                params, now = self._claim_params(key, fingerprint, token, lease, ttl)
                # Read first: a replay or an in-flight answer is a plain SELECT. The upsert
                # would lock the existing row, and a row lock is a write PostgreSQL must
                # commit to its WAL, which would make every replay cost a disk flush.
                row = conn.execute(self._sql_get, (key, now)).fetchone()
                answer = self._claim_read(key, fingerprint, token, row, now)
                if answer is not None:
                    return answer
                row = conn.execute(self._sql_claim, params).fetchone()
                answer = self._claim_answer(key, fingerprint, token, now, row)
                if answer is not None:
                    return answer
            raise RuntimeError(f"could not claim {key!r}: the record kept changing")

        return self._run(work)

    def complete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        ttl = check_seconds("ttl", ttl)

        def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = conn.execute(self._sql_complete, (response, now + ttl, now, key, token, now))
            if cur.rowcount == 1 or not retried:
                return bool(cur.rowcount == 1)
            # The lost attempt may have committed before its connection died.
            return self._completed_by(key, token, response,
                                      conn.execute(self._sql_get, (key, now)).fetchone())

        with outside_deadline():  # records work already done (see _deadlines)
            return self._run(work)

    def release(self, key: str, token: str) -> bool:
        def work(conn: Any, retried: bool) -> bool:
            return bool(conn.execute(self._sql_release, (key, token, clock.wall())).rowcount == 1)

        with outside_deadline():  # records work already done (see _deadlines)
            return self._run(work)

    def extend(self, key: str, token: str, lease: float) -> bool:
        lease = check_seconds("lease", lease)

        def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = conn.execute(self._sql_extend, (now + lease, now + lease, key, token, now))
            return bool(cur.rowcount == 1)

        return self._run(work)

    def get(self, key: str) -> Record | None:
        check_key(key)
        row = self._run(lambda conn, retried: conn.execute(
            self._sql_get, (key, clock.wall())).fetchone())
        return self._read(key, row)

    def delete(self, key: str) -> bool:
        return self._run(lambda conn, retried: bool(
            conn.execute(self._sql_delete, (key,)).rowcount == 1))

    def purge_expired(self) -> int:
        return self._run(lambda conn, retried: int(
            conn.execute(self._sql_purge, (clock.wall(),)).rowcount))

    # -- async -----------------------------------------------------------------------------

    async def _arun(self, work: Callable[[Any, bool], Awaitable[T]]) -> T:
        """``_run`` for async code."""
        pool = await self._async_pool()
        used: Any = None
        try:
            async with pool.connection(self._wait()) as conn:
                used = conn
                return await work(conn, False)
        except Exception as exc:
            if not _lost(exc, used):
                error = _ran_out(exc)
                if error is None:
                    raise
                raise error from exc
            _log.warning("idempotency PostgresStore: connection lost (%s); retrying once on a "
                         "fresh connection", exc)
            if not self.check_connections:
                await pool.check()
        async with pool.connection(self._wait()) as conn:
            return await work(conn, True)

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        lease, ttl = check_claim(key, lease, ttl)
        token = new_token()

        async def work(conn: Any, retried: bool) -> Claim:
            for _ in range(100):
                params, now = self._claim_params(key, fingerprint, token, lease, ttl)
                cur = await conn.execute(self._sql_get, (key, now))
                answer = self._claim_read(key, fingerprint, token, await cur.fetchone(), now)
                if answer is not None:
                    return answer
                cur = await conn.execute(self._sql_claim, params)
                row = await cur.fetchone()
                answer = self._claim_answer(key, fingerprint, token, now, row)
                if answer is not None:
                    return answer
            raise RuntimeError(f"could not claim {key!r}: the record kept changing")

        return await self._arun(work)

    async def acomplete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        ttl = check_seconds("ttl", ttl)

        async def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = await conn.execute(
                self._sql_complete, (response, now + ttl, now, key, token, now)
            )
            if cur.rowcount == 1 or not retried:
                return bool(cur.rowcount == 1)
            cur = await conn.execute(self._sql_get, (key, now))
            return self._completed_by(key, token, response, await cur.fetchone())

        with outside_deadline():  # records work already done (see _deadlines)
            return await self._arun(work)

    async def arelease(self, key: str, token: str) -> bool:
        async def work(conn: Any, retried: bool) -> bool:
            cur = await conn.execute(self._sql_release, (key, token, clock.wall()))
            return bool(cur.rowcount == 1)

        with outside_deadline():  # records work already done (see _deadlines)
            return await self._arun(work)

    async def aextend(self, key: str, token: str, lease: float) -> bool:
        lease = check_seconds("lease", lease)

        async def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = await conn.execute(self._sql_extend, (now + lease, now + lease, key, token, now))
            return bool(cur.rowcount == 1)

        return await self._arun(work)

    async def aget(self, key: str) -> Record | None:
        check_key(key)

        async def work(conn: Any, retried: bool) -> Any:
            cur = await conn.execute(self._sql_get, (key, clock.wall()))
            return await cur.fetchone()

        return self._read(key, await self._arun(work))

    async def adelete(self, key: str) -> bool:
        async def work(conn: Any, retried: bool) -> bool:
            return bool((await conn.execute(self._sql_delete, (key,))).rowcount == 1)

        return await self._arun(work)

    async def apurge_expired(self) -> int:
        async def work(conn: Any, retried: bool) -> int:
            return int((await conn.execute(self._sql_purge, (clock.wall(),))).rowcount)

        return await self._arun(work)

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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import clock
from .._lazy import require
from ..integrations._deadlines import check_started, deadline_ran_out, outside_deadline
from .postgres_sql import (
    Statements,
    claim_answer,
    claim_params,
    claim_read,
    completed_by,
    create_table_sql,
    read_record,
)
from .store import (
    BaseStore,
    Claim,
    Record,
    check_claim,
    check_key,
    check_seconds,
    check_table,
    new_token,
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
        for module in ("psycopg", "psycopg_pool"):
            require(module, "PostgresStore", "postgres")
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
        self._sql = Statements(table)

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
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._sql.lock_id,))
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
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._sql.lock_id,))
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

    def _retry_after(self, exc: Exception, conn: Any) -> bool:
        """After ``exc`` on ``conn``: True when the connection died (the operation is retried
        once on a fresh one), False to re-raise ``exc``; ``DeadlineExceeded``, chained, when
        the wait for a pooled connection ended with the deadline."""
        if not _lost(exc, conn):
            error = _ran_out(exc)
            if error is not None:
                raise error from exc
            return False
        _log.warning("idempotency PostgresStore: connection lost (%s); retrying once on a "
                     "fresh connection", exc)
        return True

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
            if not self._retry_after(exc, used):
                raise
            if not self.check_connections:
                pool.check()  # replace every dead idle connection before the retry
        with pool.connection(self._wait()) as conn:
            return work(conn, True)

    def _claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> Claim:
        token = new_token()  # one per claim, kept across a retry (see postgres_sql.claim_read)

        def work(conn: Any, retried: bool) -> Claim:
            for _ in range(100):
                params, now = claim_params(key, fingerprint, token, lease, ttl)
                # Read first: a replay or an in-flight answer is a plain SELECT. The upsert
                # would lock the existing row, and a row lock is a write PostgreSQL must
                # commit to its WAL, which would make every replay cost a disk flush.
                row = conn.execute(self._sql.get, (key, now)).fetchone()
                answer = claim_read(key, fingerprint, token, row, now)
                if answer is not None:
                    return answer
                row = conn.execute(self._sql.claim, params).fetchone()
                answer = claim_answer(key, fingerprint, token, now, row)
                if answer is not None:
                    return answer
            raise RuntimeError(f"could not claim {key!r}: the record kept changing")

        return self._run(work)

    def _complete(self, key: str, token: str, response: str | None, ttl: float) -> bool:
        def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = conn.execute(self._sql.complete, (response, now + ttl, now, key, token, now))
            if cur.rowcount == 1 or not retried:
                return bool(cur.rowcount == 1)
            # The lost attempt may have committed before its connection died.
            return completed_by(key, token, response,
                                      conn.execute(self._sql.get, (key, now)).fetchone())

        with outside_deadline():  # records work already done (see _deadlines)
            return self._run(work)

    def release(self, key: str, token: str) -> bool:
        def work(conn: Any, retried: bool) -> bool:
            return bool(conn.execute(self._sql.release, (key, token, clock.wall())).rowcount == 1)

        with outside_deadline():  # records work already done (see _deadlines)
            return self._run(work)

    def _extend(self, key: str, token: str, lease: float) -> bool:
        def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = conn.execute(self._sql.extend, (now + lease, now + lease, key, token, now))
            return bool(cur.rowcount == 1)

        return self._run(work)

    def _get(self, key: str) -> Record | None:
        row = self._run(lambda conn, retried: conn.execute(
            self._sql.get, (key, clock.wall())).fetchone())
        return read_record(key, row)

    def delete(self, key: str) -> bool:
        return self._run(lambda conn, retried: bool(
            conn.execute(self._sql.delete, (key,)).rowcount == 1))

    def purge_expired(self) -> int:
        return self._run(lambda conn, retried: int(
            conn.execute(self._sql.purge, (clock.wall(),)).rowcount))

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
            if not self._retry_after(exc, used):
                raise
            if not self.check_connections:
                await pool.check()
        async with pool.connection(self._wait()) as conn:
            return await work(conn, True)

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        lease, ttl = check_claim(key, lease, ttl)
        token = new_token()

        async def work(conn: Any, retried: bool) -> Claim:
            for _ in range(100):
                params, now = claim_params(key, fingerprint, token, lease, ttl)
                cur = await conn.execute(self._sql.get, (key, now))
                answer = claim_read(key, fingerprint, token, await cur.fetchone(), now)
                if answer is not None:
                    return answer
                cur = await conn.execute(self._sql.claim, params)
                row = await cur.fetchone()
                answer = claim_answer(key, fingerprint, token, now, row)
                if answer is not None:
                    return answer
            raise RuntimeError(f"could not claim {key!r}: the record kept changing")

        return await self._arun(work)

    async def acomplete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        ttl = check_seconds("ttl", ttl)

        async def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = await conn.execute(
                self._sql.complete, (response, now + ttl, now, key, token, now)
            )
            if cur.rowcount == 1 or not retried:
                return bool(cur.rowcount == 1)
            cur = await conn.execute(self._sql.get, (key, now))
            return completed_by(key, token, response, await cur.fetchone())

        with outside_deadline():  # records work already done (see _deadlines)
            return await self._arun(work)

    async def arelease(self, key: str, token: str) -> bool:
        async def work(conn: Any, retried: bool) -> bool:
            cur = await conn.execute(self._sql.release, (key, token, clock.wall()))
            return bool(cur.rowcount == 1)

        with outside_deadline():  # records work already done (see _deadlines)
            return await self._arun(work)

    async def aextend(self, key: str, token: str, lease: float) -> bool:
        lease = check_seconds("lease", lease)

        async def work(conn: Any, retried: bool) -> bool:
            now = clock.wall()
            cur = await conn.execute(self._sql.extend, (now + lease, now + lease, key, token, now))
            return bool(cur.rowcount == 1)

        return await self._arun(work)

    async def aget(self, key: str) -> Record | None:
        check_key(key)

        async def work(conn: Any, retried: bool) -> Any:
            cur = await conn.execute(self._sql.get, (key, clock.wall()))
            return await cur.fetchone()

        return read_record(key, await self._arun(work))

    async def adelete(self, key: str) -> bool:
        async def work(conn: Any, retried: bool) -> bool:
            return bool((await conn.execute(self._sql.delete, (key,))).rowcount == 1)

        return await self._arun(work)

    async def apurge_expired(self) -> int:
        async def work(conn: Any, retried: bool) -> int:
            return int((await conn.execute(self._sql.purge, (clock.wall(),))).rowcount)

        return await self._arun(work)

"""Deadlines reach the database and the queue: real PostgreSQL, SQLite and Redis, slow on purpose."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

import stoic
from stoic.outcome import Outcome, classify

SLOW_CTE = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000000) "
            "SELECT count(*) FROM c")


class TestSQLite:
    def test_a_slow_query_is_interrupted_at_the_deadline(self, tmp_path: Path) -> None:
        from stoic.integrations.sqlite import connect

        db = connect(str(tmp_path / "a.db"))
        started = time.monotonic()
        with stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded) as info:
            db.execute(SLOW_CTE)
        assert time.monotonic() - started < 2.0
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert db.execute("SELECT 41 + 1").fetchone() == (42,)  # still usable, no deadline

    def test_no_statement_starts_after_the_deadline(self, tmp_path: Path) -> None:
        from stoic.integrations.sqlite import connect

        db = connect(str(tmp_path / "a.db"))
        db.execute("CREATE TABLE t (x)")
        with stoic.deadline(0), pytest.raises(stoic.DeadlineExceeded):
            db.execute("INSERT INTO t VALUES (1)")
        assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)

    def test_bound_adds_the_handler_to_a_plain_connection(self, tmp_path: Path) -> None:
        from stoic.integrations.sqlite import bound

        db = bound(sqlite3.connect(str(tmp_path / "a.db")))
        with stoic.deadline(0.2), pytest.raises(sqlite3.OperationalError, match="interrupted"):
            db.execute(SLOW_CTE)


@pytest.fixture
def pg(postgres_dsn: str) -> str:
    return postgres_dsn


class TestPsycopg:
    def test_pg_sleep_is_cancelled_by_the_server_at_the_deadline(self, pg: str) -> None:
        from psycopg import errors

        from stoic.integrations.psycopg import connect

        with connect(pg) as conn:
            started = time.monotonic()
            with stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded) as info:
                conn.execute("SELECT pg_sleep(5)")
            assert time.monotonic() - started < 2.0
            assert isinstance(info.value.__cause__, errors.QueryCanceled)
            conn.rollback()
            # the next statement without a deadline runs under the server's default again
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)

    def test_no_statement_is_sent_after_the_deadline(self, pg: str) -> None:
        from stoic.integrations.psycopg import connect

        table = f"stoic_dl_{uuid.uuid4().hex[:8]}"
        with connect(pg, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (x int)")
            try:
                with stoic.deadline(0), pytest.raises(stoic.DeadlineExceeded):
                    conn.execute(f"INSERT INTO {table} VALUES (1)")
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            finally:
                conn.execute(f"DROP TABLE {table}")

    def test_a_lock_timeout_is_not_a_deadline_and_is_transient(self, pg: str) -> None:
        from psycopg import errors

        from stoic.integrations.psycopg import connect

        table = f"stoic_lk_{uuid.uuid4().hex[:8]}"
        with connect(pg, autocommit=True) as admin:
            admin.execute(f"CREATE TABLE {table} (x int)")
            try:
                with connect(pg) as holder, connect(pg) as waiter:
                    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                    waiter.execute("SET lock_timeout = '100ms'")
                    with stoic.deadline(10), pytest.raises(errors.LockNotAvailable) as info:
                        waiter.execute(f"SELECT * FROM {table}")
                    verdict = classify(info.value)
                    assert verdict.outcome is Outcome.TRANSIENT
                    assert "lock timeout" in verdict.reason
                    holder.rollback()
            finally:
                admin.execute(f"DROP TABLE {table}")

    def test_a_statement_timeout_of_your_own_stays_query_canceled(self, pg: str) -> None:
        from psycopg import errors

        from stoic.integrations.psycopg import connect

        with connect(pg) as conn:
            conn.execute("SET statement_timeout = '100ms'")
            with pytest.raises(errors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(5)")
        assert "statement timeout" in classify(info.value).reason

    async def test_async_pg_sleep_is_cancelled_at_the_deadline(self, pg: str) -> None:
        from stoic.integrations.psycopg import aconnect

        conn = await aconnect(pg)
        try:
            started = time.monotonic()
            async with stoic.deadline(0.3):
                with pytest.raises(stoic.DeadlineExceeded):
                    await conn.execute("SELECT pg_sleep(5)")
            assert time.monotonic() - started < 2.0
        finally:
            await conn.close()


class TestSQLAlchemy:
    def test_postgres_engine_statements_end_at_the_deadline(self, pg: str) -> None:
        import sqlalchemy

        from stoic.integrations.sqlalchemy import install

        engine = install(sqlalchemy.create_engine(pg.replace("postgresql://",
                                                             "postgresql+psycopg://")))
        try:
            with engine.connect() as conn:
                started = time.monotonic()
                with stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded):
                    conn.execute(sqlalchemy.text("SELECT pg_sleep(5)"))
                assert time.monotonic() - started < 2.0
                conn.rollback()
                value = conn.execute(sqlalchemy.text("SHOW statement_timeout")).scalar()
                assert value == "0"
        finally:
            engine.dispose()

    def test_sqlite_engine_statements_end_at_the_deadline(self, tmp_path: Path) -> None:
        import sqlalchemy

        from stoic.integrations.sqlalchemy import install

        engine = install(sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'e.db'}"))
        with engine.connect() as conn:
            started = time.monotonic()
            with stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded):
                conn.execute(sqlalchemy.text(SLOW_CTE))
            assert time.monotonic() - started < 2.0
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1

    def test_anything_but_an_engine_is_refused(self) -> None:
        from stoic.integrations.sqlalchemy import install

        with pytest.raises(ValueError, match="engine"):
            install(object())


class TestRedis:
    def test_blpop_gives_up_at_the_deadline(self, redis_url: str) -> None:
        from redis.exceptions import TimeoutError as RedisTimeout

        from stoic.integrations.redis import client

        r = client(redis_url)
        key = f"stoic-test:blpop:{uuid.uuid4().hex}"
        started = time.monotonic()
        with stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded) as info:
            r.blpop([key], timeout=10)
        assert time.monotonic() - started < 2.0
        assert isinstance(info.value.__cause__, RedisTimeout)
        r.rpush(key, "job")  # the client works again afterwards, without a deadline
        assert r.blpop([key], timeout=1) == (key.encode(), b"job")
        r.close()

    def test_no_command_is_sent_after_the_deadline(self, redis_url: str) -> None:
        from stoic.integrations.redis import client

        r = client(redis_url)
        key = f"stoic-test:late:{uuid.uuid4().hex}"
        with stoic.deadline(0), pytest.raises(stoic.DeadlineExceeded):
            r.set(key, "1")
        assert r.get(key) is None
        r.close()

    def test_a_short_socket_timeout_of_your_own_stays_a_redis_timeout(
        self, redis_url: str
    ) -> None:
        from redis.exceptions import TimeoutError as RedisTimeout

        from stoic.integrations.redis import client

        r = client(redis_url, socket_timeout=0.2)
        with stoic.deadline(10), pytest.raises(RedisTimeout):
            r.blpop([f"stoic-test:own:{uuid.uuid4().hex}"], timeout=5)
        r.close()

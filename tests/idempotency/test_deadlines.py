"""The idempotency stores never wait past the caller's ``stoic.deadline``.

Another connection holds the lock a store operation needs; under ``stoic.deadline(0.3)`` the
operation raises ``stoic.DeadlineExceeded`` (chained to the driver's error) soon after the
deadline, writes nothing, and without a deadline it waits as long as it always did.
These are real-time tests (the wait is SQLite's or the server's, no virtual clock reaches
it); the bounds are generous for a loaded machine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stoic
from stoic.idempotency import PostgresStore, RedisStore, SQLiteStore
from support import free_port, require_service, wait_for_port

_SLACK = 2.0  # seconds past the deadline a loaded machine may take to report it


def ends_at_deadline(call: Callable[[], object], release: Callable[[], object]) -> BaseException:
    """Run ``call`` under ``stoic.deadline(0.3)`` while something blocks it, then ``release``
    that; check ``call`` raised ``DeadlineExceeded`` about 0.3 s in, and return the error."""
    started = time.monotonic()
    try:
        with pytest.raises(stoic.DeadlineExceeded) as caught, stoic.deadline(0.3):
            call()
        waited = time.monotonic() - started
    finally:
        release()
    assert 0.25 <= waited < 0.3 + _SLACK
    assert isinstance(caught.value, TimeoutError)
    return caught.value


def let_go(holder: Any) -> Callable[[], None]:
    """Ends ``holder``'s transaction and closes it (a sqlite3 or psycopg connection)."""

    def release() -> None:
        holder.rollback()
        holder.close()

    return release


def _hold_sqlite_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding the file's write lock until it is closed."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


class TestSQLiteStore:
    def test_claim_behind_a_lock_stops_at_the_deadline_and_writes_nothing(
        self, tmp_path: Path
    ) -> None:
        """A claim waiting for another writer's lock gives up when the deadline runs out."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=30.0)
        store.get("warm-up")  # the file and table exist before the lock is taken
        error = ends_at_deadline(lambda: store.claim("k", "fp", lease=10, ttl=60),
                                 let_go(_hold_sqlite_lock(tmp_path / "keys.db")))
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert store.get("k") is None
        store.close()

    def test_without_a_deadline_the_store_waits_its_busy_timeout(self, tmp_path: Path) -> None:
        """No deadline: the full busy timeout, then sqlite3's own error, as before."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=1.0)
        store.get("warm-up")
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                store.claim("k", "fp", lease=10, ttl=60)
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert waited >= 0.95

    def test_the_busy_timeout_comes_back_after_a_deadline(self, tmp_path: Path) -> None:
        """A call under a short deadline does not shorten the next call's wait."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=1.0)
        store.get("warm-up")
        with stoic.deadline(0.05):
            store.get("short")
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                store.complete("k", "token", None, ttl=60)
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert waited >= 0.95

    def test_a_shorter_busy_timeout_fails_as_itself_under_a_long_deadline(
        self, tmp_path: Path
    ) -> None:
        """The store's own timeout, shorter than the time left, is not the deadline."""
        store = SQLiteStore(tmp_path / "keys.db", busy_timeout=0.2)
        store.get("warm-up")
        holder = _hold_sqlite_lock(tmp_path / "keys.db")
        try:
            with pytest.raises(sqlite3.OperationalError) as caught, stoic.deadline(30):
                store.release("k", "token")
        finally:
            holder.rollback()
            holder.close()
        assert not isinstance(caught.value, stoic.DeadlineExceeded)

    def test_no_operation_starts_after_the_deadline(self, tmp_path: Path) -> None:
        """A passed deadline refuses the operation before it touches the file."""
        store = SQLiteStore(tmp_path / "keys.db")
        with stoic.deadline(0.001):
            time.sleep(0.01)
            with pytest.raises(stoic.DeadlineExceeded):
                store.claim("k", "fp", lease=10, ttl=60)
        assert store.get("k") is None


@pytest.fixture(scope="module")
def own_redis() -> Iterator[tuple[str, Any]]:
    """A Redis server of this module's own (it gets paused), and a client to pause it with."""
    require_service("redis", "127.0.0.1", 6379)
    redis = pytest.importorskip("redis")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        control = redis.Redis(port=port)
        yield f"redis://127.0.0.1:{port}/0", control
        control.close()
    finally:
        process.kill()
        process.wait()


def _paused(control: Any, seconds: float) -> None:
    """Every client's commands wait ``seconds`` (CLIENT PAUSE, on this module's own server)."""
    control.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")


class TestRedisStore:
    def test_claim_on_a_paused_server_stops_at_the_deadline(
        self, own_redis: tuple[str, Any]
    ) -> None:
        """A command the server holds back ends when the caller's deadline does."""
        url, control = own_redis
        store = RedisStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
        store.get("warm-up")
        _paused(control, 3.0)
        error = ends_at_deadline(lambda: store.claim("k", "fp", lease=10, ttl=60),
                                 lambda: control.execute_command("CLIENT", "UNPAUSE"))
        assert error.__cause__ is not None
        assert store.claim("k2", "fp", lease=10, ttl=60).claimed  # the store still works
        store.close()

    def test_without_a_deadline_the_command_waits_for_the_server(
        self, own_redis: tuple[str, Any]
    ) -> None:
        """No deadline: the command waits out the pause and succeeds, as before."""
        url, control = own_redis
        store = RedisStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
        store.get("warm-up")
        _paused(control, 1.0)
        started = time.monotonic()
        assert store.claim("k", "fp", lease=10, ttl=60).claimed
        assert time.monotonic() - started >= 0.8
        store.close()

    def test_async_claim_on_a_paused_server_stops_at_the_deadline(
        self, own_redis: tuple[str, Any]
    ) -> None:
        """The async methods are cancelled when the deadline runs out."""
        url, control = own_redis
        store = RedisStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}:")

        async def main() -> float:
            await store.aget("warm-up")
            _paused(control, 3.0)
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded), stoic.deadline(0.3):
                await store.aclaim("k", "fp", lease=10, ttl=60)
            waited = time.monotonic() - started
            control.execute_command("CLIENT", "UNPAUSE")
            assert (await store.aclaim("k2", "fp", lease=10, ttl=60)).claimed
            await store.aclose()
            return waited

        try:
            waited = asyncio.run(main())
        finally:
            control.execute_command("CLIENT", "UNPAUSE")
        assert 0.25 <= waited < 0.3 + _SLACK


@pytest.fixture
def pg_store(postgres_dsn: str) -> Iterator[PostgresStore]:
    """A PostgresStore on a table of its own, dropped afterwards."""
    store = PostgresStore(postgres_dsn, table=f"t_deadline_{uuid.uuid4().hex[:10]}", max_size=2)
    store.migrate()
    yield store
    store.drop()
    store.close()


def _lock_row(dsn: str, table: str, key: str) -> Any:
    """Another connection holding ``key``'s row lock (``SELECT ... FOR UPDATE``)."""
    import psycopg

    holder = psycopg.connect(dsn)
    holder.execute(f"SELECT key FROM {table} WHERE key = %s FOR UPDATE", (key,))
    return holder


class TestPostgresStore:
    def test_extend_behind_a_row_lock_stops_at_the_deadline_and_writes_nothing(
        self, pg_store: PostgresStore, postgres_dsn: str
    ) -> None:
        """The server cancels the UPDATE when the deadline runs out; the row is unchanged."""
        claim = pg_store.claim("k", "fp", lease=30, ttl=60)
        assert claim.token is not None
        before = pg_store.get("k")
        token = claim.token
        error = ends_at_deadline(lambda: pg_store.extend("k", token, 600),
                                 let_go(_lock_row(postgres_dsn, pg_store.table, "k")))
        assert type(error.__cause__).__name__ == "QueryCanceled"
        assert pg_store.get("k") == before
        assert pg_store.extend("k", token, 600)  # no deadline: works

    def test_without_a_deadline_the_statement_waits_for_the_lock(
        self, pg_store: PostgresStore, postgres_dsn: str
    ) -> None:
        """No deadline: the UPDATE waits until the other transaction ends, as before; a
        statement_timeout set under an earlier deadline does not linger on the connection."""
        claim = pg_store.claim("k", "fp", lease=30, ttl=60)
        assert claim.token is not None
        with stoic.deadline(5):
            pg_store.get("k")  # leaves statement_timeout set on a pooled connection
        holder = _lock_row(postgres_dsn, pg_store.table, "k")
        timer = threading.Timer(1.0, holder.rollback)
        timer.start()
        try:
            started = time.monotonic()
            for _ in range(2):  # both pooled connections
                assert pg_store.extend("k", claim.token, 30)
            waited = time.monotonic() - started
        finally:
            timer.join()
            holder.close()
        assert waited >= 0.9

    def test_the_wait_for_a_pooled_connection_stops_at_the_deadline(
        self, postgres_dsn: str
    ) -> None:
        """With every pooled connection busy, the wait for one ends with the deadline."""
        store = PostgresStore(postgres_dsn, table=f"t_deadline_{uuid.uuid4().hex[:10]}",
                              min_size=1, max_size=1)
        store.migrate()
        try:
            with store._sync_pool().connection():
                started = time.monotonic()
                with pytest.raises(stoic.DeadlineExceeded) as caught, stoic.deadline(0.3):
                    store.get("k")
                waited = time.monotonic() - started
            assert 0.25 <= waited < 0.3 + _SLACK
            assert type(caught.value.__cause__).__name__ == "PoolTimeout"
        finally:
            store.drop()
            store.close()

    def test_async_extend_behind_a_row_lock_stops_at_the_deadline(
        self, pg_store: PostgresStore, postgres_dsn: str
    ) -> None:
        """The async methods are bounded the same way."""
        claim = pg_store.claim("k", "fp", lease=30, ttl=60)
        assert claim.token is not None
        holder = _lock_row(postgres_dsn, pg_store.table, "k")

        async def main() -> float:
            started = time.monotonic()
            with pytest.raises(stoic.DeadlineExceeded), stoic.deadline(0.3):
                await pg_store.aextend("k", claim.token or "", 600)
            waited = time.monotonic() - started
            await pg_store.aclose()
            return waited

        try:
            waited = asyncio.run(main())
        finally:
            holder.rollback()
            holder.close()
        assert 0.25 <= waited < 0.3 + _SLACK


class TestFinishingOutsideTheDeadline:
    """Recording a finished call is not refused because the work overran the deadline:
    otherwise the next caller would run the work again once the lease ran out."""

    @pytest.mark.parametrize("kind", ["sqlite", "postgres"])
    def test_complete_after_the_deadline_passed_still_records_the_response(
        self, kind: str, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        store: Any
        if kind == "sqlite":
            store = SQLiteStore(tmp_path / "keys.db")
        else:
            store = request.getfixturevalue("pg_store")
        claim = store.claim("k", "fp", lease=30, ttl=60)
        with stoic.deadline(0.01):
            time.sleep(0.05)  # the work overran its deadline, and then finished
            assert store.complete("k", claim.token, "done", ttl=60)
            assert stoic.remaining() is not None  # the deadline is back after complete
        record = store.get("k")
        assert record is not None and record.completed and record.response == "done"

    def test_redis_complete_after_the_deadline_passed_still_records_the_response(
        self, own_redis: tuple[str, Any]
    ) -> None:
        url, _ = own_redis
        store = RedisStore(url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
        claim = store.claim("k", "fp", lease=30, ttl=60)
        assert claim.token is not None
        with stoic.deadline(0.01):
            time.sleep(0.05)
            assert store.complete("k", claim.token, "done", ttl=60)
        record = store.get("k")
        assert record is not None and record.response == "done"
        store.close()

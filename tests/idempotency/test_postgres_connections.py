"""PostgresStore survives its connections dying: on the real PostgreSQL, by terminating the
store's own backends (found by an application_name unique to the test; no other session is
ever touched), between calls and in the middle of a statement."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from stoic.idempotency import ClaimStatus, PostgresStore

psycopg = pytest.importorskip("psycopg")

TTL = 60.0


@dataclass
class Target:
    """A store whose connections carry ``app`` as their application_name."""

    store: PostgresStore
    app: str
    admin: Any  # a separate connection that terminates the store's backends and locks rows

    def backends(self, waiting_for_lock: bool = False) -> list[int]:
        sql = ("SELECT pid FROM pg_stat_activity WHERE application_name = %s"
               " AND pid <> pg_backend_pid()")
        if waiting_for_lock:
            sql += " AND wait_event_type = 'Lock'"
        return [pid for (pid,) in self.admin.execute(sql, (self.app,)).fetchall()]

    def terminate(self, pids: list[int]) -> int:
        """Terminate the given backends of this store (never anyone else's)."""
        mine = set(self.backends())
        assert set(pids) <= mine, "only this store's own backends are terminated"
        done = 0
        for pid in pids:
            done += bool(self.admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0])
        return done

    def waiter(self, timeout: float = 20.0) -> int:
        """The store's backend that is waiting for a row lock (polls the real server)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            waiting = self.backends(waiting_for_lock=True)
            if waiting:
                return waiting[0]
            time.sleep(0.02)
        raise AssertionError("the store's statement never waited for the lock")


@pytest.fixture(params=[True, False], ids=["checked", "unchecked"])
def target(postgres_dsn: str, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A store checking its connections on checkout, and one finding dead ones by failing."""
    run = uuid.uuid4().hex[:12]
    app, table = f"stoic-test-{run}", f"stoic_idem_conn_{run}"
    joiner = "&" if "?" in postgres_dsn else "?"
    store = PostgresStore(f"{postgres_dsn}{joiner}application_name={app}", table=table,
                          min_size=2, max_size=4, connect_timeout=5.0,
                          check_connections=request.param)
    admin = psycopg.connect(postgres_dsn, autocommit=True)
    try:
        yield Target(store, app, admin)
    finally:
        store.close()
        admin.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()


class Locked:
    """Hold a row lock on ``key`` from another session, so the store's statement waits."""

    def __init__(self, target: Target, key: str) -> None:
        self.conn = psycopg.connect(target.admin.info.dsn)
        self.conn.execute(f"SELECT 1 FROM {target.store.table} WHERE key = %s FOR UPDATE",
                          (key,))

    def release(self) -> None:
        self.conn.commit()
        self.conn.close()


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # the test reports it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_dead_pooled_connections_are_replaced_on_checkout(target: Target) -> None:
    store = target.store
    claim = store.claim("k", "f", lease=30.0, ttl=TTL)
    assert claim.claimed
    assert target.terminate(target.backends()) >= 1
    assert store.complete("k", claim.token or "", "done", ttl=TTL), "landed on a live connection"
    record = store.get("k")
    assert record is not None and record.completed and record.response == "done"
    assert target.terminate(target.backends()) >= 1
    assert store.claim("k", "f", lease=30.0, ttl=TTL).status is ClaimStatus.COMPLETED


def test_complete_lands_when_its_connection_dies_mid_statement(target: Target) -> None:
    store = target.store
    claim = store.claim("k", "f", lease=30.0, ttl=TTL)
    lock = Locked(target, "k")
    try:
        thread, out = _in_thread(lambda: store.complete("k", claim.token or "", "done", ttl=TTL))
        assert target.terminate([target.waiter()]) == 1  # killed while its UPDATE waits
    finally:
        lock.release()
    thread.join(30)
    assert out == [True], "complete() retried on a fresh connection and landed"
    record = store.get("k")
    assert record is not None and record.completed and record.response == "done"
    assert store.claim("k", "f", lease=30.0, ttl=TTL).status is ClaimStatus.COMPLETED, (
        "the key is not left in flight")


def test_release_lands_when_its_connection_dies_mid_statement(target: Target) -> None:
    store = target.store
    claim = store.claim("k", "f", lease=30.0, ttl=TTL)
    lock = Locked(target, "k")
    try:
        thread, out = _in_thread(lambda: store.release("k", claim.token or ""))
        assert target.terminate([target.waiter()]) == 1
    finally:
        lock.release()
    thread.join(30)
    assert out == [True]
    assert store.claim("k", "f", lease=30.0, ttl=TTL).claimed, "the key was given back"


def test_claim_is_retried_when_its_connection_dies_mid_statement(target: Target) -> None:
    store = target.store
    store.claim("k", "f", lease=0.001, ttl=TTL)  # an owner whose lease runs out at once
    time.sleep(0.01)
    lock = Locked(target, "k")
    try:
        thread, out = _in_thread(lambda: store.claim("k", "f", lease=30.0, ttl=TTL))
        assert target.terminate([target.waiter()]) == 1  # killed while its upsert waits
    finally:
        lock.release()
    thread.join(30)
    assert len(out) == 1 and not isinstance(out[0], BaseException), out
    assert out[0].claimed and out[0].replaced == "lease_expired"
    assert store.complete("k", out[0].token, "done", ttl=TTL)


async def test_async_complete_lands_when_its_connection_dies_mid_statement(
    target: Target,
) -> None:
    store = target.store
    try:
        claim = await store.aclaim("k", "f", lease=30.0, ttl=TTL)
        lock = Locked(target, "k")
        try:
            task = asyncio.create_task(store.acomplete("k", claim.token or "", "done", ttl=TTL))
            pid = await asyncio.to_thread(target.waiter)
            assert await asyncio.to_thread(target.terminate, [pid]) == 1
        finally:
            lock.release()
        assert await asyncio.wait_for(task, 30) is True
        record = await store.aget("k")
        assert record is not None and record.completed and record.response == "done"
    finally:
        await store.aclose()  # the async pool lives on this test's loop


async def test_async_dead_pooled_connections_are_replaced_on_checkout(target: Target) -> None:
    store = target.store
    try:
        claim = await store.aclaim("k", "f", lease=30.0, ttl=TTL)
        assert target.terminate(target.backends()) >= 1
        assert await store.acomplete("k", claim.token or "", "done", ttl=TTL)
        assert (await store.aclaim("k", "f", lease=30.0, ttl=TTL)).status is (
            ClaimStatus.COMPLETED)
    finally:
        await store.aclose()


def test_a_statement_error_is_not_retried(target: Target) -> None:
    store = target.store
    store.claim("k", "f", lease=30.0, ttl=TTL)
    target.admin.execute(f"ALTER TABLE {store.table} RENAME TO {store.table}_gone")
    try:
        with pytest.raises(psycopg.errors.UndefinedTable):
            store.get("k")
    finally:
        target.admin.execute(f"ALTER TABLE {store.table}_gone RENAME TO {store.table}")


def test_connect_timeout_is_a_validated_parameter(postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        PostgresStore(postgres_dsn, connect_timeout=0)
    assert PostgresStore(postgres_dsn, connect_timeout=5).connect_timeout == 5.0

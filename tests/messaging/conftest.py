"""Brokers for the messaging tests: every conformance test runs on each of them.

Each test gets its own topic (and, for SQLite, its own file), so tests running in parallel,
or leftovers of an earlier run on the shared Redis and RabbitMQ, never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROKERS = ["memory", "sqlite", "redis", "rabbitmq", "postgres", "nats"]

# One schema per test run on the shared PostgreSQL: dropped at the end, never anyone else's.
PG_SCHEMA = f"stoic_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def postgres_broker_url(postgres_dsn: str, pg_schema_cleanup: set[str]) -> str:
    """The broker URL of this run's schema (``connect`` reads ``schema`` from the query)."""
    pg_schema_cleanup.add(postgres_dsn)
    return f"{postgres_dsn}{'&' if '?' in postgres_dsn else '?'}schema={PG_SCHEMA}"


@pytest.fixture(scope="session")
def pg_schema_cleanup() -> Iterator[set[str]]:
    """Collects the DSNs this run's schema was used on, and drops the schema at the end."""
    used: set[str] = set()
    yield used
    for dsn in used:
        try:
            import psycopg

            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        except Exception:  # the server went away: nothing to clean
            pass


def make_broker(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    from stoic import messaging

    if kind == "memory":
        return messaging.MemoryBroker()
    if kind == "sqlite":
        return messaging.SQLiteBroker(tmp_path / "queue.db")
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        from stoic.messaging.redis import RedisBroker

        return RedisBroker(url)
    if kind == "rabbitmq":
        url = request.getfixturevalue("amqp_url")
        from stoic.idempotency import SQLiteStore
        from stoic.messaging.rabbitmq import RabbitBroker

        # RabbitMQ has no publish-side de-duplication; RabbitBroker gets it from a store.
        return RabbitBroker(url, dedupe=SQLiteStore(tmp_path / "publish-dedupe.db"))
    if kind == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        request.getfixturevalue("pg_schema_cleanup").add(dsn)
        from stoic.messaging.postgres import PostgresBroker

        return PostgresBroker(dsn, schema=PG_SCHEMA, min_size=0, max_size=4)
    if kind == "nats":
        url = request.getfixturevalue("nats_url")
        from stoic.messaging.nats import NatsBroker

        return NatsBroker(url, prefix="stoictest")  # streams are per topic, deleted after
    raise AssertionError(kind)


@pytest.fixture
def nats_url() -> str:
    from support import require_service

    require_service("NATS", "127.0.0.1", 4222)
    return os.environ.get("STOIC_TEST_NATS", "nats://127.0.0.1:4222")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path, topic: str) -> Iterator[Any]:
    b = make_broker(request.param, tmp_path, request)
    try:
        yield b
    finally:
        if hasattr(b, "delete_topic"):  # leave nothing behind on the shared servers
            b.delete_topic(topic)
        b.close()


@pytest.fixture(params=["memory", "sqlite"])
def local_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The brokers that need no server: for worker logic that does not depend on the broker."""
    b = make_broker(request.param, tmp_path, request)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def topic() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"

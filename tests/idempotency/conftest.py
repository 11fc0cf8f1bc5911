"""One fixture, ``backend``, runs a test on every store: memory, SQLite on disk, Redis, PostgreSQL.

Each test gets its own SQLite file, Redis key prefix and PostgreSQL table, so parallel runs
(and other engineers' tests on the shared servers) never see each other's records.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from idempotency.backends import BACKENDS, Backend
from stoic.idempotency import Store


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every store, the memory one included."""
    yield from _backend(request, tmp_path)


@pytest.fixture(params=[kind for kind in BACKENDS if kind != "memory"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The stores that outlive a process and are shared between processes."""
    yield from _backend(request, tmp_path)


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    run = uuid.uuid4().hex[:12]
    if kind == "redis":
        spec = {"kind": kind, "url": request.getfixturevalue("redis_url"),
                "prefix": f"stoic-test:{run}:"}
    elif kind == "postgres":
        spec = {"kind": kind, "dsn": request.getfixturevalue("postgres_dsn"),
                "table": f"stoic_idem_test_{run}"}
    elif kind == "sqlite":
        spec = {"kind": kind, "path": str(tmp_path / "idempotency.db")}
    else:
        spec = {"kind": kind}
    b = Backend(kind, spec)
    yield b
    _cleanup(b)


def _cleanup(b: Backend) -> None:
    if b.kind == "redis":
        import redis

        client = redis.Redis.from_url(b.spec["url"])
        keys = list(client.scan_iter(match=b.spec["prefix"] + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    if b.kind == "postgres":
        import psycopg

        with psycopg.connect(b.spec["dsn"], autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {b.spec['table']}")
    for store in b.made:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.make()


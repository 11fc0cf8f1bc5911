"""One fixture, ``backend``, runs a test on every store: memory, SQLite on disk, Redis, PostgreSQL.

Each test gets its own SQLite file, Redis key prefix and PostgreSQL table, so parallel runs
(and other engineers' tests on the shared servers) never see each other's records. Redis keys
are deleted once, when the session ends: finding a prefix's keys means scanning the whole
shared server, which holds many other keys (a third of a second a test, done per test).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from idempotency.backends import BACKENDS, Backend
from stoic.idempotency import Store

_SESSION_PREFIX = f"stoic-test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def _redis_servers() -> Iterator[set[str]]:
    """The Redis URLs this session wrote to; its keys there are deleted at the end."""
    urls: set[str] = set()
    yield urls
    import redis

    for url in urls:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=_SESSION_PREFIX + "*", count=10_000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
        client.close()


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
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("_redis_servers").add(url)
        spec = {"kind": kind, "url": url, "prefix": f"{_SESSION_PREFIX}{run}:"}
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
    if b.kind == "postgres":
        import psycopg

        with psycopg.connect(b.spec["dsn"], autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {b.spec['table']}")
    for store in b.made:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.make()


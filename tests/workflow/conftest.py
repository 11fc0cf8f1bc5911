"""Fixtures for the workflow tests: a ``Workflows`` on each store, on virtual time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stoic.testing import VirtualClock, virtual_time
from stoic.workflow import MemoryStore, SQLiteStore, Store, Workflows


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    with virtual_time() as clock:
        yield clock


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every engine test runs on each store: the conformance suite of the stores."""
    if request.param == "postgres":
        from stoic.workflow import PostgresStore

        pg = PostgresStore(request.getfixturevalue("postgres_dsn"),
                           prefix=f"wf_test_{uuid.uuid4().hex[:10]}", max_size=4)
        try:
            yield pg
        finally:
            pg.drop()
            pg.close()
        return
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(
        tmp_path / "flows.db", synchronous="NORMAL")
    yield made
    made.close()


@pytest.fixture
def flows(store: Store, clock: VirtualClock) -> Workflows:
    return Workflows(store, lease=5.0)

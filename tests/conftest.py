"""Shared fixtures: registries reset between tests, and real services (skip or fail when absent).

A test that needs Redis, PostgreSQL or RabbitMQ asks for ``redis_url``, ``postgres_dsn`` or
``amqp_url``. When the server is not reachable the test is skipped with the reason, unless
``STOIC_REQUIRE_SERVICES=1`` (set by ``.ci/run``), in which case it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support import require_service

REDIS_URL = os.environ.get("STOIC_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("STOIC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("STOIC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def postgres_dsn() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_DSN


@pytest.fixture
def amqp_url() -> str:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


@pytest.fixture(autouse=True)
def _reset_stoic_registries() -> Iterator[None]:
    """Nothing leaks between tests: event sinks, classifiers and the clock start fresh."""
    from stoic import clock, events, outcome

    yield
    events.dispatcher.reset()
    outcome.reset_classifiers()
    clock.set_clock(clock.SYSTEM)
    try:
        from stoic.policies import breaker
    except ImportError:
        return
    breaker.reset_breakers()

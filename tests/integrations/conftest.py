"""Fixtures: scriptable uvicorn services on free loopback ports (see ``servers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.servers import Backend, Running, Server


def _serve() -> Iterator[Running]:
    backend = Backend()
    server = Server(backend, backend).start()
    try:
        yield Running(backend, server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def _service_a() -> Iterator[Running]:
    yield from _serve()


@pytest.fixture(scope="module")
def _service_b() -> Iterator[Running]:
    yield from _serve()


@pytest.fixture
def service(_service_a: Running) -> Running:
    """A scriptable HTTP service, fresh for each test."""
    _service_a.backend.reset()
    return _service_a


@pytest.fixture
def other_service(_service_b: Running) -> Running:
    """A second, independent service (another host:port)."""
    _service_b.backend.reset()
    return _service_b

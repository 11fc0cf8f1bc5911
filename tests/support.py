"""Helpers for tests: service checks and free ports. Import as ``from support import ...``."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

__all__ = ["free_port", "read_body", "require_service", "wait_for_port"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under STOIC_REQUIRE_SERVICES=1) when ``host:port`` does not answer."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("STOIC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and STOIC_REQUIRE_SERVICES=1")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until something accepts connections on ``host:port`` (real time; for servers)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _reachable(host, port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


async def read_body(receive: Any) -> bytes:
    """The whole request body of an ASGI ``http`` request, from its ``receive`` callable."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body

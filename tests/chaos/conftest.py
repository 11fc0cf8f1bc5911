"""Fixtures for the chaos tests: small real TCP servers behind a real fault proxy."""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from stoic.chaos import ProxyClient, ProxyHandle, ProxyServer, faults

Handler = Callable[[socket.socket], None]


def api(server: ProxyServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    """One request to ``server``'s HTTP API, as any client sends it."""
    return requests.request(method, server.api_url + path, timeout=10, **kwargs)


def echoes(port: int) -> bool:
    """Whether a connection to ``port`` (a proxy in front of the echo server) echoes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        return sock.recv(100) == b"ping"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(handle: Handler) -> Iterator[int]:
    class RequestHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                handle(self.request)
            except OSError:
                pass

    server = _Server(("127.0.0.1", 0), RequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _echo(sock: socket.socket) -> None:
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server's port."""
    yield from _serve(_echo)


PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes


def _blast(sock: socket.socket) -> None:
    """Wait for one request line (a byte count), send that many bytes of PAYLOAD, close."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            return
        line += chunk
    sock.sendall(PAYLOAD[: int(line)])
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass


@pytest.fixture
def blast_port() -> Iterator[int]:
    """A server that sends N bytes (N asked for on the first line), then closes."""
    yield from _serve(_blast)


@pytest.fixture
def proxy_server() -> Iterator[ProxyServer]:
    with ProxyServer(seed=1) as server:
        yield server


@pytest.fixture
def echo_proxy(proxy_server: ProxyServer, echo_port: int) -> ProxyHandle:
    """A proxy named "echo" in front of the echo server."""
    return proxy_server.create("echo", f"127.0.0.1:{echo_port}")


@pytest.fixture
def blast_proxy(proxy_server: ProxyServer, blast_port: int) -> ProxyHandle:
    """A proxy named "blast" in front of the blast server."""
    return proxy_server.create("blast", f"127.0.0.1:{blast_port}")


@pytest.fixture(autouse=True)
def _faults_off() -> Iterator[None]:
    """In-process fault injection never leaks from one test into the next."""
    yield
    faults.disable()
    faults._state.env_checked = False


@contextlib.contextmanager
def running_stoic_proxy(*options: str) -> Iterator[ProxyClient]:
    """The ``stoic proxy`` command in its own process (API on a free port), and a client."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from stoic.cli import main; main()", "proxy", "--port", "0",
         *options],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"API listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        yield ProxyClient(f"http://127.0.0.1:{match[1]}")
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def stoic_proxy() -> Iterator[ProxyClient]:
    """The ``stoic proxy`` command in its own process (API on a free port), and a client."""
    with running_stoic_proxy() as client:
        yield client

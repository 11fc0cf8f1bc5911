"""Library classifiers, fed real exceptions produced by the libraries against real sockets."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
import redis
import requests

from stoic import Outcome, classify
from support import free_port

T, U, P, THR = Outcome.TRANSIENT, Outcome.UNKNOWN, Outcome.PERMANENT, Outcome.THROTTLED


def _serve(on_connect: Callable[[socket.socket, list[socket.socket]], None]) -> Iterator[int]:
    """A raw TCP server on a free port that hands each connection to ``on_connect``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            on_connect(conn, held)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def _hold(conn: socket.socket, held: list[socket.socket]) -> None:
    held.append(conn)  # read nothing, answer nothing


def _reset_after_request(conn: socket.socket, held: list[socket.socket]) -> None:
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # linger 0: RST instead of FIN, the reply is lost


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers: a read timeout."""
    yield from _serve(_hold)


@pytest.fixture
def resetting_server() -> Iterator[int]:
    """Reads the request, then resets the connection: the reply is lost."""
    yield from _serve(_reset_after_request)


class TestHttpx:
    def test_connect_refused_is_transient(self) -> None:
        with pytest.raises(httpx.ConnectError) as info:
            httpx.get(f"http://127.0.0.1:{free_port()}/")
        assert classify(info.value).outcome is T

    def test_read_timeout_is_unknown(self, silent_server: int) -> None:
        with pytest.raises(httpx.ReadTimeout) as info:
            httpx.get(f"http://127.0.0.1:{silent_server}/", timeout=httpx.Timeout(0.2))
        assert classify(info.value).outcome is U

    def test_reset_after_request_is_unknown(self, resetting_server: int) -> None:
        with pytest.raises(httpx.TransportError) as info:
            httpx.post(f"http://127.0.0.1:{resetting_server}/", content=b"x")
        assert classify(info.value).outcome is U

    def test_status_error_follows_the_status_table(self) -> None:
        request = httpx.Request("GET", "http://x/")
        response = httpx.Response(429, headers={"Retry-After": "2"}, request=request)
        error = httpx.HTTPStatusError("429", request=request, response=response)
        verdict = classify(error)
        assert (verdict.outcome, verdict.retry_after) == (THR, 2.0)


class TestRequests:
    def test_connect_refused_is_transient(self) -> None:
        with pytest.raises(requests.ConnectionError) as info:
            requests.get(f"http://127.0.0.1:{free_port()}/", timeout=1)
        assert classify(info.value).outcome is T

    def test_read_timeout_is_unknown(self, silent_server: int) -> None:
        with pytest.raises(requests.ReadTimeout) as info:
            requests.get(f"http://127.0.0.1:{silent_server}/", timeout=0.2)
        assert classify(info.value).outcome is U

    def test_reset_after_request_is_unknown(self, resetting_server: int) -> None:
        with pytest.raises(requests.ConnectionError) as info:
            requests.post(f"http://127.0.0.1:{resetting_server}/", data=b"x", timeout=2)
        assert classify(info.value).outcome is U


class TestRedis:
    def test_connect_refused_is_transient(self) -> None:
        client = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
        with pytest.raises(redis.ConnectionError) as info:
            client.ping()
        assert classify(info.value).outcome is T

    def test_command_error_is_permanent(self, redis_url: str) -> None:
        client = redis.Redis.from_url(redis_url)
        with pytest.raises(redis.ResponseError) as info:
            client.execute_command("NO_SUCH_COMMAND_STOIC")
        assert classify(info.value).outcome is P


class TestPsycopg:
    def test_connect_refused_is_transient(self) -> None:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/test", connect_timeout=2)
        assert classify(info.value).outcome is T

    def test_serialization_failure_and_deadlock_are_transient(self, postgres_dsn: str) -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for sqlstate in ("40001", "40P01"):
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(
                        f"DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{sqlstate}'; END $$"
                    )
                assert classify(info.value).outcome is T

    def test_unique_violation_is_permanent(self, postgres_dsn: str) -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE t (id int primary key)")
            conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(psycopg.errors.UniqueViolation) as info:
                conn.execute("INSERT INTO t VALUES (1)")
        assert classify(info.value).outcome is P


class TestGrpcCodes:
    def test_status_codes_map_to_outcomes(self) -> None:
        from stoic.classifiers.grpc import by_code

        assert by_code("UNAVAILABLE").outcome is T
        assert by_code("DEADLINE_EXCEEDED").outcome is U
        assert by_code("RESOURCE_EXHAUSTED").outcome is THR
        assert by_code("INVALID_ARGUMENT").outcome is P

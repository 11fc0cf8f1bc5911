"""Each toxic, measured on real loopback sockets through a real proxy."""

from __future__ import annotations

import socket
import time

import pytest

from stoic.chaos import ProxyHandle, ProxyServer

from .conftest import PAYLOAD

# Loopback round trips take well under a millisecond; these bounds leave room for a loaded
# 2-core machine without letting a missing or doubled delay pass.
SLACK = 0.15


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, data: bytes = b"ping") -> float:
    start = time.perf_counter()
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "connection closed during a round trip"
        received += chunk
    assert received == data
    return time.perf_counter() - start


def read_all(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Everything until EOF, and the size of each recv."""
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks), [len(c) for c in chunks]
        chunks.append(chunk)


def ask(sock: socket.socket, count: int) -> None:
    sock.sendall(f"{count}\n".encode())


def fetch(port: int, count: int) -> tuple[bytes, list[int], float]:
    """Ask the blast server behind ``port`` for ``count`` bytes: what came until EOF, the
    size of each recv, and the seconds it took."""
    with connect(port) as sock:
        start = time.perf_counter()
        ask(sock, count)
        data, sizes = read_all(sock)
        return data, sizes, time.perf_counter() - start


class TestLatency:
    def test_latency_delays_each_round_trip_by_the_configured_milliseconds(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("latency", latency=200)
        with connect(echo_proxy.port) as sock:
            rtts = [round_trip(sock) for _ in range(3)]
        assert all(0.195 <= rtt <= 0.2 + SLACK for rtt in rtts), rtts

    def test_jitter_keeps_delays_within_latency_plus_or_minus_jitter(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("latency", latency=100, jitter=60)
        with connect(echo_proxy.port) as sock:
            rtts = [round_trip(sock) for _ in range(8)]
        assert all(0.039 <= rtt <= 0.16 + SLACK for rtt in rtts), rtts
        assert max(rtts) - min(rtts) > 0.01  # the jitter really varies

    def test_upstream_latency_delays_what_the_client_sends(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("latency", stream="upstream", latency=150)
        with connect(echo_proxy.port) as sock:
            assert 0.145 <= round_trip(sock) <= 0.15 + SLACK

    def test_toxicity_zero_leaves_the_connection_untouched(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("latency", latency=500, toxicity=0.0)
        with connect(echo_proxy.port) as sock:
            assert round_trip(sock) < 0.1

    def test_toxicity_rolls_once_per_connection(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("latency", latency=120, toxicity=0.5)
        slow = 0
        for _ in range(12):
            with connect(echo_proxy.port) as sock:
                first, second = round_trip(sock), round_trip(sock)
            assert (first >= 0.115) == (second >= 0.115)  # the same fate for the whole connection
            slow += first >= 0.115
        assert 0 < slow < 12


class TestBandwidth:
    def test_bandwidth_caps_throughput_within_twenty_percent_of_the_rate(
        self, blast_proxy: ProxyHandle
    ) -> None:
        blast_proxy.add_toxic("bandwidth", rate=1000)  # KB/s
        count = 400_000
        data, _sizes, elapsed = fetch(blast_proxy.port, count)
        assert data == PAYLOAD[:count]
        rate = count / elapsed / 1000
        assert 800 <= rate <= 1200, f"{rate:.0f} KB/s for a 1000 KB/s toxic"

    def test_rate_zero_means_unlimited(self, blast_proxy: ProxyHandle) -> None:
        blast_proxy.add_toxic("bandwidth", rate=0)
        data, _sizes, elapsed = fetch(blast_proxy.port, len(PAYLOAD))
        assert data == PAYLOAD
        assert elapsed < 1.0


class TestClosing:
    def test_slow_close_delays_the_close_after_the_data(
        self, blast_proxy: ProxyHandle
    ) -> None:
        blast_proxy.add_toxic("slow_close", delay=300)
        with connect(blast_proxy.port) as sock:
            start = time.perf_counter()
            ask(sock, 10)
            assert sock.recv(100) == PAYLOAD[:10]
            data_at = time.perf_counter() - start
            assert sock.recv(100) == b""
            closed_at = time.perf_counter() - start
        assert data_at < 0.2
        assert 0.295 <= closed_at <= 0.3 + SLACK

    def test_timeout_drops_data_then_closes_after_the_timeout(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("timeout", timeout=300)
        with connect(echo_proxy.port) as sock:
            start = time.perf_counter()
            sock.sendall(b"ping")
            assert sock.recv(100) == b""  # nothing came back, then the proxy closed
            elapsed = time.perf_counter() - start
        assert 0.28 <= elapsed <= 0.3 + SLACK

    def test_timeout_zero_holds_the_connection_until_the_toxic_is_removed(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("timeout", name="hold", timeout=0)
        with connect(echo_proxy.port, timeout=0.4) as sock:
            sock.sendall(b"lost")
            with pytest.raises(socket.timeout):
                sock.recv(100)  # held: neither data nor close
            echo_proxy.remove_toxic("hold")
            assert round_trip(sock, b"after") < 0.2  # the same connection flows again

    def test_reset_peer_gives_the_client_econnreset(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("reset_peer", timeout=0)
        with connect(echo_proxy.port) as sock:
            sock.sendall(b"ping")
            with pytest.raises(ConnectionResetError):
                sock.recv(100)

    def test_reset_peer_waits_its_timeout_before_resetting(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("reset_peer", timeout=250)
        with connect(echo_proxy.port) as sock:
            start = time.perf_counter()
            sock.sendall(b"ping")
            with pytest.raises(ConnectionResetError):
                sock.recv(100)
            assert 0.245 <= time.perf_counter() - start <= 0.25 + SLACK

    def test_limit_data_closes_after_exactly_the_byte_count(
        self, blast_proxy: ProxyHandle
    ) -> None:
        blast_proxy.add_toxic("limit_data", bytes=1000)
        data, _sizes, _elapsed = fetch(blast_proxy.port, 50_000)
        assert data == PAYLOAD[:1000]


class TestSlicer:
    def test_slicer_delivers_the_same_bytes_in_small_pieces(
        self, blast_proxy: ProxyHandle
    ) -> None:
        blast_proxy.add_toxic("slicer", average_size=20, size_variation=10, delay=2000)
        count = 1000
        data, sizes, elapsed = fetch(blast_proxy.port, count)
        assert data == PAYLOAD[:count]
        assert len(sizes) >= 20, sizes  # ~50 pieces; a loaded reader may merge a few
        assert min(sizes) <= 30
        assert elapsed >= 0.04  # ~49 gaps of 2 ms


class TestRestore:
    def test_removing_a_toxic_restores_new_connections_at_once(
        self, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("latency", name="slow", latency=300)
        with connect(echo_proxy.port) as sock:
            assert round_trip(sock) >= 0.29
        echo_proxy.remove_toxic("slow")
        with connect(echo_proxy.port) as sock:
            assert round_trip(sock) < 0.1

    def test_reset_removes_every_toxic_and_enables_every_proxy(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        slow = proxy_server.create("slow", f"127.0.0.1:{echo_port}")
        down = proxy_server.create("down", f"127.0.0.1:{echo_port}")
        slow.add_toxic("timeout", timeout=0)
        down.disable()
        proxy_server.reset()
        assert proxy_server.toxics("slow") == []
        for proxy in (slow, down):
            with connect(proxy.port) as sock:
                assert round_trip(sock) < 0.1

    def test_a_toxic_added_to_a_live_connection_applies_to_it(
        self, echo_proxy: ProxyHandle
    ) -> None:
        with connect(echo_proxy.port) as sock:
            assert round_trip(sock) < 0.1
            with echo_proxy.toxic("latency", latency=200):
                assert round_trip(sock) >= 0.195
            assert round_trip(sock) < 0.1

    def test_disabling_refuses_connections_and_enabling_restores_them(
        self, echo_proxy: ProxyHandle
    ) -> None:
        live = connect(echo_proxy.port)
        round_trip(live)
        echo_proxy.disable()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=2)
        live.settimeout(2)
        try:
            assert live.recv(100) == b""  # open connections are dropped too
        except ConnectionResetError:
            pass
        live.close()
        echo_proxy.enable()
        with connect(echo_proxy.port) as sock:
            assert round_trip(sock) < 0.1

    def test_an_unreachable_upstream_closes_the_client(self, proxy_server: ProxyServer) -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        proxy = proxy_server.create("nowhere", f"127.0.0.1:{port}")
        with connect(proxy.port) as sock:
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass


def test_removing_a_silent_timeout_lets_the_end_of_stream_through(
    blast_proxy: ProxyHandle,
) -> None:
    """A hold-forever timeout also holds the close; removing it releases both."""
    blast_proxy.add_toxic("timeout", name="hold", timeout=0)
    with connect(blast_proxy.port, timeout=0.3) as sock:
        ask(sock, 10)  # the server answers and closes, but nothing gets through
        with pytest.raises(socket.timeout):
            sock.recv(100)
        blast_proxy.remove_toxic("hold")
        sock.settimeout(5)
        assert sock.recv(100) == b""  # the held close arrives (the held data was dropped)

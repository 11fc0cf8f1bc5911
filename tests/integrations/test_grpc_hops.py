"""The hop guard over gRPC: a chain of three real grpcio services whose bottom one is down.

Each service's handler calls the next through stoic's client interceptor (3 attempts) and
answers with the code it got. Counting the calls each service receives shows where retries
happen: without the guard they multiply (3, 9, 27), with it only one hop retries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack
from typing import Any

import grpc
import pytest

import stoic
from stoic import backoff
from stoic.integrations.grpc import ResilientInterceptor, StoicServerInterceptor

FAST = stoic.Retry(max_attempts=3, backoff=backoff.constant(0.005, max=1.0))
CALL = "/chain.Hop/Call"


class Chain:
    """Three services, top to bottom; ``calls`` counts what each received. No per-host
    breakers: they would open during the 27 calls and hide the retries being counted."""

    def __init__(self, guard: bool | str) -> None:
        self.calls = {"top": 0, "middle": 0, "bottom": 0}
        self.lock = threading.Lock()
        self.stack = ExitStack()
        bottom = self._serve("bottom", None, guard)
        middle = self._serve("middle", bottom, guard)
        self.top = self._serve("top", middle, guard)

    def _serve(self, name: str, below: str | None, guard: bool | str) -> str:
        channel = None
        if below is not None:
            channel = self.stack.enter_context(grpc.intercept_channel(
                grpc.insecure_channel(below), ResilientInterceptor(below, policy=FAST, per_host=False)))

        def handle(request: bytes, context: Any) -> bytes:
            with self.lock:
                self.calls[name] += 1
            if channel is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the bottom is down")
            try:
                return bytes(channel.unary_unary(CALL)(request, timeout=5))
            except grpc.RpcError as exc:  # answer with the code the call below ended with
                context.abort(exc.code(), f"{name}: {exc.details()}")

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            interceptors=[StoicServerInterceptor(name, "1", hop_guard=guard)],
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "chain.Hop", {"Call": grpc.unary_unary_rpc_method_handler(handle)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.stack.callback(server.stop, None)
        return f"127.0.0.1:{port}"

    def call_top(self) -> grpc.RpcError:
        client = ResilientInterceptor(self.top, policy=FAST, per_host=False)
        with grpc.intercept_channel(grpc.insecure_channel(self.top), client) as channel, \
                pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(CALL)(b"x", timeout=10)
        return info.value


@pytest.fixture
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    made = Chain(request.param)
    try:
        yield made
    finally:
        made.stack.close()


@pytest.mark.parametrize("chain", [False], indirect=True)
def test_without_the_guard_retries_multiply_down_the_chain(chain: Chain) -> None:
    error = chain.call_top()
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert chain.calls == {"top": 3, "middle": 9, "bottom": 27}


@pytest.mark.parametrize("chain", [True], indirect=True)
def test_with_the_guard_only_the_edge_retries(chain: Chain) -> None:
    error = chain.call_top()
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert chain.calls == {"top": 3, "middle": 3, "bottom": 3}


@pytest.mark.parametrize("chain", ["deepest"], indirect=True)
def test_deepest_retries_next_to_the_failure_and_marks_it_on_the_way_up(chain: Chain) -> None:
    with stoic.context.hop(deepest=True):
        error = chain.call_top()
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert chain.calls == {"top": 1, "middle": 1, "bottom": 3}
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["x-stoic-retried"] == "1"
    assert trailers["grpc-retry-pushback-ms"] == "-1"  # any gRPC client: do not retry


@pytest.mark.parametrize("chain", ["deepest"], indirect=True)
def test_deepest_servers_retry_at_the_bottom_for_a_caller_that_sent_nothing(
    chain: Chain,
) -> None:
    with grpc.insecure_channel(chain.top) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(CALL)(b"x", timeout=10)  # a plain client: no stoic entries
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert chain.calls == {"top": 1, "middle": 1, "bottom": 3}


def test_hop_guard_is_checked() -> None:
    with pytest.raises(ValueError, match="hop_guard"):
        StoicServerInterceptor("s", "1", hop_guard="edge")


async def test_deepest_over_grpc_aio_servers_and_clients() -> None:
    import grpc.aio

    from stoic.integrations.grpc import ResilientAioInterceptor, StoicAioServerInterceptor

    calls = {"top": 0, "middle": 0, "bottom": 0}
    servers: list[Any] = []
    channels: list[Any] = []

    async def serve(name: str, below: str | None) -> str:
        channel = None
        if below is not None:
            channel = grpc.aio.insecure_channel(below, interceptors=[
                ResilientAioInterceptor(below, policy=FAST, per_host=False)])
            channels.append(channel)

        async def handle(request: bytes, context: Any) -> bytes:
            calls[name] += 1
            if channel is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the bottom is down")
            try:
                return bytes(await channel.unary_unary(CALL)(request, timeout=5))
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), f"{name}: {exc.details()}")
            raise AssertionError("not reached")

        server = grpc.aio.server(interceptors=[
            StoicAioServerInterceptor(name, "1", hop_guard="deepest")])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "chain.Hop", {"Call": grpc.unary_unary_rpc_method_handler(handle)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    try:
        top = await serve("top", await serve("middle", await serve("bottom", None)))
        edge = grpc.aio.insecure_channel(top, interceptors=[
            ResilientAioInterceptor(top, policy=FAST, per_host=False)])
        channels.append(edge)
        with stoic.context.hop(deepest=True), pytest.raises(grpc.aio.AioRpcError) as info:
            await edge.unary_unary(CALL)(b"x", timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert calls == {"top": 1, "middle": 1, "bottom": 3}
        trailers = dict(info.value.trailing_metadata() or ())
        assert trailers["x-stoic-retried"] == "1"
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)

"""gRPC interceptors on real grpcio servers and channels on loopback (sync and asyncio)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

import stoic
from stoic import backoff
from stoic.idempotency import MemoryStore
from stoic.integrations.grpc import (
    ResilientAioInterceptor,
    ResilientInterceptor,
    StoicAioServerInterceptor,
    StoicServerInterceptor,
)
from stoic.outcome import Outcome, classify
from support import free_port

FAST = stoic.Retry(max_attempts=3, backoff=backoff.constant(0.01, max=5.0))
PAY = "/test.Shop/Pay"
GET = "/test.Shop/Get"


@dataclass
class Act:
    code: grpc.StatusCode | None = None
    trailers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    crash: bool = False  # do the work, then fail with UNKNOWN: the reply is lost


@dataclass
class Hit:
    method: str
    metadata: dict[str, str]
    remaining: float | None
    request: bytes
    at: float = field(default_factory=time.monotonic)


class Shop:
    """A scriptable servicer: what each method answers next, and what arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script: dict[str, list[Act]] = {}
        self.hits: list[Hit] = []
        self.done: list[bytes] = []  # work that completed (ran to the end of the handler)

    def answer(self, name: str, *acts: Act) -> None:
        with self.lock:
            self.script[name] = list(acts)

    def seen(self, name: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.method == name]

    def _next(self, name: str, context: Any, request: bytes) -> Act:
        with self.lock:
            self.hits.append(Hit(name, dict(context.invocation_metadata()), stoic.remaining(),
                                 request))
            queue = self.script.get(name) or [Act()]
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def handler(self, name: str) -> Any:
        def handle(request: bytes, context: Any) -> bytes:
            act = self._next(name, context, request)
            if act.delay:
                time.sleep(act.delay)
            return self._finish(act, request, context)

        return handle

    def async_handler(self, name: str) -> Any:
        async def handle(request: bytes, context: Any) -> bytes:
            act = self._next(name, context, request)
            if act.delay:
                await asyncio.sleep(act.delay)
            if act.code is not None:
                context.set_trailing_metadata(act.trailers)
                await context.abort(act.code, "scripted")
            return self._finish(act, request, context)

        return handle

    def _finish(self, act: Act, request: bytes, context: Any) -> bytes:
        if act.code is not None:
            context.set_trailing_metadata(act.trailers)
            context.abort(act.code, "scripted")
        with self.lock:
            self.done.append(request)
        if act.crash:
            raise RuntimeError("the reply is lost")
        return b"ok:" + request


def generic(shop: Shop, async_: bool = False) -> grpc.GenericRpcHandler:
    make = shop.async_handler if async_ else shop.handler
    return grpc.method_handlers_generic_handler("test.Shop", {
        name: grpc.unary_unary_rpc_method_handler(make(name)) for name in ("Pay", "Get")
    })


@dataclass
class Served:
    shop: Shop
    target: str
    store: MemoryStore


@pytest.fixture(scope="module")
def _server() -> Iterator[Served]:
    shop, store = Shop(), MemoryStore()
    server = grpc.server(
        futures.ThreadPoolExecutor(8),
        interceptors=[StoicServerInterceptor("shop", "1", store=store,
                                             bulkhead=stoic.Bulkhead(4))],
    )
    server.add_generic_rpc_handlers((generic(shop),))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield Served(shop, f"127.0.0.1:{port}", store)
    finally:
        server.stop(0)


@pytest.fixture
def served(_server: Served) -> Served:
    with _server.shop.lock:
        _server.shop.script.clear()
        _server.shop.hits.clear()
        _server.shop.done.clear()
    return _server


def channel(served: Served, **kwargs: Any) -> grpc.Channel:
    kwargs.setdefault("policy", FAST)
    return grpc.intercept_channel(
        grpc.insecure_channel(served.target), ResilientInterceptor(served.target, **kwargs)
    )


class TestClientRetries:
    def test_unavailable_is_retried_until_it_succeeds(self, served: Served) -> None:
        unavailable = Act(grpc.StatusCode.UNAVAILABLE)
        served.shop.answer("Get", unavailable, unavailable, Act())
        with channel(served) as ch:
            assert ch.unary_unary(GET)(b"x") == b"ok:x"
        assert len(served.shop.seen("Get")) == 3

    def test_invalid_argument_is_not_retried(self, served: Served) -> None:
        served.shop.answer("Get", Act(grpc.StatusCode.INVALID_ARGUMENT))
        with channel(served) as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(GET)(b"x")
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert len(served.shop.seen("Get")) == 1

    def test_server_pushback_is_waited_out(self, served: Served) -> None:
        busy = Act(grpc.StatusCode.RESOURCE_EXHAUSTED, (("grpc-retry-pushback-ms", "300"),))
        served.shop.answer("Get", busy, Act())
        with channel(served) as ch:
            assert ch.unary_unary(GET)(b"x") == b"ok:x"
        hits = served.shop.seen("Get")
        assert len(hits) == 2 and hits[1].at - hits[0].at >= 0.29

    def test_negative_pushback_stops_the_retries(self, served: Served) -> None:
        served.shop.answer("Get", Act(grpc.StatusCode.UNAVAILABLE,
                                      (("grpc-retry-pushback-ms", "-1"),)), Act())
        with channel(served) as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(GET)(b"x")
        assert classify(info.value).outcome is Outcome.PERMANENT
        assert len(served.shop.seen("Get")) == 1


class TestLostReply:
    def test_unknown_outcome_without_a_key_is_not_retried(self, served: Served) -> None:
        served.shop.answer("Pay", Act(crash=True), Act())
        with channel(served, idempotency_keys=False) as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(PAY)(b"order-1")
        assert info.value.code() is grpc.StatusCode.UNKNOWN
        hits = served.shop.seen("Pay")
        assert len(hits) == 1 and "idempotency-key" not in hits[0].metadata

    def test_unknown_outcome_on_an_idempotent_method_is_retried(self, served: Served) -> None:
        served.shop.answer("Get", Act(crash=True), Act())
        with channel(served, idempotency_keys=False, idempotent_methods={GET}) as ch:
            assert ch.unary_unary(GET)(b"x") == b"ok:x"
        assert len(served.shop.seen("Get")) == 2

    def test_lost_reply_with_a_key_is_retried_and_the_work_runs_once(
        self, served: Served
    ) -> None:
        # The first attempt does the work but its reply comes after the call's timeout; the
        # retries carry the same key, wait while it is in flight (ABORTED), then get the
        # stored reply: the server did the work once.
        served.shop.answer("Pay", Act(delay=0.6), Act())
        policy = stoic.Retry(max_attempts=8, backoff=backoff.constant(0.2, max=5.0))
        with channel(served, policy=policy) as ch:
            assert ch.unary_unary(PAY)(b"order-2", timeout=0.3) == b"ok:order-2"
        hits = served.shop.seen("Pay")
        keys = {h.metadata["idempotency-key"] for h in hits}
        assert len(keys) == 1
        assert served.shop.done == [b"order-2"]

    def test_same_key_with_another_request_is_refused(self, served: Served) -> None:
        with channel(served, idempotency_keys=False) as ch:
            pay = ch.unary_unary(PAY)
            assert pay(b"a", metadata=(("idempotency-key", "k-mismatch"),)) == b"ok:a"
            with pytest.raises(grpc.RpcError) as info:
                pay(b"b", metadata=(("idempotency-key", "k-mismatch"),))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


class TestDeadlines:
    def test_deadline_travels_and_is_bound_on_the_server(self, served: Served) -> None:
        with channel(served) as ch, stoic.deadline(2.0):
            ch.unary_unary(GET)(b"deadline-travels")
        [hit] = [h for h in served.shop.seen("Get") if h.request == b"deadline-travels"]
        assert hit.remaining is not None and 0 < hit.remaining <= 2.0
        assert 0 < int(hit.metadata["x-request-timeout-ms"]) <= 2000

    def test_the_callers_stated_time_left_bounds_a_longer_grpc_deadline(
        self, served: Served
    ) -> None:
        with grpc.insecure_channel(served.target) as ch:
            ch.unary_unary(GET)(b"stated", timeout=5.0,
                                metadata=(("x-request-timeout-ms", "500"),))
            ch.unary_unary(GET)(b"garbled", timeout=5.0,
                                metadata=(("x-request-timeout-ms", "soon"),))
        [stated] = [h for h in served.shop.seen("Get") if h.request == b"stated"]
        assert stated.remaining is not None and 0 < stated.remaining <= 0.5
        [garbled] = [h for h in served.shop.seen("Get") if h.request == b"garbled"]
        assert garbled.remaining is not None and 4.0 < garbled.remaining <= 5.1

    def test_slow_server_ends_the_call_at_the_deadline(self, served: Served) -> None:
        served.shop.answer("Get", Act(delay=2.0))
        started = time.monotonic()
        with channel(served) as ch, stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded) as info:
            ch.unary_unary(GET)(b"x")
        assert time.monotonic() - started < 1.5
        assert isinstance(info.value.__cause__, grpc.RpcError)
        assert len(served.shop.seen("Get")) == 1

    def test_no_call_starts_after_the_deadline(self, served: Served) -> None:
        with channel(served) as ch, stoic.deadline(0.0), pytest.raises(stoic.DeadlineExceeded):
            ch.unary_unary(GET)(b"x")
        assert served.shop.seen("Get") == []

    def test_request_id_goes_out_and_comes_back(self, served: Served) -> None:
        with channel(served) as ch, stoic.context.bind(request_id="req-77"):
            _, call = ch.unary_unary(GET).with_call(b"x")
        assert served.shop.seen("Get")[0].metadata["x-request-id"] == "req-77"
        assert ("x-request-id", "req-77") in tuple(call.trailing_metadata())


class TestBreaker:
    def test_open_breaker_makes_no_call(self, served: Served) -> None:
        with channel(served) as ch:
            interceptor_breaker = stoic.breakers.get(f"grpc:{served.target}")
            assert interceptor_breaker is None  # built on first use
            ch.unary_unary(GET)(b"x")
            breaker = stoic.breakers[f"grpc:{served.target}"]
            breaker.force_open()
            with pytest.raises(stoic.CircuitOpenError):
                ch.unary_unary(GET)(b"y")
        assert [h.request for h in served.shop.seen("Get")] == [b"x"]


class TestServerShedding:
    def test_full_bulkhead_answers_resource_exhausted_with_pushback(self) -> None:
        shop = Shop()
        shop.answer("Get", Act(delay=0.5))
        server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[
            StoicServerInterceptor("shop", "1", bulkhead=stoic.Bulkhead(1))])
        server.add_generic_rpc_handlers((generic(shop),))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                get = ch.unary_unary(GET)
                first = get.future(b"slow")
                time.sleep(0.2)
                with pytest.raises(grpc.RpcError) as info:
                    get(b"shed")
                assert first.result() == b"ok:slow"
        finally:
            server.stop(0)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("grpc-retry-pushback-ms", "1000") in tuple(info.value.trailing_metadata())
        assert classify(info.value).retry_after == 1.0


class TestAsyncio:
    async def test_aio_client_retries_and_propagates(self, served: Served) -> None:
        served.shop.answer("Get", Act(grpc.StatusCode.UNAVAILABLE), Act())
        interceptor = ResilientAioInterceptor(served.target, policy=FAST)
        aio_channel = grpc.aio.insecure_channel(served.target, interceptors=[interceptor])
        async with aio_channel as ch, stoic.deadline(2.0):
            assert await ch.unary_unary(GET)(b"x") == b"ok:x"
        hits = served.shop.seen("Get")
        assert len(hits) == 2
        assert hits[1].remaining is not None and hits[1].remaining <= 2.0

    async def test_aio_client_does_not_retry_a_lost_reply_without_a_key(
        self, served: Served
    ) -> None:
        served.shop.answer("Pay", Act(crash=True), Act())
        interceptor = ResilientAioInterceptor(served.target, policy=FAST, idempotency_keys=False)
        async with grpc.aio.insecure_channel(served.target, interceptors=[interceptor]) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary(PAY)(b"p")
        assert len(served.shop.seen("Pay")) == 1

    async def test_aio_client_ends_the_call_at_the_deadline(self, served: Served) -> None:
        served.shop.answer("Get", Act(delay=2.0))
        interceptor = ResilientAioInterceptor(served.target, policy=FAST)
        started = time.monotonic()
        aio_channel = grpc.aio.insecure_channel(served.target, interceptors=[interceptor])
        async with aio_channel as ch, stoic.deadline(0.3):
            with pytest.raises(stoic.DeadlineExceeded):
                await ch.unary_unary(GET)(b"x")
        assert time.monotonic() - started < 1.5

    async def test_aio_server_binds_the_deadline_and_runs_a_keyed_call_once(self) -> None:
        shop = Shop()
        server = grpc.aio.server(interceptors=[
            StoicAioServerInterceptor("shop", "1", store=MemoryStore())])
        server.add_generic_rpc_handlers((generic(shop, async_=True),))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        target = f"127.0.0.1:{port}"
        try:
            interceptor = ResilientAioInterceptor(target, policy=FAST)
            async with grpc.aio.insecure_channel(target, interceptors=[interceptor]) as ch:
                pay = ch.unary_unary(PAY)
                async with stoic.deadline(2.0):
                    first = await pay(b"o", metadata=(("idempotency-key", "aio-k1"),))
                again = await pay(b"o", metadata=(("idempotency-key", "aio-k1"),))
        finally:
            await server.stop(0)
        assert first == again == b"ok:o"
        assert shop.done == [b"o"]
        hit = shop.seen("Pay")[0]
        assert hit.remaining is not None and 0 < hit.remaining <= 2.0


class TestConfiguration:
    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [({"target": ""}, "target"), ({"idempotent_methods": "Get"}, "idempotent_methods"),
         ({"idempotent_methods": ["Get"]}, "idempotent_methods"), ({"policy": 1}, "policy")],
    )
    def test_bad_client_configuration_names_the_parameter(self, kwargs: dict, name: str) -> None:
        kwargs.setdefault("target", "127.0.0.1:1")
        with pytest.raises(ValueError, match=name):
            ResilientInterceptor(**kwargs)

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [({"service": ""}, "service"), ({"max_deadline": -1}, "max_deadline"),
         ({"bulkhead": 3}, "bulkhead"), ({"request_id_header": "a b"}, "request_id_header")],
    )
    def test_bad_server_configuration_names_the_parameter(self, kwargs: dict, name: str) -> None:
        kwargs.setdefault("service", "s")
        kwargs.setdefault("version", "1")
        with pytest.raises(ValueError, match=name):
            StoicServerInterceptor(**kwargs)


class TestStreams:
    def test_a_stream_gets_the_deadline_and_request_id_and_no_retry(self) -> None:
        seen: list[tuple[float, dict[str, str]]] = []

        def items(request: bytes, context: Any) -> Iterator[bytes]:
            seen.append((context.time_remaining(), dict(context.invocation_metadata())))
            if len(seen) == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            yield b"one"

        server = grpc.server(futures.ThreadPoolExecutor(2),
                             interceptors=[StoicServerInterceptor("shop", "1")])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Shop", {"Items": grpc.unary_stream_rpc_method_handler(items)}),))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        target = f"127.0.0.1:{port}"
        try:
            ch = grpc.intercept_channel(grpc.insecure_channel(target),
                                        ResilientInterceptor(target, policy=FAST))
            with ch, stoic.deadline(2.0), stoic.context.bind(request_id="s-1"), pytest.raises(
                grpc.RpcError
            ) as info:
                list(ch.unary_stream("/test.Shop/Items")(b"x"))
        finally:
            server.stop(0)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert len(seen) == 1  # a stream is never replayed
        left, metadata = seen[0]
        assert 0 < left <= 2.0 and metadata["x-request-id"] == "s-1"

"""What stoic's HTTP transport costs per request, next to a loopback round trip.

Starts a minimal uvicorn service in a subprocess on a free loopback port, then, in one run,
sends sequential GETs with:

- plain ``httpx.Client`` (the baseline),
- ``httpx.Client(transport=ResilientTransport())`` with stoic's defaults (Retry with budget,
  a per-host circuit breaker, deadline and request-id propagation), happy path,
- the same inside ``stoic.deadline(5)`` (timeouts shrunk per attempt, header sent),
- plain ``requests.Session`` and one with ``ResilientAdapter``,
- plain ``aiohttp.ClientSession`` and one with ``ResilientMiddleware`` (same service),
- plain gRPC unary calls (sync and ``grpc.aio``) to a grpcio server in a second subprocess,
  and the same through ``ResilientInterceptor`` / ``ResilientAioInterceptor``,

rounds interleaved so drift on a shared machine hits every variant alike. It prints
requests/s and p50/p99 latency, and the overhead per request against the baseline. A second
table measures the transport alone over an in-memory inner transport, which isolates stoic's
own cost from network noise.

    .venv/bin/python benchmarks/http_overhead.py            # ~1 min
    .venv/bin/python benchmarks/http_overhead.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import requests

import stoic
from stoic.integrations.httpx import ResilientTransport
from stoic.integrations.requests import ResilientAdapter


async def app(scope: dict, receive: Callable, send: Callable) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def serve_grpc(port: int) -> None:
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                lifespan="off", http="h11")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(mode: str = "--serve") -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, mode, str(port)])
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("benchmark server did not start")
        yield f"http://127.0.0.1:{port}/" if mode == "--serve" else f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def timed(send: Callable[[], object], n: int, into: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        send()
        into.append(clock() - start)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loopback(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    plain = httpx.Client()
    resilient = httpx.Client(transport=ResilientTransport())
    session = requests.Session()
    adapted = requests.Session()
    adapted.mount("http://", ResilientAdapter())

    def with_deadline() -> object:
        with stoic.deadline(5.0):
            return resilient.get(url)

    variants: dict[str, Callable[[], object]] = {
        "httpx plain": lambda: plain.get(url),
        "httpx + ResilientTransport": lambda: resilient.get(url),
        "httpx + ResilientTransport, deadline": with_deadline,
        "requests plain": lambda: session.get(url, timeout=10),
        "requests + ResilientAdapter": lambda: adapted.get(url),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for send in variants.values():  # warm up connections and code paths
        timed(send, 200, [])
    for _ in range(rounds):
        for name, send in variants.items():
            timed(send, n, samples[name])
    for closable in (plain, resilient, session, adapted):
        closable.close()
    return samples


def aiohttp_loopback(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    import asyncio

    import aiohttp

    from stoic.integrations.aiohttp import ResilientMiddleware

    async def run() -> dict[str, list[float]]:
        clock = time.perf_counter
        async with aiohttp.ClientSession() as plain, aiohttp.ClientSession(
            middlewares=(ResilientMiddleware(),)
        ) as resilient:
            async def get(session: aiohttp.ClientSession) -> None:
                async with session.get(url) as response:
                    await response.read()

            async def get_deadline() -> None:
                async with stoic.deadline(5.0):
                    await get(resilient)

            variants = {
                "aiohttp plain": lambda: get(plain),
                "aiohttp + ResilientMiddleware": lambda: get(resilient),
                "aiohttp + ResilientMiddleware, deadline": get_deadline,
            }
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for send in variants.values():
                for _ in range(200):
                    await send()
            for _ in range(rounds):
                for name, send in variants.items():
                    into = samples[name]
                    for _ in range(n):
                        start = clock()
                        await send()
                        into.append(clock() - start)
            return samples

    return asyncio.run(run())


def grpc_loopback(target: str, n: int, rounds: int) -> dict[str, list[float]]:
    import asyncio

    import grpc
    import grpc.aio

    from stoic.integrations.grpc import ResilientAioInterceptor, ResilientInterceptor

    plain = grpc.insecure_channel(target)
    resilient = grpc.intercept_channel(grpc.insecure_channel(target), ResilientInterceptor(target))
    echo_plain = plain.unary_unary("/bench.Echo/Echo")
    echo_resilient = resilient.unary_unary("/bench.Echo/Echo")

    def with_deadline() -> object:
        with stoic.deadline(5.0):
            return echo_resilient(b"ok")

    variants: dict[str, Callable[[], object]] = {
        "grpc plain": lambda: echo_plain(b"ok"),
        "grpc + ResilientInterceptor": lambda: echo_resilient(b"ok"),
        "grpc + ResilientInterceptor, deadline": with_deadline,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for send in variants.values():
        timed(send, 200, [])
    for _ in range(rounds):
        for name, send in variants.items():
            timed(send, n, samples[name])
    plain.close()
    resilient.close()

    async def aio() -> dict[str, list[float]]:
        clock = time.perf_counter
        async with grpc.aio.insecure_channel(target) as a_plain, grpc.aio.insecure_channel(
            target, interceptors=[ResilientAioInterceptor(target)]
        ) as a_resilient:
            calls = {"grpc.aio plain": a_plain.unary_unary("/bench.Echo/Echo"),
                     "grpc.aio + ResilientAioInterceptor":
                         a_resilient.unary_unary("/bench.Echo/Echo")}
            out: dict[str, list[float]] = {name: [] for name in calls}
            for call in calls.values():
                for _ in range(200):
                    await call(b"ok")
            for _ in range(rounds):
                for name, call in calls.items():
                    into = out[name]
                    for _ in range(n):
                        start = clock()
                        await call(b"ok")
                        into.append(clock() - start)
            return out

    samples.update(asyncio.run(aio()))
    return samples


def in_memory(n: int) -> dict[str, float]:
    """Seconds per request through the transport alone, over an in-memory inner transport."""

    ready = httpx.Response(200, content=b"ok")

    class Canned(httpx.BaseTransport):  # returns one prebuilt response: its own cost is ~0
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return ready

    transports = {
        "inner transport alone": Canned(),
        "ResilientTransport(per_host=False)": ResilientTransport(Canned(), per_host=False),
        "ResilientTransport()": ResilientTransport(Canned()),
        "ResilientTransport(), in stoic.deadline": _Deadlined(ResilientTransport(Canned())),
    }
    request = httpx.Request("GET", "http://svc.internal/")
    results = dict.fromkeys(transports, float("inf"))
    for _ in range(15):  # interleaved repeats, best of each: the least disturbed run
        for name, transport in transports.items():
            start = time.perf_counter()
            for _ in range(n):
                transport.handle_request(request)
            results[name] = min(results[name], (time.perf_counter() - start) / n)
    return results


def client_alone(n: int) -> dict[str, float]:
    """Seconds per call through the aiohttp middleware and the gRPC interceptor alone, with an
    in-memory handler (aiohttp) or continuation (gRPC) that answers at once."""
    import asyncio
    import collections

    from multidict import CIMultiDict
    from yarl import URL

    from stoic.integrations.aiohttp import ResilientMiddleware
    from stoic.integrations.grpc import ResilientInterceptor

    class Answer:  # an aiohttp response and a finished gRPC call, as far as stoic looks
        status = 200
        headers: CIMultiDict[str] = CIMultiDict()

        def result(self) -> bytes:
            return b"ok"

    answer = Answer()

    class Request:
        def __init__(self) -> None:
            self.method, self.url, self.body = "GET", URL("http://svc.internal/"), b""
            self.headers: CIMultiDict[str] = CIMultiDict()

    async def handler(request: object) -> Answer:
        return answer

    def continuation(details: object, request: object) -> Answer:
        return answer

    Details = collections.namedtuple(
        "Details", "method timeout metadata credentials wait_for_ready compression")
    details = Details("/bench.Echo/Echo", None, None, None, None, None)
    middlewares = {"aiohttp handler alone": None,
                   "ResilientMiddleware(per_host=False)": ResilientMiddleware(per_host=False),
                   "ResilientMiddleware()": ResilientMiddleware()}
    interceptors = {"grpc continuation alone": None,
                    "ResilientInterceptor(per_host=False)":
                        ResilientInterceptor("svc:1", per_host=False),
                    "ResilientInterceptor()": ResilientInterceptor("svc:1")}
    results = dict.fromkeys([*middlewares, *interceptors], float("inf"))

    async def aiohttp_round() -> None:
        for name, mw in middlewares.items():
            request = Request()
            start = time.perf_counter()
            if mw is None:
                for _ in range(n):
                    await handler(request)
            else:
                for _ in range(n):
                    await mw(request, handler)
            results[name] = min(results[name], (time.perf_counter() - start) / n)

    for _ in range(15):
        asyncio.run(aiohttp_round())
        for name, interceptor in interceptors.items():
            start = time.perf_counter()
            if interceptor is None:
                for _ in range(n):
                    continuation(details, b"ok").result()
            else:
                for _ in range(n):
                    interceptor.intercept_unary_unary(continuation, details, b"ok")
            results[name] = min(results[name], (time.perf_counter() - start) / n)
    return results


class _Deadlined(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with stoic.deadline(5.0):
            return self.inner.handle_request(request)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--serve-grpc", type=int)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.serve_grpc:
        serve_grpc(args.serve_grpc)
        return
    n, rounds = (300, 2) if args.quick else (1000, 4)
    with server() as url:
        samples = loopback(url, n, rounds)
        samples.update(aiohttp_loopback(url, n, rounds))
    with server("--serve-grpc") as target:
        samples.update(grpc_loopback(target, n, rounds))
    print(f"\nsequential calls over loopback, {n * rounds} per variant, {rounds} interleaved rounds")
    print(f"{'variant':40} {'req/s':>8} {'p50 us':>8} {'p99 us':>8} {'p50 overhead':>13}")
    for name, values in samples.items():
        p50 = statistics.median(values)
        baseline = name.split(" + ")[0].split(" plain")[0] + " plain"
        ref = statistics.median(samples[baseline])
        print(f"{name:40} {len(values) / sum(values):8.0f} {p50 * 1e6:8.0f} "
              f"{percentile(values, 0.99) * 1e6:8.0f} {(p50 - ref) * 1e6:+9.0f} us "
              f"({p50 / ref:.2f}x)")
    costs = in_memory(500 if args.quick else 4000)
    alone = costs["inner transport alone"]
    print("\ntransport alone (in-memory inner transport, best of 15 interleaved runs)")
    for name, seconds in costs.items():
        print(f"{name:40} {seconds * 1e6:8.1f} us/request  (+{(seconds - alone) * 1e6:.1f} us)")
    alone_costs = client_alone(500 if args.quick else 4000)
    print("\naiohttp middleware and gRPC interceptor alone (in-memory handler, best of 15 runs)")
    for name, seconds in alone_costs.items():
        floor = alone_costs["aiohttp handler alone" if "iddleware" in name or "aiohttp" in name
                            else "grpc continuation alone"]
        print(f"{name:40} {seconds * 1e6:8.1f} us/call     (+{(seconds - floor) * 1e6:.1f} us)")


if __name__ == "__main__":
    main()

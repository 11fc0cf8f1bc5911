"""What stoic's HTTP transport costs per request, next to a loopback round trip.

Starts a minimal uvicorn service in a subprocess on a free loopback port, then, in one run,
sends sequential GETs with:

- plain ``httpx.Client`` (the baseline),
- ``httpx.Client(transport=ResilientTransport())`` with stoic's defaults (Retry with budget,
  a per-host circuit breaker, deadline and request-id propagation), happy path,
- the same inside ``stoic.deadline(5)`` (timeouts shrunk per attempt, header sent),
- plain ``requests.Session`` and one with ``ResilientAdapter``,

rounds interleaved so drift on a shared machine hits every variant alike. It prints
requests/s and p50/p99 latency, and the overhead per request against the baseline. A second
table measures the transport alone over an in-memory inner transport, which isolates stoic's
own cost from network noise.

    .venv/bin/python benchmarks/http_overhead.py            # ~30 s
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


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                lifespan="off", http="h11")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
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
        yield f"http://127.0.0.1:{port}/"
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


class _Deadlined(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with stoic.deadline(5.0):
            return self.inner.handle_request(request)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    n, rounds = (300, 2) if args.quick else (1000, 4)
    with server() as url:
        samples = loopback(url, n, rounds)
    base = statistics.median(samples["httpx plain"])
    rbase = statistics.median(samples["requests plain"])
    print(f"\nsequential GETs over loopback, {n * rounds} per variant, {rounds} interleaved rounds")
    print(f"{'variant':40} {'req/s':>8} {'p50 us':>8} {'p99 us':>8} {'p50 overhead':>13}")
    for name, values in samples.items():
        p50 = statistics.median(values)
        ref = rbase if name.startswith("requests") else base
        print(f"{name:40} {len(values) / sum(values):8.0f} {p50 * 1e6:8.0f} "
              f"{percentile(values, 0.99) * 1e6:8.0f} {(p50 - ref) * 1e6:+9.0f} us "
              f"({p50 / ref:.2f}x)")
    costs = in_memory(500 if args.quick else 4000)
    alone = costs["inner transport alone"]
    print("\ntransport alone (in-memory inner transport, best of 15 interleaved runs)")
    for name, seconds in costs.items():
        print(f"{name:40} {seconds * 1e6:8.1f} us/request  (+{(seconds - alone) * 1e6:.1f} us)")


if __name__ == "__main__":
    main()

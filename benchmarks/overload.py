"""Overload: the same capacity drop through four ways of limiting load, in one run.

    .venv/bin/python benchmarks/overload.py [--healthy 6] [--degraded 16] [--rate 60] [--deadline 1]

A service with 16 workers of 100 ms each (160 requests/s) serves an open-loop load of
``--rate`` requests/s (default 60: 20% critical, 20% default, 60% sheddable, each with a
1 s deadline sent as ``X-Request-Timeout-Ms`` and enforced by the client). After
``--healthy`` seconds the capacity drops 4x (4 workers: 40 requests/s, so the load is 1.5x
capacity). The service runs in its own uvicorn process, one of:

(a) ``none``: no limit; requests queue for a worker.
(b) ``bulkhead``: ``StoicMiddleware(bulkhead=stoic.Bulkhead(16))``, sized for the healthy
    capacity (503 when full).
(c) ``uvicorn``: uvicorn's ``--limit-concurrency 16`` (503 beyond it).
(d) ``stoic``: ``stoic.integrations.asgi.LoadShedder`` with its defaults (adaptive limit,
    priorities from ``X-Priority``).

Reported for the degraded phase, from 4 s after the drop: goodput (answers 200 within the
deadline per second) as a fraction of the degraded capacity, the same counting only answers
within 2x the healthy p99 (the latency a caller was promised), admitted p50/p99 against the
healthy p99 (the median of the four runs' healthy p99: the service is the same in each until
the drop), outcomes by priority (ok / 503 / 504 / timed out), and the time after the drop
until the admitted p99 over 1 s windows stays under 2x that healthy p99 ("settled"). A row
ends with stoic's goodput divided by that row's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKERS = 16
DEGRADED = 4
SERVICE_TIME = 0.1
DEADLINE = 1.0
MIX = (("critical", 2), ("default", 2), ("sheddable", 6))
MODES = ("none", "bulkhead", "uvicorn", "stoic")
SETTLE = 4.0
STALL = 0.025  # seconds: an event-loop wake-up later than this is a stall of the service

# --- the service (run in a subprocess: ``overload.py serve MODE PORT``) ----------------------


class Workers:
    """N workers; a request holds one for SERVICE_TIME, queueing when all are busy."""

    def __init__(self) -> None:
        self.workers = WORKERS
        self.busy = 0
        self.changed: asyncio.Condition | None = None

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if self.changed is None:
            self.changed = asyncio.Condition()
        async with self.changed:
            await self.changed.wait_for(lambda: self.busy < self.workers)
            self.busy += 1
        try:
            await asyncio.sleep(SERVICE_TIME)
        finally:
            async with self.changed:
                self.busy -= 1
                self.changed.notify_all()
        await _reply(send, 200, b"done")

    async def resize(self, workers: int) -> None:
        self.workers = workers
        if self.changed is not None:
            async with self.changed:
                self.changed.notify_all()


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(mode: str, port: int) -> None:
    import uvicorn

    import stoic
    from stoic.integrations.asgi import LoadShedder, StoicMiddleware

    pool = Workers()
    work: Any = pool.app
    shedder = None
    if mode == "bulkhead":
        work = StoicMiddleware(work, service="bench", version="1", bulkhead=stoic.Bulkhead(WORKERS))
    elif mode == "stoic":
        work = shedder = LoadShedder(work)

    served: list[tuple[float, str, int, float]] = []
    stalls: list[tuple[float, float]] = []
    monitor: list[asyncio.Task[None]] = []

    async def watch_loop() -> None:
        """Record the stretches when this process's event loop ran late (the machine's other
        work starving it, or a GC pause): every request in flight then is late alike."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            after = time.monotonic()
            if after - before > STALL:
                stalls.append((before, after))

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        """``work``, with the time the server took (admission included) kept per request."""
        began = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the load generator's
        status = 0

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await work(scope, receive, watch)
        priority = dict(scope["headers"]).get(b"x-priority", b"").decode()
        served.append((began, priority, status, time.monotonic() - began))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not monitor:
            monitor.append(asyncio.create_task(watch_loop()))
        if scope["path"] == "/served":
            await _reply(send, 200, json.dumps(served).encode())
        elif scope["path"] == "/stalls":
            await _reply(send, 200, json.dumps(stalls).encode())
        elif scope["path"] == "/capacity":
            await pool.resize(int(scope["query_string"].decode().split("=")[1]))
            await _reply(send, 200, b"ok")
        elif scope["path"] == "/stats":
            limit = shedder.limit.limit if shedder is not None else None
            await _reply(send, 200, json.dumps({"limit": limit}).encode())
        else:
            await timed(scope, receive, send)

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="off",
        limit_concurrency=WORKERS if mode == "uvicorn" else None,
    )


# --- the load --------------------------------------------------------------------------------


class Connections:
    """Kept-alive HTTP/1.1 connections on raw asyncio streams: far cheaper than an HTTP
    client library, so the load generator does not starve the machine it measures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            status = int((await reader.readline()).split()[1])
            length, keep = 0, True
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and b"close" in value.lower():
                    keep = False
            body = await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.CancelledError):
            writer.close()
            raise
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status, body


@dataclass
class Sample:
    sent: float
    priority: str
    status: int  # 0: timed out (no answer within the deadline)
    latency: float


async def drive(port: int, rate: float, healthy: float, degraded: float) -> tuple[
    list[Sample], list[tuple[float, int | None]], list[Sample], list[tuple[float, float]]
]:
    """Offer the load; the answers as the client saw them, the limit over time, the
    requests as the server saw them (its own time for each, admission included) and the
    stretches when the server's event loop stalled (seconds from the start, like the rest)."""
    pool, control = Connections(port), Connections(port)
    samples: list[Sample] = []
    limits: list[tuple[float, int | None]] = []
    origin = time.monotonic()
    drop_at, end = origin + healthy, origin + healthy + degraded

    async def one(priority: str) -> None:
        sent = time.monotonic()
        try:
            status, _ = await asyncio.wait_for(pool.request("/work", {
                "X-Priority": priority, "X-Request-Timeout-Ms": str(int(DEADLINE * 1000)),
            }), DEADLINE)
        except (asyncio.TimeoutError, OSError, ValueError, IndexError,
                asyncio.IncompleteReadError):
            status = 0
        samples.append(Sample(sent - origin, priority, status, time.monotonic() - sent))

    async def ask(path: str) -> bytes:
        for _ in range(100):  # uvicorn's own limit may refuse the control requests too
            try:
                status, body = await control.request(path, {})
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                control.idle.clear()
                continue
            if status == 200:
                return body
            await asyncio.sleep(0.01)
        raise RuntimeError(f"{path} kept failing")

    async def watch() -> None:
        dropped = False
        while time.monotonic() < end:
            if not dropped and time.monotonic() >= drop_at:
                await ask(f"/capacity?workers={DEGRADED}")
                dropped = True
            limits.append((time.monotonic() - origin, json.loads(await ask("/stats"))["limit"]))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    tasks: set[asyncio.Task[None]] = set()
    pattern = [name for name, share in MIX for _ in range(share)]
    index, next_at = 0, origin
    while next_at < end:
        now = time.monotonic()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        task = asyncio.create_task(one(pattern[index % len(pattern)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
        next_at += 1.0 / rate
    await asyncio.gather(*tasks)
    await watcher
    served = [Sample(at - origin, priority, status, took)
              for at, priority, status, took in json.loads(await ask("/served"))]
    stalls = [(a - origin, b - origin) for a, b in json.loads(await ask("/stalls"))]
    return samples, limits, served, stalls


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(mode: str, rate: float, healthy: float, degraded: float) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "src"), os.environ.get("PYTHONPATH", "")]
    )}
    process = subprocess.Popen([sys.executable, __file__, "serve", mode, str(port)], env=env)
    try:
        _wait_for_port(port)
        samples, limits, _, stalls = asyncio.run(drive(port, rate, healthy, degraded))
    finally:
        process.terminate()
        process.wait(10)
    healthy_p99 = _pct([s.latency for s in samples if 1.0 <= s.sent < healthy and s.status == 200],
                       0.99)
    start = healthy + SETTLE
    steady = [s for s in samples if s.sent >= start]
    span = healthy + degraded - start
    ok = [s for s in steady if s.status == 200 and s.latency <= DEADLINE]
    capacity = DEGRADED / SERVICE_TIME
    outcomes = {
        name: {
            "ok": sum(s.status == 200 for s in steady if s.priority == name),
            "503": sum(s.status == 503 for s in steady if s.priority == name),
            "504": sum(s.status == 504 for s in steady if s.priority == name),
            "timeout": sum(s.status == 0 for s in steady if s.priority == name),
            "sent": sum(1 for s in steady if s.priority == name),
        }
        for name, _ in MIX
    }
    return {
        "mode": mode,
        "goodput": len(ok) / span / capacity,
        "ok": ok,
        "span": span,
        "samples": samples,
        "p50": _pct([s.latency for s in ok], 0.5),
        "p99": _pct([s.latency for s in ok], 0.99),
        "healthy_p99": healthy_p99,
        "outcomes": outcomes,
        "limit": [v for at, v in limits if at >= start and v is not None],
        "stalls": len(stalls),
    }


def _settled(samples: list[Sample], drop: float, end: float, healthy_p99: float) -> float | None:
    """Seconds after the drop until every later 1 s window's admitted p99 < 2x healthy."""
    settled: float | None = None
    at = drop
    while at + 1.0 <= end:
        window = [s.latency for s in samples if at <= s.sent < at + 1.0 and s.status == 200]
        good = bool(window) and _pct(window, 0.99) < 2 * healthy_p99
        if good and settled is None:
            settled = at - drop
        elif not good:
            settled = None
        at += 0.5
    return settled


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int) -> None:
    import socket

    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the service on port {port} did not start")


def main() -> None:
    global DEADLINE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=float, default=6.0, help="seconds at full capacity")
    parser.add_argument("--degraded", type=float, default=16.0, help="seconds after the drop")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second offered")
    parser.add_argument("--only", default="", help="run only this mode")
    parser.add_argument("--deadline", type=float, default=1.0,
                        help="seconds each request may take (sent as X-Request-Timeout-Ms)")
    args = parser.parse_args()
    DEADLINE = args.deadline
    modes = [m for m in MODES if not args.only or m == args.only]
    capacity = DEGRADED / SERVICE_TIME
    print(f"capacity {WORKERS}x{SERVICE_TIME * 1000:.0f} ms -> {DEGRADED}x (degraded: "
          f"{capacity:.0f} req/s); offered {args.rate:.0f} req/s; deadline {DEADLINE:g} s; "
          f"measured from {SETTLE:.0f} s after the drop")
    results = [measure(mode, args.rate, args.healthy, args.degraded) for mode in modes]
    # Every mode is the same service while healthy (no limit is reached), so the promise a
    # caller gets is one figure: the median of the healthy p99s measured in this run.
    reference = sorted(r["healthy_p99"] for r in results)[len(results) // 2]
    for r in results:
        fast = [s for s in r["ok"] if s.latency <= 2 * reference]
        r["fast"] = len(fast) / r["span"] / capacity
        r["settled"] = _settled(r["samples"], args.healthy, args.healthy + args.degraded,
                                reference)
    print(f"healthy p99 (median of the runs): {reference * 1000:.0f} ms; "
          f"'in 2x' counts answers within {2 * reference * 1000:.0f} ms")
    stoic_goodput = next((r["goodput"] for r in results if r["mode"] == "stoic"), None)
    print(f"{'mode':10} {'goodput':>8} {'in 2x p99':>9} {'p50 ms':>7} {'p99 ms':>7} {'healthy p99':>12} "
          f"{'settled s':>10}  outcomes ok/503/504/timeout by priority   stoic goodput x")
    for r in results:
        outcomes = "  ".join(
            f"{name[:4]} {o['ok']}/{o['503']}/{o['504']}/{o['timeout']}"
            for name, o in r["outcomes"].items()
        )
        settled = "never" if r["settled"] is None else f"{r['settled']:.1f}"
        ratio = "" if not stoic_goodput or not r["goodput"] else f"{stoic_goodput / r['goodput']:.2f}"
        print(f"{r['mode']:10} {r['goodput']:>7.0%} {r['fast']:>9.0%} {r['p50'] * 1000:>7.0f} {r['p99'] * 1000:>7.0f} "
              f"{r['healthy_p99'] * 1000:>12.0f} {settled:>10}  {outcomes}   {ratio}")
    print("server event-loop stalls (> 25 ms, the machine's other work): " + ", ".join(
        f"{r['mode']} {r['stalls']}" for r in results))
    for r in results:
        if r["limit"]:
            print(f"{r['mode']}: adaptive limit after the drop: min {min(r['limit'])}, "
                  f"max {max(r['limit'])}, mean {sum(r['limit']) / len(r['limit']):.1f} "
                  f"(degraded capacity: {DEGRADED} workers)")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()

"""What sharing state through Redis costs: round trips per call and calls per second.

    .venv/bin/python benchmarks/shared_state.py

Starts its own redis-server on a free loopback port (so other users of a shared Redis do
not disturb the count), then measures, single-threaded:

* a closed CircuitBreaker with MemoryState and with RedisState: a breaker shares only its
  verdicts (opens, closes, trial leases), so a healthy call makes no round trip at all;
* a RateLimiter kept locally, with MemoryState, and with RedisState (sync and asyncio): a
  fleet-wide rate needs Redis on every call, and stoic makes exactly one round trip (one
  EVALSHA of the GCRA script).

Round trips are counted on the client side, by counting the commands redis-py sends.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio.connection
import redis.connection

import stoic
from stoic.state import MemoryState, RedisState

N = 20_000

_sent = [0]


def _count_sync() -> None:
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        _sent[0] += 1
        return original(self, *args, **kwargs)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    aoriginal = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def acounted(self: Any, *args: Any, **kwargs: Any) -> Any:
        _sent[0] += 1
        return await aoriginal(self, *args, **kwargs)

    redis.asyncio.connection.AbstractConnection.send_packed_command = acounted  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ok() -> int:
    return 1


async def aok() -> int:
    return 1


def measure(call: Callable[[], Any], n: int = N) -> tuple[float, float]:
    for _ in range(100):
        call()
    before = _sent[0]
    start = time.perf_counter()
    for _ in range(n):
        call()
    elapsed = time.perf_counter() - start
    return n / elapsed, (_sent[0] - before) / n


def ameasure(call: Callable[[], Any], n: int = N) -> tuple[float, float]:
    async def run() -> tuple[float, float]:
        for _ in range(100):
            await call()
        before = _sent[0]
        start = time.perf_counter()
        for _ in range(n):
            await call()
        elapsed = time.perf_counter() - start
        return n / elapsed, (_sent[0] - before) / n

    return asyncio.run(run())


def main() -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        _count_sync()
        url = f"redis://127.0.0.1:{port}/0"
        shared = RedisState(url, prefix="bench")
        memory = MemoryState()
        huge = 10**9  # a rate never reached: measure the admission, not rejections
        rows = [
            ("CircuitBreaker closed, MemoryState", measure(
                stoic.CircuitBreaker("b-mem", state=memory)(ok))),
            ("CircuitBreaker closed, RedisState", measure(
                stoic.CircuitBreaker("b-redis", state=shared)(ok))),
            ("RateLimiter, local", measure(stoic.RateLimiter(huge)(ok))),
            ("RateLimiter, MemoryState", measure(
                stoic.RateLimiter(huge, state=memory, name="m")(ok))),
            ("RateLimiter, RedisState (sync)", measure(
                stoic.RateLimiter(huge, state=shared, name="r")(ok), N // 4)),
            ("RateLimiter, RedisState (asyncio)", ameasure(
                stoic.RateLimiter(huge, state=shared, name="ra")(aok), N // 4)),
        ]
        shared.close()
    finally:
        server.kill()
        server.wait()
    print(f"Python {sys.version.split()[0]}; own redis-server on loopback, single-threaded")
    print(f"{'case':<38}{'calls/s':>12}{'round trips/call':>18}")
    for name, (rate, trips) in rows:
        print(f"{name:<38}{rate:>12,.0f}{trips:>18.2f}")


if __name__ == "__main__":
    main()

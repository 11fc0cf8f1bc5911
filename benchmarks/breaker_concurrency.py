"""Does a closed breaker serialize calls? 16 threads, each making one 50 ms call, at once.

    .venv/bin/python benchmarks/breaker_concurrency.py

A breaker that holds its lock across the call (pybreaker does) makes the 16 calls run one
after another: ~16 x 50 ms. stoic holds its lock only for the window update after the call,
so the 16 calls overlap: ~50 ms. Prints wall time per implementation and the ratio to the
ideal (one call's 50 ms). Each figure is the median of several rounds.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import stoic

THREADS = 16
CALL = 0.050
ROUNDS = 5


def work() -> int:
    time.sleep(CALL)
    return 1


def wall_time(call: Callable[[], Any]) -> float:
    barrier = threading.Barrier(THREADS + 1)

    def run() -> None:
        barrier.wait()
        call()

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def implementations() -> list[tuple[str, Callable[[], Any]]]:
    out: list[tuple[str, Callable[[], Any]]] = [
        ("no breaker", work),
        ("stoic", stoic.CircuitBreaker("concurrency")(work)),
    ]
    try:
        import pybreaker
    except ImportError:
        pass
    else:
        out.append(("pybreaker", pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(work)))
    try:
        import circuitbreaker
    except ImportError:
        pass
    else:
        out.append(("circuitbreaker", circuitbreaker.CircuitBreaker(failure_threshold=5)(work)))
    try:
        import purgatory
    except ImportError:
        pass
    else:
        factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5)
        out.append(("purgatory", factory("concurrency")(work)))
    try:
        import pyresilience
    except ImportError:
        pass
    else:
        out.append(("pyresilience", pyresilience.resilient(
            circuit_breaker=pyresilience.CircuitBreakerConfig(failure_threshold=5))(work)))
    return out


def main() -> None:
    print(f"Python {sys.version.split()[0]}; {THREADS} threads x one {CALL * 1000:.0f} ms call, "
          f"median of {ROUNDS} rounds")
    print(f"{'implementation':<18}{'wall ms':>10}{'x one call':>12}")
    for name, call in implementations():
        times = [wall_time(call) for _ in range(ROUNDS)]
        median = statistics.median(times)
        print(f"{name:<18}{median * 1000:>10.1f}{median / CALL:>11.1f}x")


if __name__ == "__main__":
    main()

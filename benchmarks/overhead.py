"""Per-call overhead of stoic's policies against the peers, measured side by side in one run.

    .venv/bin/python benchmarks/overhead.py [--quick]

Each row group runs the same trivial function through each implementation: timings are the
median over several repeats of a tight loop, in microseconds per call, with the bare call
subtracted as "added". The last column is each peer's time divided by stoic's (> 1 means
stoic is faster). Peers missing from the environment are skipped.

To add a group, append to ``GROUPS`` with ``group(title)`` and ``add(...)``; see the bottom
for the breaker rows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import stoic


@dataclass
class Case:
    impl: str
    fn: Callable[[], Any]
    is_async: bool = False


@dataclass
class Group:
    title: str
    cases: list[Case] = field(default_factory=list)
    is_async: bool = False


GROUPS: list[Group] = []


def group(title: str, is_async: bool = False) -> Group:
    g = Group(title, is_async=is_async)
    GROUPS.append(g)
    return g


def _optional(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        return None


# --- functions under test ------------------------------------------------------------------


def ok() -> int:
    return 1


async def aok() -> int:
    return 1


def fail_every_other() -> Callable[[], int]:
    """A function failing on odd calls and succeeding on even ones: one retry per call."""
    n = 0

    def flaky() -> int:
        nonlocal n
        n += 1
        if n & 1:
            raise ConnectionRefusedError("refused")
        return 1

    return flaky


def afail_every_other() -> Callable[[], Awaitable[int]]:
    n = 0

    async def aflaky() -> int:
        nonlocal n
        n += 1
        if n & 1:
            raise ConnectionRefusedError("refused")
        return 1

    return aflaky


# --- retry rows ------------------------------------------------------------------------------


def retry_groups() -> None:
    tenacity = _optional("tenacity")
    stamina = _optional("stamina")
    if stamina:  # no log line per retry: measure the retrying, not the logging
        import stamina.instrumentation

        stamina.instrumentation.set_on_retry_hooks([])
    backoff = _optional("backoff")
    pyresilience = _optional("pyresilience")
    hyx_retry = None
    try:
        from hyx.retry import retry as hyx_retry
    except ImportError:
        pass

    zero = stoic.backoff.constant(0.0)

    def peers(target: Callable[..., Any]) -> list[Case]:
        out: list[Case] = []
        if tenacity:
            out.append(Case("tenacity", tenacity.retry(
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True,
            )(target)))
        if stamina:
            out.append(Case("stamina", stamina.retry(
                on=Exception, attempts=3, timeout=None, wait_initial=0.0, wait_max=0.0,
                wait_jitter=0.0,
            )(target)))
        if backoff:
            out.append(Case("backoff", backoff.on_exception(
                backoff.constant, Exception, max_tries=3, interval=0, jitter=None,
            )(target)))
        if pyresilience:
            out.append(Case("pyresilience", pyresilience.resilient(
                retry=pyresilience.RetryConfig(max_attempts=3, delay=0.0, jitter=False),
            )(target)))
        return out

    g = group("Retry, happy path (sync)")
    g.cases.append(Case("bare call", ok))
    g.cases.append(Case("stoic", stoic.Retry(attempts=3)(ok)))
    g.cases.extend(peers(ok))
    g.cases.append(Case("hand-written loop", _hand_written(ok)))

    g = group("Retry, fail once then succeed, zero wait (sync)")
    g.cases.append(Case("stoic", stoic.Retry(attempts=3, backoff=zero)(fail_every_other())))
    for case in peers(fail_every_other()):
        g.cases.append(case)

    def apeers(target: Callable[..., Awaitable[Any]]) -> list[Case]:
        out = [Case(c.impl, c.fn, True) for c in peers(target) if c.impl != "pyresilience"]
        if pyresilience:
            out.append(Case("pyresilience", pyresilience.resilient(
                retry=pyresilience.RetryConfig(max_attempts=3, delay=0.0, jitter=False),
            )(target), True))
        if hyx_retry:
            out.append(Case("hyx", hyx_retry(on=Exception, attempts=3, backoff=0.0)(target), True))
        return out

    g = group("Retry, happy path (async)", is_async=True)
    g.cases.append(Case("bare call", aok, True))
    g.cases.append(Case("stoic", stoic.Retry(attempts=3)(aok), True))
    g.cases.extend(apeers(aok))

    g = group("Retry, fail once then succeed, zero wait (async)", is_async=True)
    g.cases.append(Case("stoic", stoic.Retry(attempts=3, backoff=zero)(afail_every_other()), True))
    g.cases.extend(apeers(afail_every_other()))


def _hand_written(fn: Callable[[], Any]) -> Callable[[], Any]:
    def wrapper() -> Any:
        for attempt in range(3):
            try:
                return fn()
            except Exception:
                if attempt == 2:
                    raise
        return None

    return wrapper


# --- measurement -----------------------------------------------------------------------------


def _time_sync(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


async def _time_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


def measure(case: Case, n: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` loops of ``n`` calls."""
    results = []
    for _ in range(repeats):
        if case.is_async:
            results.append(asyncio.run(_time_async(case.fn, n)))
        else:
            results.append(_time_sync(case.fn, n))
    return statistics.median(results)


def run(quick: bool = False) -> list[tuple[str, str, float, float | None]]:
    n, repeats = (5_000, 3) if quick else (50_000, 7)
    bare = measure(Case("bare", ok), n, repeats)
    abare = measure(Case("bare", aok, True), n, repeats)
    rows: list[tuple[str, str, float, float | None]] = []
    for g in GROUPS:
        print(f"\n{g.title}")
        print(f"  {'implementation':<28}{'us/call':>10}{'added us':>10}{'x stoic':>10}")
        timings = {c.impl: measure(c, n if c.impl != "stamina" else n // 5, repeats) for c in g.cases}
        base = abare if g.is_async else bare
        stoic_t = next((t for impl, t in timings.items() if impl.startswith("stoic")), None)
        for impl, t in timings.items():
            ratio = (t - base) / (stoic_t - base) if stoic_t and impl not in ("bare call",) else None
            shown = f"{ratio:>9.1f}x" if ratio is not None and not impl.startswith("stoic") else ""
            print(f"  {impl:<28}{t * 1e6:>10.3f}{(t - base) * 1e6:>10.3f}{shown:>10}")
            rows.append((g.title, impl, t, ratio))
        peers = {
            impl: t for impl, t in timings.items()
            if impl not in ("bare call", "hand-written loop") and not impl.startswith("stoic")
        }
        if stoic_t and peers:
            best = min(peers, key=lambda k: peers[k])
            print(f"  -> stoic is {peers[best] / stoic_t:.1f}x faster than the fastest peer ({best})")
    return rows


retry_groups()

# --- breakers (issue 3 adds its groups below this line) ------------------------------------


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}; times are medians, microseconds per call")
    run(quick=args.quick)

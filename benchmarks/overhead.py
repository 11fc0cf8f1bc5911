"""Per-call overhead of stoic's policies against the peers, measured side by side in one run.

    .venv/bin/python benchmarks/overhead.py [--quick] [--only TEXT] [--repeats N] [--best]

Each row group runs the same trivial function through each implementation: timings are the
median (or with --best the fastest) of several interleaved rounds of a tight loop, in
microseconds per call, with the bare call subtracted as "added" (for groups whose calls
raise, a bare raise: a fresh exception raised by a plain function and caught). The last
column is each peer's added cost divided by stoic's (> 1 means stoic is faster); the line
under each group gives the ratio of whole times per call and of added costs. Peers missing
from the environment are skipped.

To add a group, append to ``GROUPS`` with ``group(title)`` and ``add(...)``; see the bottom
for the breaker rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import stoic
from stoic import clock


@dataclass
class Case:
    impl: str
    fn: Callable[[], Any]
    is_async: bool = False
    raises: bool = False  # every call raises: the try/except sits in the timing loop itself


@dataclass
class Group:
    title: str
    cases: list[Case] = field(default_factory=list)
    is_async: bool = False
    stub_sleep: bool = False  # time.sleep and asyncio.sleep are no-ops while it is measured


@contextlib.contextmanager
def sleep_stubbed() -> Iterator[None]:
    """Replace ``time.sleep`` and ``asyncio.sleep`` by no-ops, for every implementation alike.

    Every peer sleeps through the module attribute (``time.sleep(0)`` is a system call of
    tens of microseconds), so with the sleep taken out a zero-wait retry measures only the
    retrying itself. stoic never calls sleep for a zero wait in the first place.
    """

    def no_sleep(seconds: float) -> None:
        return None

    async def no_asleep(seconds: float, result: Any = None) -> Any:
        return result

    saved = time.sleep, asyncio.sleep
    time.sleep, asyncio.sleep = no_sleep, no_asleep  # type: ignore[assignment]
    try:
        yield
    finally:
        time.sleep, asyncio.sleep = saved


GROUPS: list[Group] = []


def group(title: str, is_async: bool = False, stub_sleep: bool = False) -> Group:
    g = Group(title, is_async=is_async, stub_sleep=stub_sleep)
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


class _Floor(Exception):
    pass


def bare_raise() -> None:
    """The floor of any rejection: a fresh exception raised from a function and caught."""
    raise _Floor()


async def abare_raise() -> None:
    raise _Floor()


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
    g.cases.append(Case("stoic", stoic.Retry(max_attempts=3)(ok)))
    g.cases.extend(peers(ok))
    g.cases.append(Case("hand-written loop", _hand_written(ok)))

    g = group("Retry, fail once then succeed, zero wait (sync)")
    g.cases.append(Case("stoic", stoic.Retry(max_attempts=3, backoff=zero)(fail_every_other())))
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
    g.cases.append(Case("stoic", stoic.Retry(max_attempts=3)(aok), True))
    g.cases.extend(apeers(aok))

    g = group("Retry, fail once then succeed, zero wait (async)", is_async=True)
    g.cases.append(Case("stoic", stoic.Retry(max_attempts=3, backoff=zero)(afail_every_other()), True))
    g.cases.extend(apeers(afail_every_other()))

    # issue 17 item 9: the same with every implementation's sleep taken out, so the rows
    # compare the retrying itself (goal: stoic >= 2x the fastest peer on the added cost)
    g = group("Retry, fail once then succeed, zero wait, sleep stubbed (sync)", stub_sleep=True)
    g.cases.append(Case("bare call", ok))
    g.cases.append(Case("stoic", stoic.Retry(max_attempts=3, backoff=zero)(fail_every_other())))
    g.cases.extend(peers(fail_every_other()))

    g = group("Retry, fail once then succeed, zero wait, sleep stubbed (async)", is_async=True,
              stub_sleep=True)
    g.cases.append(Case("bare call", aok, True))
    g.cases.append(Case("stoic", stoic.Retry(max_attempts=3, backoff=zero)(afail_every_other()), True))
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


def _time_sync_raising(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        try:
            fn()
        except Exception:
            pass
    return (time.perf_counter() - start) / n


async def _time_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


async def _time_async_raising(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        try:
            await fn()
        except Exception:
            pass
    return (time.perf_counter() - start) / n


def _once(case: Case, n: int) -> float:
    """Seconds per call: the call as a caller makes it, with no wrapper frame of the harness.

    A raising case keeps its ``try``/``except`` in the loop, as a caller's own code would,
    rather than in a helper function that would add one frame (one coroutine, when async)
    to every implementation alike.
    """
    if case.is_async:
        timer = _time_async_raising if case.raises else _time_async
        return asyncio.run(timer(case.fn, n))
    return (_time_sync_raising if case.raises else _time_sync)(case.fn, n)


def measure(case: Case, n: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` loops of ``n`` calls."""
    return statistics.median(_once(case, n) for _ in range(repeats))


def measure_group(
    cases: list[Case], n: int, repeats: int, stat: Callable[[list[float]], float] = statistics.median
) -> dict[str, float]:
    """Seconds per call of each case (``stat`` of its rounds), the cases interleaved round by round.

    Each round times every case once, so load that comes and goes on a shared machine
    reaches all of them alike instead of whichever happened to run during it.
    """
    loops = {c.impl: n if c.impl != "stamina" else n // 5 for c in cases}
    results: dict[str, list[float]] = {c.impl: [] for c in cases}
    for _ in range(repeats):
        for c in cases:
            results[c.impl].append(_once(c, loops[c.impl]))
    return {impl: stat(times) for impl, times in results.items()}


def run(
    quick: bool = False, only: str = "", repeats: int | None = None, best: bool = False
) -> list[tuple[str, str, float, float | None]]:
    n, rounds = (5_000, 3) if quick else (50_000, 7)
    repeats = repeats or rounds
    stat: Callable[[list[float]], float] = min if best else statistics.median
    bare = measure(Case("bare", ok), n, repeats)
    abare = measure(Case("bare", aok, True), n, repeats)
    rows: list[tuple[str, str, float, float | None]] = []
    for g in GROUPS:
        if only.lower() not in g.title.lower():
            continue
        print(f"\n{g.title}")
        print(f"  {'implementation':<28}{'us/call':>10}{'added us':>10}{'x stoic':>10}")
        with sleep_stubbed() if g.stub_sleep else contextlib.nullcontext():
            timings = measure_group(g.cases, n, repeats, stat)
        # "added" is measured from the group's own bare case (a bare call, or for rejections a
        # bare raise) when it has one: same rounds, same load
        base = next((t for impl, t in timings.items() if impl.startswith("bare")),
                    abare if g.is_async else bare)
        stoic_t = next((t for impl, t in timings.items() if impl.startswith("stoic")), None)
        for impl, t in timings.items():
            ratio = (t - base) / (stoic_t - base) if stoic_t and not impl.startswith("bare") else None
            shown = f"{ratio:>9.1f}x" if ratio is not None and not impl.startswith("stoic") else ""
            print(f"  {impl:<28}{t * 1e6:>10.3f}{(t - base) * 1e6:>10.3f}{shown:>10}")
            rows.append((g.title, impl, t, ratio))
        peers = {
            impl: t for impl, t in timings.items()
            if not impl.startswith(("bare", "stoic", "hand-written"))
        }
        if stoic_t and peers:
            best = min(peers, key=lambda k: peers[k])
            added = (peers[best] - base) / (stoic_t - base)
            print(f"  -> stoic is {peers[best] / stoic_t:.2f}x faster than the fastest peer "
                  f"({best}) per call, {added:.2f}x on the added cost")
    return rows


retry_groups()

# --- breakers (issue 3 adds its groups below this line) ------------------------------------
# ==== issue 3: circuit breakers, bulkhead, Pipeline(Retry, CircuitBreaker, Bulkhead) ========
# Owned by the breakers/bulkheads work; every peer gets the same trivial function. "open:
# reject" rows trip each breaker first, check that it now rejects a call that would succeed,
# then time rejected calls caught in the timing loop; their "added" column is measured from
# a bare raise (a fresh exception raised by a plain function and caught), the floor of any
# rejection.


class _Switch:
    """A function that fails while ``failing`` is set: lets one wrapped function be tripped."""

    def __init__(self) -> None:
        self.failing = False

    def make_sync(self) -> Callable[[], int]:
        def call() -> int:  # a plain function: some peers read __name__ and the like
            if self.failing:
                raise ConnectionRefusedError("refused")
            return 1

        return call

    def make_async(self) -> Callable[[], Awaitable[int]]:
        async def acall() -> int:
            if self.failing:
                raise ConnectionRefusedError("refused")
            return 1

        return acall


def _tripped(wrapped: Callable[[], Any], switch: _Switch, times: int = 30) -> Callable[[], Any]:
    """``wrapped`` after failing ``times`` calls, checked to reject a call that would succeed."""
    switch.failing = True
    for _ in range(times):
        try:
            wrapped()
        except Exception:
            pass
    switch.failing = False  # from here on only the breaker can make a call fail
    try:
        wrapped()
    except Exception:
        return wrapped
    raise RuntimeError("the breaker did not open")


def _atripped(
    wrapped: Callable[[], Awaitable[Any]], switch: _Switch, times: int = 30
) -> Callable[[], Awaitable[Any]]:
    switch.failing = True

    async def trip() -> bool:
        for _ in range(times):
            try:
                await wrapped()
            except Exception:
                pass
        switch.failing = False
        try:
            await wrapped()
        except Exception:
            return True
        return False

    if not asyncio.run(trip()):
        raise RuntimeError("the breaker did not open")
    return wrapped


def _breakers_sync() -> list[tuple[str, Callable[[Callable[[], Any]], Callable[[], Any]]]]:
    """(name, decorate) for every sync breaker available; each call makes a fresh breaker."""
    out: list[tuple[str, Callable[[Callable[[], Any]], Callable[[], Any]]]] = []
    counter = iter(range(10**6))
    out.append(("stoic", lambda fn: stoic.CircuitBreaker(
        f"bench-{next(counter)}", minimum_calls=5, open_for=1e6)(fn)))
    circuitbreaker = _optional("circuitbreaker")
    if circuitbreaker:
        out.append(("circuitbreaker", lambda fn: circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=10**6)(fn)))
    pybreaker = _optional("pybreaker")
    if pybreaker:
        out.append(("pybreaker", lambda fn: pybreaker.CircuitBreaker(
            fail_max=5, reset_timeout=10**6)(fn)))
    purgatory = _optional("purgatory")
    if purgatory:
        out.append(("purgatory", lambda fn: purgatory.SyncCircuitBreakerFactory(
            default_threshold=5, default_ttl=10**6)(f"bench-{next(counter)}")(fn)))
    pyresilience = _optional("pyresilience")
    if pyresilience:
        out.append(("pyresilience", lambda fn: pyresilience.resilient(
            circuit_breaker=pyresilience.CircuitBreakerConfig(
                failure_threshold=5, recovery_timeout=10**6))(fn)))
    return out


def _breakers_async() -> list[tuple[str, Callable[[Any], Callable[[], Awaitable[Any]]]]]:
    out: list[tuple[str, Callable[[Any], Callable[[], Awaitable[Any]]]]] = []
    counter = iter(range(10**6))
    out.append(("stoic", lambda fn: stoic.CircuitBreaker(
        f"abench-{next(counter)}", minimum_calls=5, open_for=1e6)(fn)))
    circuitbreaker = _optional("circuitbreaker")
    if circuitbreaker:
        out.append(("circuitbreaker", lambda fn: circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=10**6)(fn)))
    aiobreaker = _optional("aiobreaker")
    if aiobreaker:
        import datetime

        def aio(fn: Any) -> Any:
            breaker = aiobreaker.CircuitBreaker(
                fail_max=5, timeout_duration=datetime.timedelta(seconds=10**6))
            return lambda: breaker.call_async(fn)

        out.append(("aiobreaker", aio))
    purgatory = _optional("purgatory")
    if purgatory:
        out.append(("purgatory", lambda fn: purgatory.AsyncCircuitBreakerFactory(
            default_threshold=5, default_ttl=10**6)(f"abench-{next(counter)}")(fn)))
    pyresilience = _optional("pyresilience")
    if pyresilience:
        out.append(("pyresilience", lambda fn: pyresilience.resilient(
            circuit_breaker=pyresilience.CircuitBreakerConfig(
                failure_threshold=5, recovery_timeout=10**6))(fn)))
    try:
        from hyx.circuitbreaker import consecutive_breaker
    except ImportError:
        pass
    else:
        out.append(("hyx", lambda fn: consecutive_breaker(
            failure_threshold=5, recovery_time_secs=10**6)(fn)))
    return out


def breaker_groups() -> None:
    closed = group("CircuitBreaker, closed (sync)")
    closed.cases.append(Case("bare call", ok))
    rejecting = group("CircuitBreaker, open: reject (sync)")
    rejecting.cases.append(Case("bare raise", bare_raise, raises=True))
    for impl, decorate in _breakers_sync():
        try:
            closed.cases.append(Case(impl, decorate(ok)))
            switch = _Switch()
            rejecting.cases.append(
                Case(impl, _tripped(decorate(switch.make_sync()), switch), raises=True))
        except Exception as exc:  # a peer whose API changed: say so, measure the rest
            print(f"skipping {impl}: {type(exc).__name__}: {exc}", file=sys.stderr)
    hand = _HandBreaker()
    closed.cases.append(Case("hand-written lock-free", lambda: hand.call(ok)))

    aclosed = group("CircuitBreaker, closed (async)", is_async=True)
    aclosed.cases.append(Case("bare call", aok, True))
    arejecting = group("CircuitBreaker, open: reject (async)", is_async=True)
    arejecting.cases.append(Case("bare raise", abare_raise, True, raises=True))
    for impl, decorate in _breakers_async():
        try:
            aclosed.cases.append(Case(impl, decorate(aok), True))
            switch = _Switch()
            arejecting.cases.append(
                Case(impl, _atripped(decorate(switch.make_async()), switch), True, raises=True))
        except Exception as exc:
            print(f"skipping {impl}: {type(exc).__name__}: {exc}", file=sys.stderr)

    bulk = group("Bulkhead, free slot (sync)")
    bulk.cases.append(Case("bare call", ok))
    bulk.cases.append(Case("stoic", stoic.Bulkhead(10)(ok)))
    pyresilience = _optional("pyresilience")
    if pyresilience:
        bulk.cases.append(Case("pyresilience", pyresilience.resilient(
            bulkhead=pyresilience.BulkheadConfig(max_concurrent=10))(ok)))
    abulk = group("Bulkhead, free slot (async)", is_async=True)
    abulk.cases.append(Case("bare call", aok, True))
    abulk.cases.append(Case("stoic", stoic.Bulkhead(10)(aok), True))
    try:
        from hyx.bulkhead import bulkhead as hyx_bulkhead
    except ImportError:
        pass
    else:
        abulk.cases.append(Case("hyx", hyx_bulkhead(max_concurrency=10, max_capacity=10)(aok), True))
    if pyresilience:
        abulk.cases.append(Case("pyresilience", pyresilience.resilient(
            bulkhead=pyresilience.BulkheadConfig(max_concurrent=10))(aok), True))

    pipe = group("Pipeline(Retry, CircuitBreaker, Bulkhead), happy path (sync)")
    pipe.cases.append(Case("bare call", ok))
    pipe.cases.append(Case("stoic", stoic.Pipeline(
        stoic.Retry(max_attempts=3), stoic.CircuitBreaker("bench-pipeline"), stoic.Bulkhead(10))(ok)))
    if pyresilience:
        pipe.cases.append(Case("pyresilience retry+breaker", pyresilience.resilient(
            retry=pyresilience.RetryConfig(max_attempts=3, delay=0.0, jitter=False),
            circuit_breaker=pyresilience.CircuitBreakerConfig(failure_threshold=5))(ok)))
        pipe.cases.append(Case("pyresilience retry+breaker+bulkhead", pyresilience.resilient(
            retry=pyresilience.RetryConfig(max_attempts=3, delay=0.0, jitter=False),
            circuit_breaker=pyresilience.CircuitBreakerConfig(failure_threshold=5),
            bulkhead=pyresilience.BulkheadConfig(max_concurrent=10))(ok)))
    apipe = group("Pipeline(Retry, CircuitBreaker, Bulkhead), happy path (async)", is_async=True)
    apipe.cases.append(Case("bare call", aok, True))
    apipe.cases.append(Case("stoic", stoic.Pipeline(
        stoic.Retry(max_attempts=3), stoic.CircuitBreaker("abench-pipeline"), stoic.Bulkhead(10))(aok),
        True))
    if pyresilience:
        apipe.cases.append(Case("pyresilience retry+breaker+bulkhead", pyresilience.resilient(
            retry=pyresilience.RetryConfig(max_attempts=3, delay=0.0, jitter=False),
            circuit_breaker=pyresilience.CircuitBreakerConfig(failure_threshold=5),
            bulkhead=pyresilience.BulkheadConfig(max_concurrent=10))(aok), True))


class _HandBreaker:
    """The floor: a consecutive-failure breaker with no window, lock, events or registry."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def call(self, fn: Callable[[], Any]) -> Any:
        if self.open_until and time.monotonic() < self.open_until:
            raise RuntimeError("open")
        try:
            result = fn()
        except Exception:
            self.failures += 1
            if self.failures >= 5:
                self.open_until = time.monotonic() + 30
            raise
        self.failures = 0
        return result


breaker_groups()
# ==== end of issue 3 section =================================================================


# ==== issue 16: AdaptiveLimit, free slot (goal: under 1 us added, sync) ======================


def _limit_floor(fn: Callable[[], Any]) -> Callable[[], Any]:
    """The floor of any adaptive limiter in pure Python, shaped like a stoic policy.

    A decorator frame and a step frame (as ``Policy.__call__`` and ``wrap`` make), one
    atomic admission (a token popped from a list), one clock reading before and one after
    the call (the latency sample), the token given back: no window, no algorithm, no
    exception handling. What is left above it is the cost of being a full policy.
    """
    free: list[None] = [None] * 20
    take, give = free.pop, free.append

    def step(fn: Any, args: Any, kwargs: Any) -> Any:
        take()
        start = clock.monotonic()
        result = fn(*args, **kwargs)
        end = clock.monotonic()
        give(None)
        return end - start and result

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return step(fn, args, kwargs)

    return wrapper


def limit_groups() -> None:
    """AdaptiveLimit's happy path beside the Bulkhead (a fixed limit) and peers' limiters."""
    sync = group("AdaptiveLimit, free slot (sync)")
    sync.cases.append(Case("bare call", ok))
    sync.cases.append(Case("hand-written floor", _limit_floor(ok)))
    sync.cases.append(Case("stoic AdaptiveLimit(vegas)", stoic.AdaptiveLimit("vegas")(ok)))
    sync.cases.append(Case("stoic AdaptiveLimit(gradient2)", stoic.AdaptiveLimit("gradient2")(ok)))
    sync.cases.append(Case("stoic Bulkhead(10), fixed", stoic.Bulkhead(10)(ok)))
    asynchronous = group("AdaptiveLimit, free slot (async)", is_async=True)
    asynchronous.cases.append(Case("bare call", aok, True))
    asynchronous.cases.append(Case("stoic AdaptiveLimit(vegas)", stoic.AdaptiveLimit("vegas")(aok), True))
    asynchronous.cases.append(Case("stoic Bulkhead(10), fixed", stoic.Bulkhead(10)(aok), True))


limit_groups()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="run only the groups whose title contains TEXT (case-insensitive)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="rounds per group (default 7; 3 with --quick)")
    parser.add_argument("--best", action="store_true",
                        help="report each case's fastest round instead of the median: on a "
                             "shared machine the least disturbed figure")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}; times are "
          f"{'best rounds' if args.best else 'medians'}, microseconds per call")
    run(quick=args.quick, only=args.only, repeats=args.repeats, best=args.best)

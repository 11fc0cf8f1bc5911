"""The circuit breaker's call paths, written once as async code.

``stoic.policies.twins.unasync`` derives the sync paths from this module (``await`` dropped,
``_alease`` -> ``_lease``, ``acall`` -> ``call``). Two entry points run a call: ``step``
builds the pipeline step (and ``call``/``acall``), ``decorator`` the decorator's wrapper.
Each inlines the same two fast paths, because a helper would cost a frame on every call
(benchmarks/overhead.py, the CircuitBreaker closed and open rows and the Pipeline rows):

- open, time left, no sink: raise ``CircuitOpen(left, name)``, nothing else;
- closed, nothing measured: run the call, count it with one ``next()``, take the lock only
  on a failure.

A closed breaker whose calls are measured (metrics on) times the call in the step's own frame
(benchmarks/telemetry_overhead.py). Everything else (half-open, forced open, disabled, a sink
listening, a slow_call_duration or TimeWindow to measure) goes through ``_admit`` and
``_settle``, written once in ``machine``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ... import clock  # a module attribute, so CPython reads clock.monotonic with LOAD_ATTR
from ...events import dispatcher
from .machine import NEED_LEASE, OPEN, PASS, UNRECORDED, BreakerMachine, code_of
from .rejection import CircuitOpen

__all__ = ["decorator", "step"]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
AsyncStep = Callable[[Callable[..., Any], Args, Kwargs], Awaitable[Any]]


def step(breaker: BreakerMachine, inner: AsyncStep, direct: bool) -> AsyncStep:
    """The breaker's pipeline step; ``direct`` when ``inner`` only calls ``fn``."""
    name, record, settle = breaker._name, breaker._record, breaker._settle
    release, measured_success = breaker._release_trial, breaker._measured_success
    check_at, timed_mode = breaker._check_at, breaker._timed

    async def timed(fn: Callable[..., Any], args: Args, kwargs: Kwargs, generation: int) -> Any:
        start = clock.monotonic()
        try:
            result = await inner(fn, args, kwargs)
        except Exception as exc:
            settle(generation, exc, start, clock.monotonic())
            raise
        except BaseException:  # cancelled or interrupted: not an outcome
            if generation >= 0:
                release(generation)
            raise
        settle(generation, None, start, clock.monotonic())
        return result

    async def slow_path(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
        generation = breaker._admit()
        if generation == NEED_LEASE:
            generation = await breaker._alease()
        if generation == UNRECORDED:
            return await inner(fn, args, kwargs)
        return await timed(fn, args, kwargs, generation)

    async def acall(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
        mode = breaker._mode
        if mode or timed_mode or dispatcher.active:
            if mode == OPEN:
                left = breaker._open_until - clock.monotonic()
                if left > 0.0 and not dispatcher.sinks:
                    raise CircuitOpen(left, name)
            if mode:
                return await slow_path(fn, args, kwargs)
            if timed_mode or dispatcher.record is None:
                return await timed(fn, args, kwargs, PASS)
            start = clock.monotonic()  # closed and measured: the plain path, timed, here
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except Exception as exc:
                settle(PASS, exc, start, clock.monotonic())
                raise
            measured_success(clock.monotonic() - start)
            return result
        try:
            result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
        except Exception as exc:
            record(code_of(exc), 0.0)
            raise
        if next(breaker._seq) == check_at:
            breaker._check()
        return result

    return acall


def decorator(
    breaker: BreakerMachine, fn: Callable[..., Awaitable[Any]], acall: AsyncStep,
) -> Callable[..., Awaitable[Any]]:
    """The decorator's wrapper of ``fn``: the fast paths inline, the rest through ``acall``."""
    name, record, check_at = breaker._name, breaker._record, breaker._check_at

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        mode = breaker._mode
        if mode or dispatcher.active:
            if mode == OPEN:
                left = breaker._open_until - clock.monotonic()
                if left > 0.0 and not dispatcher.sinks:
                    raise CircuitOpen(left, name)
            return await acall(fn, args, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            record(code_of(exc), 0.0)
            raise
        if next(breaker._seq) == check_at:
            breaker._check()
        return result

    return wrapper

"""CircuitBreaker: stop calling a dependency that is failing, and find out when it is back.

This module holds the breaker's call paths; its decisions live in ``machine``, its settings
in ``config``, its windows in ``windows`` and its events in ``events``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ... import clock
from ..._deprecate import renamed
from ...events import dispatcher
from ..base import AsyncStep, Policy, Step, ainvoke, invoke
from .config import BreakerConfig
from .machine import NEED_LEASE, OPEN, PASS, UNRECORDED, BreakerMachine, code_of
from .registry import register
from .rejection import CircuitOpen
from .windows import CountWindow, TimeWindow

if TYPE_CHECKING:
    from ...state import SharedState

__all__ = ["CircuitBreaker"]

P = ParamSpec("P")
T = TypeVar("T")


class CircuitBreaker(BreakerMachine, Policy):
    """Reject calls to a failing dependency for a while, then test it with a few trial calls.

    Args:
        name: identifies the breaker in ``stoic.breakers``, events, metrics and shared state.
        failure_rate: open when failures / calls in the window reach this, in (0, 1].
        slow_call_rate: open when slow calls / calls reach this, in (0, 1]; 1.0 means only
            a window of nothing but slow calls opens it.
        slow_call_duration: seconds after which a call counts as slow; None: never slow.
        window: ``CountWindow(100)`` (default) or ``TimeWindow(seconds)``.
        minimum_calls: judge no rate before the window holds this many calls (>= 1), so
            two failures out of three calls at startup do not open the breaker.
        open_for: seconds to reject before trying again (> 0).
        half_open_calls: trial calls admitted after ``open_for`` (>= 1); more concurrent
            calls are rejected, so a recovering dependency is not hit by a stampede.
        backend: ``stoic.state.RedisState`` to share opens and trials with every process
            using a breaker of this name; None (or ``MemoryState``) keeps it local.
            ``state=`` is the old name of this parameter (deprecated: ``breaker.state`` is
            the breaker's own state, closed or open).
        open_for_growth: multiply ``open_for`` by this each time trials fail and the breaker
            re-opens (>= 1; 1 means no growth); a close resets it.
        max_open_for: cap on the grown open period, in seconds (>= ``open_for``).

    The settings are read-only (``breaker.config`` holds them all); build a new breaker to
    change them.
    """

    __slots__ = ()

    def __init__(
        self,
        name: str,
        failure_rate: float = 0.5,
        slow_call_rate: float = 1.0,
        slow_call_duration: float | None = None,
        window: CountWindow | TimeWindow | None = None,
        minimum_calls: int = 20,
        open_for: float = 30.0,
        half_open_calls: int = 5,
        state: SharedState | None = None,
        *,
        open_for_growth: float = 1.0,
        max_open_for: float | None = None,
        backend: SharedState | None = None,
    ) -> None:
        backend = renamed("CircuitBreaker", "state", "backend", state, backend,
                          new_given=backend is not None,
                          note=" (breaker.state is the breaker's own state)")
        super().__init__(BreakerConfig(
            name=name, failure_rate=failure_rate, slow_call_rate=slow_call_rate,
            slow_call_duration=slow_call_duration,
            window=CountWindow(100) if window is None else window, minimum_calls=minimum_calls,
            open_for=open_for, half_open_calls=half_open_calls, backend=backend,
            open_for_growth=open_for_growth, max_open_for=max_open_for,
        ))
        self._compose()
        register(self)
        if self._shared is not None:
            self._shared.attach(self)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.name!r}, state={self.state.value}, "
            f"failure_rate={self.failure_rate}, window={self.window!r}, "
            f"minimum_calls={self.minimum_calls}, open_for={self.open_for})"
        )

    # --- settings (read-only; build a new breaker to change them) ---------------------------

    @property
    def failure_rate(self) -> float:
        return self.config.failure_rate

    @property
    def slow_call_rate(self) -> float:
        return self.config.slow_call_rate

    @property
    def slow_call_duration(self) -> float | None:
        return self._slow_call_duration

    @property
    def window(self) -> CountWindow | TimeWindow:
        return self.config.window

    @property
    def minimum_calls(self) -> int:
        return self.config.minimum_calls

    @property
    def open_for(self) -> float:
        return self.config.open_for

    @property
    def half_open_calls(self) -> int:
        return self.config.half_open_calls

    @property
    def open_for_growth(self) -> float:
        return self.config.open_for_growth

    @property
    def max_open_for(self) -> float:
        return self.config.max_open_for  # type: ignore[return-value]  # set by BreakerConfig

    # --- the call paths -------------------------------------------------------------------
    #
    # Four entry points run a call: the steps ``wrap`` and ``awrap`` build for pipelines and
    # ``call``/``acall``, and the two decorator wrappers of ``__call__``. Each one inlines the
    # same two fast paths, because a helper would cost a frame on every call:
    #   open, time left, no sink:  raise CircuitOpen(left, name), nothing else;
    #   closed, nothing measured:  run the call, count it with one next(), take the lock only
    #                              on a failure.
    # Everything else (half-open, forced open, disabled, a sink or recorder listening, a
    # slow_call_duration or TimeWindow to measure) goes through ``_admit`` and ``_settle``,
    # written once. ``timed`` and ``slow_path`` have async twins that differ only by
    # ``await`` (and, for the trial lease, by running the round trip off the event loop).

    def wrap(self, inner: Step) -> Step:
        breaker, name = self, self._name
        record, settle, release = self._record, self._settle, self._release_trial
        measured_success = self._measured_success
        check_at = self._check_at
        timed_mode = self._timed
        direct = inner is invoke  # innermost: call fn here, one frame less

        def timed(fn: Any, args: Any, kwargs: Any, generation: int) -> Any:
            start = clock.monotonic()
            try:
                result = inner(fn, args, kwargs)
            except Exception as exc:
                settle(generation, exc, start, clock.monotonic())
                raise
            except BaseException:  # cancelled or interrupted: not an outcome
                if generation >= 0:
                    release(generation)
                raise
            settle(generation, None, start, clock.monotonic())
            return result

        def slow_path(fn: Any, args: Any, kwargs: Any) -> Any:
            generation = breaker._admit()
            if generation == NEED_LEASE:
                generation = breaker._lease()
            if generation == UNRECORDED:
                return inner(fn, args, kwargs)
            return timed(fn, args, kwargs, generation)

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            mode = breaker._mode
            if mode or timed_mode or dispatcher.active:
                if mode == OPEN:
                    left = breaker._open_until - clock.monotonic()
                    if left > 0.0 and not dispatcher.sinks:
                        raise CircuitOpen(left, name)
                if mode:
                    return slow_path(fn, args, kwargs)
                if timed_mode or dispatcher.record is None:
                    return timed(fn, args, kwargs, PASS)
                # closed and measured (metrics on): the plain path, timed, in this frame
                start = clock.monotonic()
                try:
                    result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
                except Exception as exc:
                    settle(PASS, exc, start, clock.monotonic())
                    raise
                measured_success(clock.monotonic() - start)
                return result
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            except Exception as exc:
                record(code_of(exc), 0.0)
                raise
            if next(breaker._seq) == check_at:
                breaker._check()
            return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        breaker, name = self, self._name
        record, settle, release = self._record, self._settle, self._release_trial
        measured_success = self._measured_success
        check_at = self._check_at
        timed_mode = self._timed
        direct = inner is ainvoke

        async def timed(fn: Any, args: Any, kwargs: Any, generation: int) -> Any:
            start = clock.monotonic()
            try:
                result = await inner(fn, args, kwargs)
            except Exception as exc:
                settle(generation, exc, start, clock.monotonic())
                raise
            except BaseException:
                if generation >= 0:
                    release(generation)
                raise
            settle(generation, None, start, clock.monotonic())
            return result

        async def slow_path(fn: Any, args: Any, kwargs: Any) -> Any:
            generation = breaker._admit()
            if generation == NEED_LEASE:
                generation = await breaker._alease()
            if generation == UNRECORDED:
                return await inner(fn, args, kwargs)
            return await timed(fn, args, kwargs, generation)

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
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
                start = clock.monotonic()  # closed and measured: as in ``wrap``
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

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``, with the closed path and the open rejection inlined.

        Same behaviour as ``Policy.__call__``; one frame less per call (and per rejection's
        traceback), since the decorator is where most breakers are used. A rejection costs
        a clock reading (``clock.monotonic``, the cheapest that follows virtual time), a
        float-to-float compare (``0.0``, not ``0``: CPython specialises only like with like)
        and a fresh exception built in C.
        """
        if not callable(fn) or self._timed:
            return super().__call__(fn)
        breaker, name, record = self, self._name, self._record
        check_at = self._check_at
        if inspect.iscoroutinefunction(fn):
            acall = self._acall

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
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

            return async_wrapper
        call = self._call

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            mode = breaker._mode
            if mode or dispatcher.active:
                if mode == OPEN:
                    left = breaker._open_until - clock.monotonic()
                    if left > 0.0 and not dispatcher.sinks:
                        raise CircuitOpen(left, name)
                return call(fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                record(code_of(exc), 0.0)
                raise
            if next(breaker._seq) == check_at:
                breaker._check()
            return result

        return wrapper

"""CircuitBreaker: stop calling a dependency that is failing, and find out when it is back.

This module holds the breaker's call paths; its decisions live in ``machine``, its settings
in ``config``, its windows in ``windows`` and its events in ``events``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ..._deprecate import renamed
from ..base import AsyncStep, Policy, Step, ainvoke, invoke
from ..settings import setting
from ..twins import unasync
from . import paths_async
from .config import BreakerConfig
from .machine import BreakerMachine
from .registry import register
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

    # --- settings (read-only: they read ``config``; build a new breaker to change them) -----

    failure_rate = setting[float]()
    slow_call_rate = setting[float]()
    slow_call_duration = setting["float | None"]()
    window = setting["CountWindow | TimeWindow"]()
    minimum_calls = setting[int]()
    open_for = setting[float]()
    half_open_calls = setting[int]()
    open_for_growth = setting[float]()
    max_open_for = setting[float]()  # never None once BreakerConfig has set it

    # --- the call paths (written once, in ``paths_async``) --------------------------------

    def wrap(self, inner: Step) -> Step:
        return _SYNC["step"](self, inner, inner is invoke)  # type: ignore[no-any-return]

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        return paths_async.step(self, inner, inner is ainvoke)

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
        if inspect.iscoroutinefunction(fn):
            return functools.wraps(fn)(paths_async.decorator(self, fn, self._acall))
        return functools.wraps(fn)(_SYNC["decorator"](self, fn, self._call))


# The call paths are written once, as async code, in ``paths_async``; the sync paths are
# derived from it (``twins.unasync``), so the twins cannot drift apart.
_SYNC = unasync(paths_async, renames={"_alease": "_lease", "acall": "call"})

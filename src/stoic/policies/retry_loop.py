"""The retry loop around Retry's one decision, written once as async code.

``stoic.policies.twins.unasync`` derives the sync loop from this module (``await`` dropped,
``acall`` -> ``call``, ``clock.asleep`` -> ``clock.sleep``). The first attempt takes the same
path as the others; only a failure (or a result ``on_result`` rejects) reaches ``decide``. A
helper called per attempt would cost a frame on the happy path (benchmarks/overhead.py, the
Retry rows), which is why the loop is one function per mode and not a shared helper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import clock  # a module attribute, so CPython reads clock.monotonic with LOAD_ATTR
from ..context import deadline_at
from ..errors import DeadlineExceeded
from ..events import DeadlineExpired, dispatcher

__all__ = ["Decide", "not_started", "step"]

#: Retry's decision: (attempt, start, previous wait, error or None for a bad result) ->
#: seconds to wait before the next attempt, or None to give up.
Decide = Callable[[int, float, float, "BaseException | None"], "float | None"]
Inner = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


def not_started(name: str) -> DeadlineExceeded:
    """The error for a call whose deadline passed before its first attempt (and its event)."""
    if dispatcher.sinks:
        dispatcher.emit(DeadlineExpired(name=name, timeout=None, overrun=0.0, started=False))
    return DeadlineExceeded(f"deadline passed before {name!r} started; the call was not made")


def step(
    decide: Decide, name: str, budget: Any, on_result: Callable[[Any], bool] | None,
    inner: Inner, direct: bool,
) -> Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[Any]]:
    """The retry step of a pipeline: ``direct`` when ``inner`` only calls ``fn``."""

    async def acall(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if budget is not None:
            budget.deposit()
        at = deadline_at()
        start = clock.monotonic()
        if at is not None and start >= at:
            raise not_started(name)
        attempt, wait = 1, 0.0
        while True:
            scope = dispatcher.attempt_scope
            try:
                if scope is not None:
                    with scope("retry", name, attempt):
                        result = await inner(fn, args, kwargs)
                elif direct:
                    result = await fn(*args, **kwargs)
                else:
                    result = await inner(fn, args, kwargs)
            except Exception as exc:
                next_wait = decide(attempt, start, wait, exc)
                if next_wait is None:
                    raise
            else:
                next_wait = None
                if on_result is not None and on_result(result):
                    next_wait = decide(attempt, start, wait, None)
                if next_wait is None:
                    record = dispatcher.record
                    if record is not None:
                        record("retry", name, "success", clock.monotonic() - start,
                               attempt, None)
                    return result
            wait = next_wait
            if wait > 0:
                await clock.asleep(wait)
            attempt += 1

    return acall

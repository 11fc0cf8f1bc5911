"""RateLimiter: at most ``rate`` calls per ``per`` seconds, locally or across a fleet.

The algorithm is GCRA (see ``stoic.state.memory.gcra``): one number per limit, no timers. It
behaves like a token bucket of ``burst`` tokens refilled one every ``per / rate`` seconds: a
quiet client may make ``burst`` calls at once, and then one per interval.

By default a call over the rate is rejected with ``RateLimitedError``, whose ``retry_after``
says when it would be admitted. With ``wait=True`` the call instead reserves the next slot and
sleeps until it comes, unless that is more than ``max_wait`` seconds away or past the context
deadline (then it is rejected without waiting). A reserved slot is used even if the caller is
cancelled while waiting.

With ``backend=stoic.state.RedisState(...)`` every process using the same ``name`` shares one
rate: one atomic Lua script, one round trip per call. If Redis fails, each process falls back
to enforcing the rate alone (see ``stoic.state.redis``).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

from .. import clock
from .._deprecate import renamed
from .._validate import count, number, seconds
from ..context import deadline_at
from ..errors import RateLimitedError
from ..events import CallRejected, dispatcher
from ..state.memory import gcra
from .base import AsyncStep, Policy, Step

if TYPE_CHECKING:
    from ..state import SharedState

__all__ = ["RateLimiter"]



class RateLimiter(Policy):
    """Admit at most ``rate`` calls per ``per`` seconds, with bursts of up to ``burst``.

    Args:
        rate: calls allowed per period (> 0).
        per: the period in seconds (> 0).
        burst: calls allowed at once after a quiet spell (int >= 1); by default ``rate``
            rounded up, i.e. a whole period's worth.
        wait: sleep until the next slot instead of rejecting.
        max_wait: with ``wait=True``, the longest wait in seconds before rejecting instead
            (> 0, or None for as long as the context deadline allows).
        backend: ``stoic.state.RedisState`` (or a shared ``MemoryState``) to share the rate
            with every limiter of the same ``name``; None keeps it in this object.
            ``state=`` is its old name (deprecated).
        name: names the limit in events, metrics and shared state; required with
            ``backend``, since it is what limiters sharing one rate have in common.
    """

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        burst: int | None = None,
        wait: bool = False,
        max_wait: float | None = None,
        state: SharedState | None = None,
        *,
        name: str | None = None,
        backend: SharedState | None = None,
    ) -> None:
        backend = renamed("RateLimiter", "state", "backend", state, backend,
                          new_given=backend is not None)
        rate = number("rate", rate, above=0)
        per = seconds("per", per, finite=True)
        if burst is None:
            burst = max(1, math.ceil(rate))
        else:
            count("burst", burst, optional=True)
        if max_wait is not None:
            if not wait:
                raise ValueError(f"max_wait needs wait=True, got max_wait={max_wait!r}")
            max_wait = seconds("max_wait", max_wait, optional=True, finite=True)
        if backend is not None and not hasattr(backend, "take"):
            raise ValueError(f"backend must be a stoic.state backend or None, got {backend!r}")
        if backend is not None and not name:
            # every limiter of a name shares one rate: a default name would merge them all
            raise ValueError(f"name is required with backend={backend!r}, got {name!r}")
        self.rate = float(rate)
        self.per = float(per)
        self.burst = burst
        self.wait = bool(wait)
        self.max_wait = None if max_wait is None else float(max_wait)
        self.backend = backend
        self.name = name or "ratelimit"
        self.interval = self.per / self.rate
        self._message = f"rate limit {self.name!r} exceeded ({self.rate:g} per {self.per:g}s)"
        self._lock = threading.Lock()
        self._tat = -math.inf
        self._compose()

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self.rate}, per={self.per}, burst={self.burst}, "
            f"wait={self.wait}, name={self.name!r})"
        )

    # --- the decision ---------------------------------------------------------------------

    def _allowed_wait(self) -> float:
        """The longest wait this call accepts: 0 when rejecting, else max_wait and deadline."""
        if not self.wait:
            return 0.0
        limit = math.inf if self.max_wait is None else self.max_wait
        at = deadline_at()
        if at is not None:
            limit = min(limit, at - clock.monotonic())
        return limit

    def _take_local(self, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = clock.monotonic()
            admitted, seconds, tat = gcra(self._tat, now, self.interval, self.burst, max_wait)
            if admitted:
                self._tat = tat
            return admitted, seconds

    def _rejected(self, retry_after: float) -> RateLimitedError:
        retry_after = max(0.0, retry_after)
        if dispatcher.sinks:
            dispatcher.emit(
                CallRejected(
                    name=self.name, policy="rate_limiter", reason="rate_limited",
                    retry_after=retry_after,
                )
            )
        return RateLimitedError(self._message, retry_after=retry_after, name=self.name)

    @property
    def state(self) -> SharedState | None:
        """The old name of ``backend``."""
        return self.backend

    def _take(self, max_wait: float) -> tuple[bool, float]:
        state = self.backend
        if state is None:
            return self._take_local(max_wait)
        return state.take(self.name, self.interval, self.burst, min(max_wait, 1e12))

    async def _atake(self, max_wait: float) -> tuple[bool, float]:
        state = self.backend
        if state is None:
            return self._take_local(max_wait)
        return await state.atake(self.name, self.interval, self.burst, min(max_wait, 1e12))

    def wrap(self, inner: Step) -> Step:
        take, allowed_wait, rejected = self._take, self._allowed_wait, self._rejected

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            admitted, seconds = take(allowed_wait())
            if not admitted:
                raise rejected(seconds)
            if seconds > 0:
                clock.sleep(seconds)
            return inner(fn, args, kwargs)

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        atake, allowed_wait, rejected = self._atake, self._allowed_wait, self._rejected

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            admitted, seconds = await atake(allowed_wait())
            if not admitted:
                raise rejected(seconds)
            if seconds > 0:
                await clock.asleep(seconds)
            return await inner(fn, args, kwargs)

        return acall


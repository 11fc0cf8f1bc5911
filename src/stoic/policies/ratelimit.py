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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import clock
from .._deprecate import renamed
from .._validate import count, number, seconds
from ..context import deadline_at
from ..errors import RateLimitedError
from ..events import CallRejected, dispatcher
from ..state.memory import gcra
from .base import AsyncStep, Policy, Step
from .settings import Configured, PolicyConfig, setting

if TYPE_CHECKING:
    from ..state import SharedState

__all__ = ["RateLimiter", "RateLimiterConfig"]



@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimiterConfig(PolicyConfig):
    """What a ``RateLimiter`` was told, validated and frozen; see ``RateLimiter``.

    ``burst`` None becomes ``rate`` rounded up; ``name`` empty becomes ``"ratelimit"`` (it is
    required with a ``backend``).
    """

    default_name = "ratelimit"
    rate: float
    per: float = 1.0
    burst: int | None = None
    wait: bool = False
    max_wait: float | None = None
    backend: SharedState | None = None

    def _check(self) -> None:
        rate = float(number("rate", self.rate, above=0))
        self._normalise("rate", rate)
        self._normalise("per", float(seconds("per", self.per, finite=True)))
        if self.burst is None:
            self._normalise("burst", max(1, math.ceil(rate)))
        else:
            count("burst", self.burst, optional=True)
        max_wait, backend, name = self.max_wait, self.backend, self.name
        if max_wait is not None:
            if not self.wait:
                raise ValueError(f"max_wait needs wait=True, got max_wait={max_wait!r}")
            max_wait = float(seconds("max_wait", max_wait, optional=True, finite=True))
            self._normalise("max_wait", max_wait)
        self._normalise("wait", bool(self.wait))
        if backend is not None and not hasattr(backend, "take"):
            raise ValueError(f"backend must be a stoic.state backend or None, got {backend!r}")
        if backend is not None and not name:
            # every limiter of a name shares one rate: a default name would merge them all
            raise ValueError(f"name is required with backend={backend!r}, got {name or None!r}")


class RateLimiter(Configured, Policy):
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

    The settings are read-only (``limiter.config``); ``replace`` builds a changed limiter
    with a rate of its own (or the same shared one, for the same ``backend`` and ``name``).
    """

    config: RateLimiterConfig

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
        self._build(RateLimiterConfig(
            rate=rate, per=per, burst=burst, wait=wait, max_wait=max_wait, backend=backend,
            name=name or "",
        ))

    def _build(self, config: RateLimiterConfig) -> None:
        self.config = config
        self._interval = config.per / config.rate
        self._burst: int = config.burst  # type: ignore[assignment]  # set by RateLimiterConfig
        self._message = f"rate limit {config.name!r} exceeded ({config.rate:g} per {config.per:g}s)"
        self._lock = threading.Lock()
        self._tat = -math.inf
        self._compose()

    rate = setting[float]()
    per = setting[float]()
    burst = setting[int]()  # never None once RateLimiterConfig has set it
    wait = setting[bool]()
    max_wait = setting["float | None"]()
    backend = setting["SharedState | None"]()
    name = setting[str]()

    @property
    def interval(self) -> float:
        """Seconds between admitted calls at the steady rate: ``per / rate``."""
        return self._interval

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self.rate}, per={self.per}, burst={self.burst}, "
            f"wait={self.wait}, name={self.name!r})"
        )

    # --- the decision ---------------------------------------------------------------------

    def _allowed_wait(self) -> float:
        """The longest wait this call accepts: 0 when rejecting, else max_wait and deadline."""
        config = self.config
        if not config.wait:
            return 0.0
        limit = math.inf if config.max_wait is None else config.max_wait
        at = deadline_at()
        if at is not None:
            limit = min(limit, at - clock.monotonic())
        return limit

    def _take_local(self, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = clock.monotonic()
            admitted, seconds, tat = gcra(self._tat, now, self._interval, self._burst, max_wait)
            if admitted:
                self._tat = tat
            return admitted, seconds

    def _rejected(self, retry_after: float) -> RateLimitedError:
        retry_after = max(0.0, retry_after)
        if dispatcher.sinks:
            dispatcher.emit(
                CallRejected(
                    name=self.config.name, policy="rate_limiter", reason="rate_limited",
                    retry_after=retry_after,
                )
            )
        return RateLimitedError(self._message, retry_after=retry_after, name=self.config.name)

    @property
    def state(self) -> SharedState | None:
        """The old name of ``backend``."""
        return self.config.backend

    def _take(self, max_wait: float) -> tuple[bool, float]:
        state = self.config.backend
        if state is None:
            return self._take_local(max_wait)
        return state.take(self.config.name, self._interval, self._burst, min(max_wait, 1e12))

    async def _atake(self, max_wait: float) -> tuple[bool, float]:
        state = self.config.backend
        if state is None:
            return self._take_local(max_wait)
        return await state.atake(
            self.config.name, self._interval, self._burst, min(max_wait, 1e12)
        )

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


"""State kept in this process: the default, and what RedisState falls back to when Redis fails.

The rate limit is GCRA (the generic cell rate algorithm): one number per key, the
*theoretical arrival time* (TAT) of the next call if calls came exactly one ``interval``
apart. A call may start once ``TAT - (burst - 1) * interval`` has passed; starting it moves
TAT on by one interval. That is a token bucket of ``burst`` tokens refilled every
``interval``, kept in a single float, so it needs no timer and no refill loop.
"""

from __future__ import annotations

import threading

from .. import clock
from .base import BreakerLink

__all__ = ["MemoryState", "gcra"]


def gcra(
    tat: float, now: float, interval: float, burst: int, max_wait: float
) -> tuple[bool, float, float]:
    """One GCRA decision: ``(admitted, wait_or_retry_after, new_tat)``.

    Admitted calls wait ``wait`` seconds (0 when the call conforms now) and move TAT on;
    a rejected call leaves TAT as it was and learns when it would have been admitted.
    """
    if tat < now:
        tat = now
    wait = tat - (burst - 1) * interval - now
    if wait > max_wait + 1e-9:  # tolerance: sums of intervals are not exact in floating point
        return False, wait, tat
    return True, (wait if wait > 0 else 0.0), tat + interval


class MemoryState:
    """Local state: breakers decide alone; rate limits are shared by limiters in this process.

    Two ``RateLimiter`` objects given the same ``MemoryState`` and ``name`` share one rate.
    """

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def __repr__(self) -> str:
        return "MemoryState()"

    def attach(self, breaker: BreakerLink) -> None:
        return None

    def detach(self, breaker: BreakerLink) -> None:
        return None

    def opened(self, breaker: BreakerLink, open_for: float) -> None:
        return None

    def closed(self, breaker: BreakerLink) -> None:
        return None

    def acquire_trial(self, breaker: BreakerLink) -> bool:
        return True

    def take(self, key: str, interval: float, burst: int, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = clock.now()
            admitted, seconds, tat = gcra(self._tat.get(key, now), now, interval, burst, max_wait)
            if admitted:
                self._tat[key] = tat
            return admitted, seconds

    async def atake(
        self, key: str, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        return self.take(key, interval, burst, max_wait)

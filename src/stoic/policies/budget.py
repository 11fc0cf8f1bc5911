"""A retry budget: retries may add at most ``ratio`` of the traffic, plus a small floor.

Without a budget, every client multiplies its load by the attempt count exactly when the
dependency is weakest: during an outage (the retry storm). With one, each call deposits
``ratio`` of a token and each retry withdraws a whole one; a retry that finds no token is not
made, and ``Retry`` gives up at once with a note saying so. ``min_per_second`` keeps a
quiet service able to retry at all. Tokens are counted over a sliding window of ``window``
seconds (10 by default, as in Finagle), in one-second buckets.

One budget may be shared by many ``Retry`` objects (say, every call to one dependency).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .. import clock
from .._validate import is_number, number, rate
from .settings import Configured, setting

__all__ = ["RetryBudget", "RetryBudgetConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetConfig:
    """What a ``RetryBudget`` was told, validated and frozen."""

    ratio: float = 0.1
    min_per_second: float = 10.0
    window: float = 10.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "ratio", float(rate("ratio", self.ratio, zero=True)))
        set_(self, "min_per_second", float(
            number("min_per_second", self.min_per_second, at_least=0, finite=False)
        ))
        window = self.window
        if not (is_number(window) and 1.0 <= window <= 3600.0):
            raise ValueError(f"window must be in [1, 3600] seconds, got {window!r}")
        set_(self, "window", float(window))


class RetryBudget(Configured):
    """Allow retries only while they stay within ``ratio`` of recent calls.

    Over any ``window`` seconds, retries <= ``ratio`` * calls + ``min_per_second`` * ``window``.
    The settings are read-only (a budget shared by many Retry objects never changes under
    them); ``replace`` builds a new budget, with an empty window.
    """

    __slots__ = (
        "_allowance", "_buckets", "_calls", "_lock", "_retries", "_second", "_size", "config",
    )

    config: RetryBudgetConfig
    ratio = setting[float]()
    min_per_second = setting[float]()
    window = setting[float]()

    def __init__(self, ratio: float = 0.1, min_per_second: float = 10.0, window: float = 10.0):
        self._build(RetryBudgetConfig(ratio=ratio, min_per_second=min_per_second, window=window))

    def _build(self, config: RetryBudgetConfig) -> None:
        self.config = config
        self._allowance = config.min_per_second * config.window  # the floor, in retries
        self._size = int(config.window)
        # one bucket per second, [calls, retries], and their sums over the window, kept as
        # they change: a withdrawal reads two numbers, whatever the window's length
        self._buckets: list[list[int]] = [[0, 0] for _ in range(self._size)]
        self._second: int | None = None  # the second of the newest bucket
        self._calls = self._retries = 0
        self._lock = threading.Lock()

    def _bucket(self) -> list[int]:
        """This second's bucket, once every bucket that left the window has been emptied."""
        second = int(clock.monotonic())
        last, size = self._second, self._size
        if second != last:
            if last is None or not 0 < second - last < size:  # a quiet window, or a new clock
                expired = range(size)
            else:
                expired = range(last + 1, second + 1)
            for number in expired:
                bucket = self._buckets[number % size]
                self._calls -= bucket[0]
                self._retries -= bucket[1]
                bucket[0] = bucket[1] = 0
            self._second = second
        return self._buckets[second % size]

    def deposit(self) -> None:
        """Record one call (every call, retried or not)."""
        with self._lock:
            self._bucket()[0] += 1
            self._calls += 1

    def try_withdraw(self) -> bool:
        """Take a token for one retry; False (and nothing taken) when the budget is spent."""
        with self._lock:
            bucket = self._bucket()
            if self._retries + 1 > self.config.ratio * self._calls + self._allowance:
                return False
            bucket[1] += 1
            self._retries += 1
            return True

    @property
    def balance(self) -> float:
        """Retries still allowed in the current window (for dashboards and tests)."""
        with self._lock:
            self._bucket()  # empties what left the window
            return self.config.ratio * self._calls + self._allowance - self._retries

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, min_per_second={self.min_per_second})"

"""The breaker's sliding windows: what the user configures, and the rings that count.

``CountWindow`` and ``TimeWindow`` are the settings (frozen, validated); each makes its ring,
the mutable counter a breaker records into. A call is recorded as an outcome code: 0 for a
success, or the bits ``FAILURE`` and ``SLOW``. ``SKIP`` (record nothing: another policy
refused the call, so the dependency was never asked) and ``JUDGE`` (record nothing, but judge
what the window holds) are never stored.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

from ..._validate import count

__all__ = [
    "FAILURE",
    "JUDGE",
    "SKIP",
    "SLOW",
    "BreakerMetrics",
    "CountRing",
    "CountWindow",
    "TimeRing",
    "TimeWindow",
]

# Plain ints, not an enum: they are or-ed together and compared on every recorded call.
FAILURE = 1
SLOW = 2
SKIP = -1
JUDGE = -2


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """What the window holds now (for probes, the CLI and tests)."""

    calls: int
    failures: int
    slow_calls: int

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return self.slow_calls / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True)
class CountWindow:
    """Judge the last ``size`` calls (Resilience4j's count-based sliding window)."""

    size: int = 100

    def __post_init__(self) -> None:
        count("size", self.size)

    def __repr__(self) -> str:
        return f"CountWindow({self.size})"

    def ring(self) -> CountRing:
        """A fresh, empty counter for this window."""
        return CountRing(self.size)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Judge the calls of the last ``seconds`` seconds, kept in one-second buckets.

    Better than a count window when traffic varies a lot: a quiet hour does not keep a
    failure from an hour ago in the window.
    """

    seconds: int = 60

    def __post_init__(self) -> None:
        count("seconds", self.seconds, maximum=3600)

    def __repr__(self) -> str:
        return f"TimeWindow(seconds={self.seconds})"

    def ring(self) -> TimeRing:
        """A fresh, empty counter for this window."""
        return TimeRing(self.seconds)


class CountRing:
    """The last ``size`` calls, kept as a call counter plus the positions of bad calls.

    A success only advances ``seq``, an ``itertools.count`` (atomic under the GIL, no lock,
    no allocation); failures and slow calls are remembered by position in two deques, and a
    position older than ``size`` calls drops out. So the healthy path costs one ``next()``,
    and a failure is O(1) amortised under the breaker's lock.
    """

    __slots__ = ("_failures", "_size", "_slow", "seq")

    def __init__(self, size: int) -> None:
        self._size = size
        self._failures: collections.deque[int] = collections.deque()
        self._slow: collections.deque[int] = collections.deque()
        self.seq = itertools.count()

    def clear(self) -> None:
        self.seq = itertools.count()
        self._failures.clear()
        self._slow.clear()

    def _counts(self, position: int) -> tuple[int, int, int]:
        """(calls, failures, slow) with ``position`` the index of the latest call."""
        floor = position - self._size
        failures, slow = self._failures, self._slow
        while failures and failures[0] <= floor:
            failures.popleft()
        while slow and slow[0] <= floor:
            slow.popleft()
        calls = position + 1
        return (calls if calls < self._size else self._size), len(failures), len(slow)

    def add(self, code: int, now: float) -> tuple[int, int, int]:
        position = next(self.seq)
        if code:
            if code & FAILURE:
                self._failures.append(position)
            if code & SLOW:
                self._slow.append(position)
        return self._counts(position)

    def counts(self, now: float) -> tuple[int, int, int]:
        # the next position, read without taking it: count's repr is "count(N)"
        return self._counts(int(repr(self.seq)[6:-1]) - 1)


class TimeRing:
    """Per-second buckets over the last ``seconds`` seconds, with running totals.

    Moving to a new second clears the buckets that fell out of the window, at most one pass
    over the ring, so the cost per record is O(1) amortised and bounded by the ring size.
    """

    __slots__ = (
        "_calls", "_fail", "_head", "_size", "_slow", "calls", "failures", "seq", "slow"
    )

    def __init__(self, seconds: int) -> None:
        self.seq = itertools.count()  # unused: a time window always records under the lock
        self._size = seconds
        self._calls = [0] * seconds
        self._fail = [0] * seconds
        self._slow = [0] * seconds
        self._head: int | None = None
        self.calls = self.failures = self.slow = 0

    def expire(self, now: float) -> None:
        second = int(now)
        head = self._head
        if head is None:
            self._head = second
            return
        if second <= head:
            return
        size = self._size
        steps = second - head
        if steps > size:
            steps = size
        for s in range(head + 1, head + 1 + steps):
            i = s % size
            if self._calls[i]:
                self.calls -= self._calls[i]
                self.failures -= self._fail[i]
                self.slow -= self._slow[i]
                self._calls[i] = self._fail[i] = self._slow[i] = 0
        self._head = second

    def clear(self) -> None:
        for i in range(self._size):
            self._calls[i] = self._fail[i] = self._slow[i] = 0
        self._head = None
        self.calls = self.failures = self.slow = 0

    def counts(self, now: float) -> tuple[int, int, int]:
        self.expire(now)
        return self.calls, self.failures, self.slow

    def add(self, code: int, now: float) -> tuple[int, int, int]:
        self.expire(now)
        head = self._head
        assert head is not None  # set by expire
        i = head % self._size
        self._calls[i] += 1
        self.calls += 1
        if code:
            if code & FAILURE:
                self._fail[i] += 1
                self.failures += 1
            if code & SLOW:
                self._slow[i] += 1
                self.slow += 1
        return self.calls, self.failures, self.slow


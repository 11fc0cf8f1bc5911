"""AdaptiveThrottle: stop sending to a backend that refuses most of what it is sent.

A backend that is shedding load still pays for every request it refuses: it reads it, looks
at it and writes a 503. When clients keep sending at full rate, refusing alone can consume it.
Client-side adaptive throttling (the Google SRE book, "Handling Overload") has each client
count, over the last ``window`` seconds, the ``requests`` it attempted and the ``accepts``
the backend took, and refuse a new request locally with probability::

    max(0, (requests - k * accepts) / (requests + 1))

While the backend accepts everything, the probability is 0. Once it refuses more than
``1 - 1/k`` of the traffic (half, with the default ``k = 2``), the client drops the excess
itself, at no cost to the backend, and keeps sending enough to notice when it recovers.
Locally refused requests count as requests, so the probability keeps up with the backend.

A call is not accepted when it fails THROTTLED (429, 503, an open breaker downstream) or
TRANSIENT (refused, unavailable); anything else, errors included, was accepted. A local
refusal raises ``ThrottledError`` (a ``stoic.Rejected``), classified THROTTLED.

Use it alone, in a ``Pipeline`` (inside ``Retry``, so each attempt is counted), or as Retry's
budget with ``ThrottleBudget``, so retries stop first when the backend is refusing work.
"""

from __future__ import annotations

import math
import random
import threading
from typing import Any

from .. import clock
from .._validate import count, number, seconds
from ..errors import Rejected
from ..events import CallRejected, dispatcher
from ..outcome import Outcome, classify
from .base import AsyncStep, Policy, Step, ainvoke, invoke
from .budget import RetryBudget

__all__ = ["AdaptiveThrottle", "ThrottleBudget", "ThrottledError"]


class ThrottledError(Rejected):
    """Raised when ``AdaptiveThrottle`` refuses a call locally, sparing the backend."""

    reason = "throttled"


class AdaptiveThrottle(Policy):
    """Refuse calls locally in proportion to how much the backend has been refusing.

    Args:
        k: accepts are multiplied by this (> 1 sends some extra load to spot recovery; 2 is
            the SRE book's choice, 1.1 throttles harder).
        window: seconds of history counted (> 0); counted in ``buckets`` slices.
        buckets: slices of the window (>= 1); older slices drop out whole.
        rng: the random source, for tests (``random.Random(seed)``).
        name: names the throttle in events and metrics.
    """

    def __init__(
        self,
        k: float = 2.0,
        window: float = 120.0,
        buckets: int = 12,
        *,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        self.k = number("k", k, at_least=1.0)
        self.window = seconds("window", window, finite=True)
        self.buckets = count("buckets", buckets)
        self.name = name or "throttle"
        self._width = self.window / buckets
        self._random = (rng or random.Random()).random
        self._lock = threading.Lock()
        # per slice: [slice number, requests, accepts]
        self._slices: list[list[float]] = [[-1.0, 0.0, 0.0] for _ in range(buckets)]
        self._compose()

    def __repr__(self) -> str:
        return f"AdaptiveThrottle(k={self.k}, window={self.window}, name={self.name!r})"

    def _slice(self, now: float) -> list[float]:
        number = math.floor(now / self._width)
        current = self._slices[number % self.buckets]
        if current[0] != number:
            current[0], current[1], current[2] = number, 0.0, 0.0
        return current

    def _totals(self, now: float) -> tuple[float, float]:
        """Requests and accepts over the slices still inside the window."""
        oldest = math.floor(now / self._width) - self.buckets
        live = [s for s in self._slices if s[0] > oldest]
        return math.fsum(s[1] for s in live), math.fsum(s[2] for s in live)

    @property
    def probability(self) -> float:
        """The chance that the next call is refused locally, from the current counts."""
        with self._lock:
            requests, accepts = self._totals(clock.monotonic())
        return max(0.0, (requests - self.k * accepts) / (requests + 1.0))

    def admit(self) -> bool:
        """Count one request and decide it: True to send it, False to refuse it locally."""
        now = clock.monotonic()
        with self._lock:
            self._slice(now)[1] += 1
            requests, accepts = self._totals(now)
        refuse = (requests - 1 - self.k * accepts) / requests  # as before this request
        return refuse <= 0 or self._random() >= refuse

    def record(self, accepted: bool) -> None:
        """Record the backend's answer to a request ``admit`` let through."""
        if accepted:
            now = clock.monotonic()
            with self._lock:
                self._slice(now)[2] += 1

    def _refused(self) -> ThrottledError:
        if dispatcher.sinks:
            dispatcher.emit(CallRejected(name=self.name, policy="throttle", reason="throttled"))
        return ThrottledError(
            f"throttle {self.name!r} refused the call locally: the backend is refusing most "
            "requests", retry_after=self._width, name=self.name,
        )

    def wrap(self, inner: Step) -> Step:
        admit, record, refused = self.admit, self.record, self._refused
        direct = inner is invoke

        def call(fn: Any, args: Any, kwargs: Any) -> Any:
            if not admit():
                raise refused()
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            except Exception as exc:
                record(accepted(exc))
                raise
            record(True)
            return result

        return call

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        admit, record, refused = self.admit, self.record, self._refused
        direct = inner is ainvoke

        async def acall(fn: Any, args: Any, kwargs: Any) -> Any:
            if not admit():
                raise refused()
            try:
                result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except Exception as exc:
                record(accepted(exc))
                raise
            record(True)
            return result

        return acall


def accepted(exc: BaseException) -> bool:
    """Whether a call that raised ``exc`` was still accepted by the backend."""
    outcome = classify(exc).outcome
    return outcome is not Outcome.THROTTLED and outcome is not Outcome.TRANSIENT


class ThrottleBudget(RetryBudget):
    """A ``RetryBudget`` that also refuses a retry the throttle would refuse.

    ``Retry(budget=ThrottleBudget(throttle))``: a retry needs a token from the budget (at most
    ``ratio`` of calls) and a pass from ``throttle``'s probability, so when the backend
    refuses most requests the retries stop before first attempts do. The throttle should
    also wrap the attempts (``Pipeline(Retry(...), throttle)``) so it sees the answers.
    """

    __slots__ = ("throttle",)

    def __init__(
        self, throttle: AdaptiveThrottle, ratio: float = 0.1, min_per_second: float = 10.0,
        window: float = 10.0,
    ) -> None:
        if not isinstance(throttle, AdaptiveThrottle):
            raise ValueError(f"throttle must be an AdaptiveThrottle, got {throttle!r}")
        super().__init__(ratio, min_per_second, window)
        self.throttle = throttle

    def try_withdraw(self) -> bool:
        """A token for one retry, if the throttle would let a request through now."""
        refuse = self.throttle.probability
        if refuse > 0 and self.throttle._random() < refuse:
            return False
        return super().try_withdraw()

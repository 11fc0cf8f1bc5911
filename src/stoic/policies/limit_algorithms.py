"""The algorithms an ``AdaptiveLimit`` can follow: Vegas, Gradient2 and AIMD.

Each algorithm is a small frozen config (its parameters, checked at construction) whose
``start()`` makes the mutable state one limiter keeps. After each window of samples the
limiter calls ``state.update(limit, rtt, inflight, dropped)`` with the window's mean latency,
its peak concurrency and whether a call in it was dropped, and clamps the answer to
``[min_limit, max_limit]``.

- ``Vegas`` (``"vegas"``): estimates the queue as ``limit * (1 - min_rtt / rtt)`` and keeps
  it between ``alpha`` and ``beta`` requests (scaled by ``log10(limit)``). Stable and
  latency-tight when the no-load latency is steady; the default for servers.
- ``Gradient2`` (``"gradient2"``): compares a short-term latency with a slow moving average
  and shrinks the limit by that gradient, with ``sqrt(limit)`` headroom. Copes with a
  baseline latency that drifts (caches warming, payload mix changing).
- ``Aimd`` (``"aimd"``): additive increase, multiplicative decrease on drops and on windows
  slower than ``latency``. Simple and predictable; choose it when only errors and timeouts,
  not latency, tell you about overload.

A window whose peak concurrency used less than half the limit says nothing about capacity
(the caller was not pushing), so Vegas and Gradient2 keep the limit as it is then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .._validate import count, number, rate, seconds

__all__ = [
    "ALGORITHMS",
    "Aimd",
    "Estimator",
    "Gradient2",
    "LimitAlgorithm",
    "Vegas",
    "resolve_algorithm",
]


class Estimator(Protocol):
    """The mutable state of one algorithm for one limiter."""

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """The next limit (before clamping to [min, max]) after a window of samples."""
        ...


class LimitAlgorithm(Protocol):
    """An algorithm's configuration: ``start()`` makes the state for one limiter."""

    def start(self) -> Estimator:
        """Fresh state for a new limiter."""
        ...


def _scale(limit: float) -> float:
    """log10 of the limit, at least 1: how Vegas grows its thresholds with the limit."""
    return max(1.0, math.log10(max(limit, 1.0)))


def _idle(limit: float, inflight: int) -> bool:
    """The caller used less than half the limit: no evidence either way."""
    return inflight * 2 < limit


@dataclass(slots=True)
class _VegasState:
    config: Vegas
    min_rtt: float = math.inf
    windows: int = 0

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        self.windows += 1
        if self.windows >= self.config.probe_every:
            self.windows = 0
            self.min_rtt = rtt
            return limit
        self.min_rtt = min(self.min_rtt, rtt)
        step = _scale(limit)
        if dropped:
            return limit - step
        if _idle(limit, inflight):
            return limit
        queue = limit * (1.0 - self.min_rtt / rtt) if rtt > 0 else 0.0
        if queue > self.config.beta * step:
            return limit - step
        if queue < self.config.alpha * step:
            return limit + step
        return limit


@dataclass(frozen=True, slots=True)
class Vegas:
    """TCP Vegas applied to concurrency: keep between ``alpha`` and ``beta`` calls queued.

    Args:
        alpha: below this estimated queue (times ``log10(limit)``, at least 1), grow.
        beta: above this estimated queue (same scaling), shrink.
        probe_every: windows between resets of the no-load latency to the current one,
            so a dependency that became slower for good is not punished forever.
    """

    alpha: float = 1.0
    beta: float = 2.0
    probe_every: int = 200

    def __post_init__(self) -> None:
        number("alpha", self.alpha, above=0)
        number("beta", self.beta, at_least=self.alpha)
        count("probe_every", self.probe_every)

    def start(self) -> Estimator:
        return _VegasState(self)


@dataclass(slots=True)
class _GradientState:
    config: Gradient2
    long_rtt: float = 0.0
    weight: float = field(init=False)

    def __post_init__(self) -> None:
        self.weight = 2.0 / (self.config.long_window + 1)

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        config = self.config
        if self.long_rtt <= 0:
            self.long_rtt = rtt
        else:
            self.long_rtt += (rtt - self.long_rtt) * self.weight
        if self.long_rtt > 2 * rtt:  # latency fell a lot: let the average catch up fast
            self.long_rtt = max(rtt, self.long_rtt * 0.9)
        if dropped:
            gradient = 0.5
        elif _idle(limit, inflight):
            return limit
        elif rtt <= 0:
            gradient = 1.0
        else:
            gradient = max(0.5, min(1.0, config.tolerance * self.long_rtt / rtt))
        estimate = limit * gradient + math.sqrt(limit)
        return limit * (1.0 - config.smoothing) + estimate * config.smoothing


@dataclass(frozen=True, slots=True)
class Gradient2:
    """Shrink by the gradient between a long-term and a short-term latency.

    Args:
        tolerance: how much slower than the long-term average a window may be before the
            limit shrinks (1.5: half again as slow).
        smoothing: weight of each new estimate, in (0, 1]: lower is steadier and slower.
        long_window: windows averaged into the long-term latency.
    """

    tolerance: float = 1.5
    smoothing: float = 0.2
    long_window: int = 100

    def __post_init__(self) -> None:
        number("tolerance", self.tolerance, at_least=1.0)
        rate("smoothing", self.smoothing)
        count("long_window", self.long_window)

    def start(self) -> Estimator:
        return _GradientState(self)


@dataclass(frozen=True, slots=True)
class Aimd:
    """Additive increase, multiplicative decrease.

    Args:
        increase: added to the limit after a busy window with no drop.
        backoff: the limit is multiplied by this, in (0, 1), after a window with a drop or
            a mean latency above ``latency``.
        latency: seconds; a window slower than this counts as a drop. None: only drops.

    AIMD keeps no state between windows, so the config is its own estimator.
    """

    increase: float = 1.0
    backoff: float = 0.9
    latency: float | None = 1.0

    def __post_init__(self) -> None:
        number("increase", self.increase, above=0)
        if rate("backoff", self.backoff) == 1.0:
            raise ValueError(f"backoff must be in (0, 1), got {self.backoff!r}")
        if self.latency is not None:
            seconds("latency", self.latency, optional=True)

    def start(self) -> Estimator:
        return self

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        if dropped or (self.latency is not None and rtt > self.latency):
            return limit * self.backoff
        if _idle(limit, inflight):
            return limit
        return limit + self.increase


#: The algorithms known by name.
ALGORITHMS: dict[str, Callable[[], LimitAlgorithm]] = {
    "aimd": Aimd, "gradient2": Gradient2, "vegas": Vegas,
}


def resolve_algorithm(algorithm: str | LimitAlgorithm) -> LimitAlgorithm:
    """The algorithm config for a name or a config; ValueError naming ``algorithm``."""
    if isinstance(algorithm, str):
        factory = ALGORITHMS.get(algorithm)
        if factory is None:
            raise ValueError(
                f"algorithm must be one of {sorted(ALGORITHMS)} or an algorithm config, "
                f"got {algorithm!r}"
            )
        return factory()
    if not callable(getattr(algorithm, "start", None)):
        raise ValueError(f"algorithm must be a name or have start(), got {algorithm!r}")
    return algorithm

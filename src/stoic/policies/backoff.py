"""How long to wait before the next attempt.

A ``Backoff`` is frozen configuration. ``delay(retry, previous)`` gives the wait before retry
number ``retry`` (1 for the first retry), given the previous wait (used by decorrelated
jitter). Jitter spreads clients apart so that a fleet recovering from the same outage does
not retry in lock-step (the thundering herd):

- ``"full"``: uniform in [0, d]: the best spread, and the default.
- ``"equal"``: d/2 plus uniform in [0, d/2]: never much shorter than d.
- ``"decorrelated"``: uniform in [initial, 3 * previous], capped: each wait grows from the
  last one rather than from the attempt count.
- ``None``: exactly d.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .._validate import number, seconds

__all__ = ["Backoff", "Jitter", "constant", "exponential", "linear"]

Jitter = Literal["full", "equal", "decorrelated"] | None
_JITTERS = ("full", "equal", "decorrelated", None)


@dataclass(frozen=True, slots=True)
class Backoff:
    """A wait schedule: ``initial * factor ** (retry - 1)`` plus ``step * (retry - 1)``, capped.

    Build one with ``constant``, ``linear`` or ``exponential`` rather than directly.
    """

    initial: float
    factor: float = 1.0
    step: float = 0.0
    max: float = float("inf")
    jitter: Jitter = None

    def __post_init__(self) -> None:
        seconds("initial", self.initial, zero=True)
        number("factor", self.factor, at_least=1, finite=False)
        seconds("step", self.step, zero=True)
        seconds("max", self.max, zero=True)
        if self.jitter not in _JITTERS:
            raise ValueError(
                f"jitter must be one of 'full', 'equal', 'decorrelated' or None, got {self.jitter!r}"
            )

    def base(self, retry: int) -> float:
        """The un-jittered wait before retry number ``retry`` (1-based), capped at ``max``."""
        n = retry - 1
        try:
            d = self.initial * self.factor**n + self.step * n
        except OverflowError:
            return self.max
        return d if d < self.max else self.max

    def delay(self, retry: int, previous: float = 0.0, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry``, with jitter. ``previous`` is the last wait."""
        jitter = self.jitter
        if jitter is None:
            return self.base(retry)
        uniform = (rng or _random).uniform
        if jitter == "full":
            return uniform(0.0, self.base(retry))
        if jitter == "equal":
            d = self.base(retry)
            return d / 2 + uniform(0.0, d / 2)
        low = self.initial
        high = max(low, (previous or low) * 3)
        d = uniform(low, high)
        return d if d < self.max else self.max


_random = random.Random()


def constant(delay: float = 0.1, *, max: float | None = None, jitter: Jitter = None) -> Backoff:
    """The same wait every time (no jitter by default).

    ``max`` only bounds how long a THROTTLED failure's ``retry_after`` may make Retry wait
    (beyond it, Retry gives up at once); by default the larger of ``delay`` and 5 seconds,
    the same cap as ``exponential``.
    """
    cap = (delay if delay > 5.0 else 5.0) if max is None else max
    if not cap >= delay:
        raise ValueError(f"max must be >= delay, got max={max!r} for delay={delay!r}")
    return Backoff(initial=delay, factor=1.0, max=cap, jitter=jitter)


def linear(
    initial: float = 0.1, step: float = 0.1, max: float = 5.0, *, jitter: Jitter = "full"
) -> Backoff:
    """``initial + step * (retry - 1)``, capped at ``max``."""
    return Backoff(initial=initial, step=step, max=max, jitter=jitter)


def exponential(
    initial: float = 0.1, factor: float = 2.0, max: float = 5.0, *, jitter: Jitter = "full"
) -> Backoff:
    """``initial * factor ** (retry - 1)``, capped at ``max``, with full jitter by default."""
    return Backoff(initial=initial, factor=factor, max=max, jitter=jitter)

"""The breaker's events: one frozen class per transition, named for the state it entered."""

from __future__ import annotations

from dataclasses import dataclass

from ...events import Event

__all__ = [
    "BreakerClosed",
    "BreakerDisabled",
    "BreakerForcedOpen",
    "BreakerHalfOpened",
    "BreakerOpened",
    "BreakerTransitioned",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerTransitioned(Event):
    """Base of the breaker's transition events: it moved from ``previous`` to ``state``.

    ``source`` is ``"local"`` when this process decided, ``"remote"`` when it followed shared
    state (another process of the fleet opened or closed the breaker), ``"manual"`` for
    ``force_open()``, ``disable()`` and ``reset()``.
    """

    previous: str
    state: str
    source: str = "local"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOpened(BreakerTransitioned):
    """The breaker opened: calls are rejected for ``open_for`` seconds.

    The rates and ``calls`` are those of the window (or the half-open trials) that tripped it.
    """

    failure_rate: float
    slow_call_rate: float
    calls: int
    open_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerHalfOpened(BreakerTransitioned):
    """The open period ended; up to ``trial_calls`` trial calls will decide what comes next."""

    trial_calls: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerClosed(BreakerTransitioned):
    """The breaker closed (trials succeeded, or it was reset): calls flow normally."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerForcedOpen(BreakerTransitioned):
    """``force_open()`` was called: every call is rejected until ``reset()``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerDisabled(BreakerTransitioned):
    """``disable()`` was called: every call passes and nothing is recorded until ``reset()``."""

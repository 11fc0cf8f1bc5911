"""The contract between policies and the state they may share, and the events about it.

A breaker keeps its window in memory and decides alone; what it shares is the *verdict*: an
open (with how long it lasts), a close, and who runs the next trial. A rate limiter shares
its whole state, since a fleet-wide rate cannot be decided locally. ``SharedState`` is what a
backend must offer for that; ``MemoryState`` and ``RedisState`` implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..events import Event

__all__ = [
    "BreakerLink",
    "SharedState",
    "StateStoreDegraded",
    "StateStoreRecovered",
]


class BreakerLink(Protocol):
    """What shared state needs from a breaker (``CircuitBreaker`` is one).

    ``name`` keys the shared records; ``retry_after`` is the local view of an open period
    (None when not open), so a backend can tell whether the fleet's view differs. The two
    methods let the breaker follow the fleet; a backend calls them from its own thread.
    """

    @property
    def name(self) -> str: ...
    @property
    def retry_after(self) -> float | None: ...

    def follow_open(self, ttl: float) -> None:
        """Another process opened the breaker for ``ttl`` more seconds."""
    def follow_close(self) -> None:
        """Another process closed the breaker (its trial calls succeeded)."""


class SharedState(Protocol):
    """A backend for breakers and rate limiters.

    ``shared`` is False for a backend that keeps everything in this process (then a breaker
    skips the hooks entirely). ``opened`` and ``closed`` must not block: they are called on
    the caller's thread right after a transition. ``acquire_trial`` may make one short round
    trip; it answers True when this process may run the half-open trial, and True as well
    when the backend cannot tell (a down store must never stop local recovery).

    ``take`` reserves one slot of a GCRA rate limit named ``key``: ``interval`` seconds per
    call, ``burst`` calls at once, waiting at most ``max_wait`` seconds. It returns
    ``(True, wait)`` when admitted after sleeping ``wait`` seconds, or ``(False,
    retry_after)`` when rejected. ``atake`` is the same for asyncio.
    """

    shared: bool

    def attach(self, breaker: BreakerLink) -> None: ...
    def detach(self, breaker: BreakerLink) -> None: ...
    def opened(self, breaker: BreakerLink, open_for: float) -> None: ...
    def closed(self, breaker: BreakerLink) -> None: ...
    def acquire_trial(self, breaker: BreakerLink) -> bool: ...
    def take(
        self, key: str, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]: ...
    async def atake(
        self, key: str, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StateStoreDegraded(Event):
    """The shared store failed (``error``); policies run on local state until it answers.

    Emitted once per outage, not per failed operation. ``operation`` is what was attempted.
    """

    operation: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateStoreRecovered(Event):
    """The shared store answers again after ``down_for`` seconds on local state."""

    down_for: float

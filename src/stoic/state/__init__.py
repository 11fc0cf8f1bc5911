"""Shared state for breakers and rate limiters: in memory (default) or in Redis for a fleet.

``MemoryState()`` keeps everything in this process. ``RedisState(url, prefix="stoic")``
shares breaker opens, half-open trials and rate limits with every process using the same
Redis and prefix; it needs the ``stoic[redis]`` extra, imported only when first used. When
Redis fails, policies keep running on local state and ``StateStoreDegraded`` says so.
"""

from __future__ import annotations

from .base import BreakerLink, SharedState, StateStoreDegraded, StateStoreRecovered
from .memory import MemoryState
from .redis import RedisState

__all__ = [
    "BreakerLink",
    "MemoryState",
    "RedisState",
    "SharedState",
    "StateStoreDegraded",
    "StateStoreRecovered",
]

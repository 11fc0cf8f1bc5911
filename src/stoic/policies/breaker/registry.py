"""``stoic.breakers``: every breaker by name, the one piece of global state of the breaker.

The CLI, health probes and the metrics adapters read it; a breaker registers itself when it
is made, and the latest breaker made with a name wins.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .paths import CircuitBreaker

__all__ = ["breakers", "register", "reset_breakers"]

_registry: dict[str, CircuitBreaker] = {}
_lock = threading.Lock()

#: Every breaker by name (read-only; the latest breaker made with a name wins).
breakers: Mapping[str, CircuitBreaker] = types.MappingProxyType(_registry)


def register(breaker: CircuitBreaker) -> None:
    """Make ``breaker`` the one ``breakers[breaker.name]`` returns."""
    with _lock:
        _registry[breaker.name] = breaker


def reset_breakers() -> None:
    """Forget every breaker and detach them from shared state (for tests)."""
    with _lock:
        old = list(_registry.values())
        _registry.clear()
    for breaker in old:
        breaker.detach()

"""Chaos engineering: break your own system on purpose, locally and in CI.

* ``fault`` (``stoic.chaos.faults``): in-process fault points, off unless enabled;
* ``ProxyServer`` (``stoic.chaos.proxy``): a TCP fault proxy speaking Toxiproxy 2.x's API;
* ``Supervisor``, ``partition``/``heal``, ``Monkey`` (``stoic.chaos.process``): process
  faults, network partitions and a seeded kill schedule.

Names load on first access, so ``import stoic.chaos`` does no work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .proxy import ApiError, ProxyHandle, ProxyServer

__all__ = [
    "ApiError",
    "ProxyHandle",
    "ProxyServer",
]

_LAZY = {
    "ApiError": "proxy",
    "ProxyHandle": "proxy",
    "ProxyServer": "proxy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stoic.chaos' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

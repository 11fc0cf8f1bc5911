"""Chaos engineering: break your own system on purpose, locally and in CI.

* ``fault`` (``stoic.chaos.faults``): in-process fault points, off unless enabled;
* ``ProxyServer`` / ``ProxyClient`` (``stoic.chaos.proxy``): a TCP fault proxy speaking
  Toxiproxy 2.x's HTTP API, run in-process or driven over HTTP;
* ``Supervisor``, ``partition`` / ``heal`` / ``Network``, ``Monkey``
  (``stoic.chaos.process``): process faults, network partitions and a seeded kill schedule.

Names load on first access, so ``import stoic.chaos`` does no work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .process import Monkey, Network, Supervisor, heal, partition
    from .proxy import ApiError, ProxyClient, ProxyHandle, ProxyServer

__all__ = [
    "ApiError",
    "Monkey",
    "Network",
    "ProxyClient",
    "ProxyHandle",
    "ProxyServer",
    "Supervisor",
    "heal",
    "partition",
]

_LAZY = {
    "ApiError": "proxy",
    "Monkey": "process",
    "Network": "process",
    "ProxyClient": "proxy",
    "ProxyHandle": "proxy",
    "ProxyServer": "proxy",
    "Supervisor": "process",
    "heal": "process",
    "partition": "process",
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

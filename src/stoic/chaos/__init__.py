"""Chaos engineering: break your own system on purpose, locally and in CI.

* ``fault`` (``stoic.chaos.faults``): in-process fault points, off unless enabled;
* ``ProxyServer`` / ``ProxyClient`` (``stoic.chaos.proxy``): a TCP fault proxy speaking
  Toxiproxy 2.x's HTTP API, run in-process or driven over HTTP;
* ``Supervisor``, ``partition`` / ``heal`` / ``Network``, ``Monkey``
  (``stoic.chaos.process``): process faults, network partitions and a seeded kill schedule.

Names load on first access, so ``import stoic.chaos`` does no work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .faults import (
        Fault,
        FaultInjected,
        Fixed,
        InjectedFault,
        InjectedStatusError,
        Normal,
        Plan,
        Uniform,
        disable,
        enable,
        fault,
        first,
        is_enabled,
        load_plan,
        seed,
        window,
    )
    from .process import (
        Monkey,
        Network,
        NetworkHealed,
        NetworkPartitioned,
        ProcessFaulted,
        Supervisor,
        heal,
        partition,
    )
    from .proxy import ApiError, ProxyClient, ProxyHandle, ProxyServer

__all__ = [
    "ApiError",
    "Fault",
    "FaultInjected",
    "Fixed",
    "InjectedFault",
    "InjectedStatusError",
    "Monkey",
    "Network",
    "NetworkHealed",
    "NetworkPartitioned",
    "Normal",
    "Plan",
    "ProcessFaulted",
    "ProxyClient",
    "ProxyHandle",
    "ProxyServer",
    "Supervisor",
    "Uniform",
    "disable",
    "enable",
    "fault",
    "first",
    "heal",
    "is_enabled",
    "load_plan",
    "partition",
    "seed",
    "window",
]

_LAZY = {
    "ApiError": ".proxy",
    "Fault": ".faults",
    "FaultInjected": ".faults",
    "Fixed": ".faults",
    "InjectedFault": ".faults",
    "InjectedStatusError": ".faults",
    "Monkey": ".process",
    "Network": ".process",
    "NetworkHealed": ".process",
    "NetworkPartitioned": ".process",
    "Normal": ".faults",
    "Plan": ".faults",
    "ProcessFaulted": ".process",
    "ProxyClient": ".proxy",
    "ProxyHandle": ".proxy",
    "ProxyServer": ".proxy",
    "Supervisor": ".process",
    "Uniform": ".faults",
    "disable": ".faults",
    "enable": ".faults",
    "fault": ".faults",
    "first": ".faults",
    "heal": ".process",
    "is_enabled": ".faults",
    "load_plan": ".faults",
    "partition": ".process",
    "seed": ".faults",
    "window": ".faults",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__, globals())

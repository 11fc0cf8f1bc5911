"""Chaos Toolkit extension: drive stoic's fault proxy, processes and fault plans from
``chaos run`` experiments, and probe breakers, endpoints and queues.

Activities are plain functions in ``stoic.chaostoolkit.actions`` and
``stoic.chaostoolkit.probes`` (each lists them in ``__all__``), used in an experiment as::

    {"type": "action", "name": "slow-payments",
     "provider": {"type": "python", "module": "stoic.chaostoolkit.actions",
                  "func": "add_latency", "arguments": {"proxy": "payments", "latency": 500}}}

Where things are comes from the experiment's ``configuration``: ``stoic_proxy_url`` (or
chaostoolkit-toxiproxy's ``toxiproxy_url`` / ``toxiproxy_host`` + ``toxiproxy_port``; default
``http://127.0.0.1:8474``), ``stoic_state_dir`` (where a ``Supervisor(state_dir=...)``
records its processes) and ``stoic_fault_plan`` (the file a service's ``STOIC_CHAOS`` names).
Needs ``stoic[chaos]`` (chaostoolkit-lib) only for ``discover``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "discover"]

__version__ = "0.1.0"


def discover(discover_system: bool = True) -> dict[str, Any]:
    """What ``chaos discover`` reports: every action and probe with its arguments."""
    from chaoslib.discovery.discover import (
        discover_actions,
        discover_probes,
        initialize_discovery_result,
    )

    discovery: dict[str, Any] = initialize_discovery_result("stoic", __version__, "stoic")
    discovery["activities"].extend(discover_actions("stoic.chaostoolkit.actions"))
    discovery["activities"].extend(discover_probes("stoic.chaostoolkit.probes"))
    return discovery

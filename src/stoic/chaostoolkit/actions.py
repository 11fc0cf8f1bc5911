"""Chaos Toolkit actions: faults on the network (proxy), on processes, and in process.

Toxic attributes use Toxiproxy's units, as the proxy does: milliseconds for delays,
KB/s for bandwidth, bytes for sizes, microseconds for the slicer's delay. Every action
returns something JSON-serialisable that the journal keeps (the toxic or proxy as the API
answered it, a pid, a list of names).
"""


import json
import os
from pathlib import Path
from typing import Any

from ._config import proxy_client, state_directory

__all__ = [
    "add_bandwidth",
    "add_latency",
    "add_limit_data",
    "add_reset_peer",
    "add_slicer",
    "add_slow_close",
    "add_timeout",
    "add_toxic",
    "create_proxy",
    "delete_proxy",
    "disable_fault_plan",
    "disable_proxy",
    "enable_fault_plan",
    "enable_proxy",
    "heal",
    "kill_process",
    "partition",
    "pause_process",
    "remove_toxic",
    "reset_proxies",
    "restart_process",
    "resume_process",
    "terminate_process",
]

Configuration = dict[str, Any]


# -- proxies -----------------------------------------------------------------------------------


def create_proxy(
    name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Create a proxy from ``listen`` to ``upstream`` (``host:port``); returns it, with the
    real listen address when ``listen`` asked for port 0."""
    created: dict[str, Any] = proxy_client(configuration).request(
        "POST", "/proxies",
        {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled},
    )
    return created


def delete_proxy(name: str, configuration: Configuration | None = None) -> bool:
    """Delete a proxy: its port stops listening and its connections are dropped."""
    proxy_client(configuration).delete(name)
    return True


def disable_proxy(name: str, configuration: Configuration | None = None) -> bool:
    """Take a proxy down: new connections are refused and open ones dropped (a dead service)."""
    proxy_client(configuration).disable(name)
    return True


def enable_proxy(name: str, configuration: Configuration | None = None) -> bool:
    """Bring a disabled proxy back on the same address."""
    proxy_client(configuration).enable(name)
    return True


def reset_proxies(configuration: Configuration | None = None) -> bool:
    """Enable every proxy and remove every toxic: the universal rollback."""
    proxy_client(configuration).reset()
    return True


def partition(proxies: list[str], configuration: Configuration | None = None) -> list[str]:
    """Cut the links carried by ``proxies`` (disable them all); returns their names."""
    from stoic.chaos.process import partition as cut

    return cut(proxy_client(configuration), proxies)


def heal(proxies: list[str], configuration: Configuration | None = None) -> list[str]:
    """Restore the links carried by ``proxies`` (enable them all)."""
    from stoic.chaos.process import heal as restore

    return restore(proxy_client(configuration), proxies)


# -- toxics ------------------------------------------------------------------------------------


def add_toxic(
    proxy: str, type: str, name: str | None = None, stream: str = "downstream",
    toxicity: float = 1.0, attributes: dict[str, Any] | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Add any toxic (``latency``, ``bandwidth``, ``slow_close``, ``timeout``, ``reset_peer``,
    ``slicer``, ``limit_data``); ``name`` defaults to ``<type>_<stream>``."""
    toxic: dict[str, Any] = proxy_client(configuration).request(
        "POST", f"/proxies/{proxy}/toxics",
        {"name": name, "type": type, "stream": stream, "toxicity": toxicity,
         "attributes": attributes or {}},
    )
    return toxic


def add_latency(
    proxy: str, latency: int, jitter: int = 0, stream: str = "downstream",
    toxicity: float = 1.0, name: str | None = None, configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Delay every chunk by ``latency`` +- ``jitter`` milliseconds."""
    return add_toxic(proxy, "latency", name, stream, toxicity,
                     {"latency": latency, "jitter": jitter}, configuration)


def add_bandwidth(
    proxy: str, rate: int, stream: str = "downstream", toxicity: float = 1.0,
    name: str | None = None, configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Cap throughput at ``rate`` KB/s (1 KB = 1000 bytes)."""
    return add_toxic(proxy, "bandwidth", name, stream, toxicity, {"rate": rate}, configuration)


def add_slow_close(
    proxy: str, delay: int, stream: str = "downstream", toxicity: float = 1.0,
    name: str | None = None, configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Delay the close of a connection by ``delay`` milliseconds after its data."""
    return add_toxic(proxy, "slow_close", name, stream, toxicity, {"delay": delay},
                     configuration)


def add_timeout(
    proxy: str, timeout: int, stream: str = "downstream", toxicity: float = 1.0,
    name: str | None = None, configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Swallow all data and close after ``timeout`` ms (0: hold the connection forever)."""
    return add_toxic(proxy, "timeout", name, stream, toxicity, {"timeout": timeout},
                     configuration)


def add_reset_peer(
    proxy: str, timeout: int = 0, stream: str = "downstream", toxicity: float = 1.0,
    name: str | None = None, configuration: Configuration | None = None,
) -> dict[str, Any]:
    """On the first data, wait ``timeout`` ms, then reset the connection (ECONNRESET)."""
    return add_toxic(proxy, "reset_peer", name, stream, toxicity, {"timeout": timeout},
                     configuration)


def add_slicer(
    proxy: str, average_size: int, size_variation: int = 0, delay: int = 0,
    stream: str = "downstream", toxicity: float = 1.0, name: str | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Cut data into pieces of ``average_size`` +- ``size_variation`` bytes, ``delay``
    microseconds apart."""
    return add_toxic(proxy, "slicer", name, stream, toxicity,
                     {"average_size": average_size, "size_variation": size_variation,
                      "delay": delay}, configuration)


def add_limit_data(
    proxy: str, bytes: int, stream: str = "downstream", toxicity: float = 1.0,
    name: str | None = None, configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Close each connection once ``bytes`` bytes have passed."""
    return add_toxic(proxy, "limit_data", name, stream, toxicity, {"bytes": bytes},
                     configuration)


def remove_toxic(proxy: str, name: str, configuration: Configuration | None = None) -> bool:
    """Remove a toxic; new and open connections are healthy again at once."""
    proxy_client(configuration).remove_toxic(proxy, name)
    return True


# -- processes ---------------------------------------------------------------------------------


def kill_process(
    name: str, state_dir: str | None = None, configuration: Configuration | None = None
) -> int:
    """SIGKILL a supervised process (and its process group); returns its pid."""
    directory = state_directory(state_dir, configuration)
    pid = directory.pid(name)
    directory.kill(name)
    return pid


def terminate_process(
    name: str, grace: float = 5.0, state_dir: str | None = None,
    configuration: Configuration | None = None,
) -> int:
    """SIGTERM a supervised process, SIGKILL after ``grace`` seconds; returns its pid."""
    directory = state_directory(state_dir, configuration)
    pid = directory.pid(name)
    directory.terminate(name, grace=grace)
    return pid


def pause_process(
    name: str, state_dir: str | None = None, configuration: Configuration | None = None
) -> int:
    """SIGSTOP a supervised process: alive, holding its sockets, answering nothing."""
    directory = state_directory(state_dir, configuration)
    directory.pause(name)
    return directory.pid(name)


def resume_process(
    name: str, state_dir: str | None = None, configuration: Configuration | None = None
) -> int:
    """SIGCONT a paused process."""
    directory = state_directory(state_dir, configuration)
    directory.resume(name)
    return directory.pid(name)


def restart_process(
    name: str, graceful: bool = True, state_dir: str | None = None,
    configuration: Configuration | None = None,
) -> int:
    """Stop a supervised process and start its recorded command again; returns the new pid."""
    return state_directory(state_dir, configuration).restart(name, graceful=graceful)


# -- in-process fault plans --------------------------------------------------------------------


def _plan_path(path: str | None, configuration: Configuration | None) -> Path:
    chosen = path or (configuration or {}).get("stoic_fault_plan")
    if not chosen:
        raise ValueError("no fault plan path: pass path or set configuration.stoic_fault_plan")
    return Path(str(chosen))


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    temporary.replace(path)  # atomic: the watching service never reads half a plan


def enable_fault_plan(
    faults: dict[str, Any], seed: int | None = None, path: str | None = None,
    configuration: Configuration | None = None,
) -> str:
    """Write a fault plan to the file a service's ``STOIC_CHAOS`` names; the service picks it
    up within a fraction of a second. ``faults`` maps fault point names to settings
    (``error``, ``rate``, ``latency``, ``first`` / ``window``). Returns the path."""
    from stoic.chaos.faults import load_plan

    plan: dict[str, Any] = {"faults": faults}
    if seed is not None:
        plan["seed"] = seed
    load_plan(plan)  # refuse a bad plan here, in the experiment, not silently in the service
    target = _plan_path(path, configuration)
    _write(target, plan)
    return str(target)


def disable_fault_plan(path: str | None = None, configuration: Configuration | None = None) -> str:
    """Turn in-process faults off in the service watching the plan file."""
    target = _plan_path(path, configuration)
    _write(target, {"enabled": False, "faults": {}})
    return str(target)

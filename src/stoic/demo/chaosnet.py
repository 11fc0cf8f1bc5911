"""The network between the services, and the faults the scenario puts on it.

With stoic's Toxiproxy-compatible proxy available (``stoic.chaos``), ``orders`` reaches
payments, inventory and fulfillment through one proxy each, and the scenario's network faults
are toxics set through the proxy's HTTP API, exactly as a Toxiproxy client would set them:
``latency`` for "payments slow", ``timeout`` (data held, never answered: a partition that
blackholes packets) for "inventory partitioned". Without it, the same faults are made by
each service's in-process fault layer, and the run says so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

__all__ = ["InProcessNetwork", "Network", "ToxiproxyNetwork", "start"]

PROXIED = ("payments", "inventory", "fulfillment")


class Network(Protocol):
    """Where orders reaches each service, and switches for the network faults."""

    kind: str
    urls: dict[str, str]
    notes: list[str]

    def latency(self, service: str, seconds: float, jitter: float) -> None:
        """Delay replies from ``service`` by ``seconds`` (+- ``jitter``); 0 removes it."""

    def partition(self, service: str, on: bool) -> None:
        """Cut ``service`` off from orders (requests hang unanswered), or heal the cut."""

    def close(self) -> None:
        """Stop whatever this network started."""


class InProcessNetwork:
    """Direct connections; faults made by the services' own fault layer."""

    kind = "in-process fault layer"

    def __init__(self, ports: dict[str, int], notes: list[str]) -> None:
        self.ports = ports
        self.urls = {name: f"http://127.0.0.1:{ports[name]}" for name in PROXIED}
        self.notes = notes

    def _control(self, service: str, body: dict[str, Any]) -> None:
        import httpx

        try:
            httpx.post(f"{self.urls[service]}/_demo/chaos", json=body, timeout=2.0)
        except httpx.HTTPError:
            pass  # the service is down: nothing to slow down

    def latency(self, service: str, seconds: float, jitter: float) -> None:
        self._control(service, {"latency": seconds, "jitter": jitter if seconds else 0.0})

    def partition(self, service: str, on: bool) -> None:
        self._control(service, {"blackhole": on})

    def close(self) -> None:
        pass


class ToxiproxyNetwork:
    """One proxy per service, driven through the Toxiproxy HTTP API of ``stoic proxy``."""

    kind = "Toxiproxy-compatible proxy (stoic.chaos)"

    def __init__(self, api: str, urls: dict[str, str], notes: list[str]) -> None:
        self.api = api
        self.urls = urls
        self.notes = notes

    def _toxic(self, service: str, name: str, body: dict[str, Any] | None) -> None:
        import httpx

        base = f"{self.api}/proxies/{service}/toxics"
        with httpx.Client(timeout=5.0) as client:
            client.delete(f"{base}/{name}")  # 404 when absent: fine
            if body is not None:
                response = client.post(base, json={"name": name, **body})
                response.raise_for_status()

    def latency(self, service: str, seconds: float, jitter: float) -> None:
        body = None
        if seconds > 0:
            body = {"type": "latency", "stream": "downstream", "toxicity": 1.0,
                    "attributes": {"latency": int(seconds * 1000), "jitter": int(jitter * 1000)}}
        self._toxic(service, "demo_latency", body)

    def partition(self, service: str, on: bool) -> None:
        body = None
        if on:
            body = {"type": "timeout", "stream": "upstream", "toxicity": 1.0,
                    "attributes": {"timeout": 0}}
        self._toxic(service, "demo_partition", body)

    def close(self) -> None:
        pass


def _proxy_available() -> bool:
    return importlib.util.find_spec("stoic.chaos.proxy") is not None


def start(
    procs: Any, workdir: Path, ports: dict[str, int], api_port: int | None = None,
) -> Network:
    """The network for one run: proxies when stoic's proxy is installed, else in-process."""
    notes: list[str] = []
    if not _proxy_available():
        notes.append("stoic.chaos.proxy is not available: network faults were made in-process")
        return InProcessNetwork(ports, notes)
    from .procs import free_port, wait_http

    if api_port is None:
        api_port = free_port()
    procs.start("proxy", procs.python("-m", "stoic.demo.proxy", str(api_port), str(workdir)))
    api = f"http://127.0.0.1:{api_port}"
    wait_http(f"{api}/version", timeout=20.0)
    import httpx

    urls: dict[str, str] = {}
    with httpx.Client(timeout=5.0) as client:
        for name in PROXIED:
            response = client.post(f"{api}/proxies", json={
                "name": name, "listen": "127.0.0.1:0",
                "upstream": f"127.0.0.1:{ports[name]}", "enabled": True,
            })
            response.raise_for_status()
            listen = response.json()["listen"]
            urls[name] = f"http://{listen}"
    return ToxiproxyNetwork(api, urls, notes)

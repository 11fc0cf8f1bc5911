"""Network partitions: disable the fault proxies between groups of services, and heal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from ..events import dispatcher
from .process_events import NetworkHealed, NetworkPartitioned

__all__ = ["Network", "ProxyControl", "heal", "partition"]


class ProxyControl(Protocol):
    """Anything that can disable and enable a proxy by name (ProxyServer, ProxyClient)."""

    def disable(self, name: str) -> None: ...
    def enable(self, name: str) -> None: ...


def partition(
    control: ProxyControl, proxies: Iterable[str], *, name: str = "partition"
) -> list[str]:
    """Disable ``proxies`` (new connections refused, open ones dropped); return their names."""
    return _switch(control.disable, proxies, name, NetworkPartitioned)


def heal(control: ProxyControl, proxies: Iterable[str], *, name: str = "partition") -> list[str]:
    """Enable ``proxies`` again; return their names."""
    return _switch(control.enable, proxies, name, NetworkHealed)


def _switch(
    switch: Callable[[str], None], proxies: Iterable[str], name: str,
    event: type[NetworkPartitioned] | type[NetworkHealed],
) -> list[str]:
    """Apply ``switch`` to each proxy in turn, then publish ``event`` for all of them."""
    names = list(proxies)
    for proxy in names:
        switch(proxy)
    if dispatcher.sinks:
        dispatcher.emit(event(name=name, proxies=tuple(names)))
    return names


class Network:
    """Which proxy carries traffic from which service to which, so groups can be cut apart.

    ``links`` maps a proxy name to ``(client_service, server_service)``: the proxy that
    ``orders`` uses to reach ``payments`` is ``{"payments-from-orders": ("orders", "payments")}``.
    ``partition(["gateway", "orders"], ["payments"])`` disables every proxy between the two
    groups, in both directions; ``heal()`` enables them all again.
    """

    def __init__(
        self, control: ProxyControl, links: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        self.control = control
        self.links: dict[str, tuple[str, str]] = dict(links or {})
        self.cut: list[str] = []

    def link(self, proxy: str, client: str, server: str) -> None:
        """Declare that ``client`` reaches ``server`` through ``proxy``."""
        self.links[proxy] = (client, server)

    def between(self, *groups: Iterable[str]) -> list[str]:
        """Proxies whose two ends are in different groups (services in no group stay linked)."""
        member: dict[str, int] = {}
        for index, group in enumerate(groups):
            for service in group:
                if service in member:
                    raise ValueError(f"service {service!r} is in two groups")
                member[service] = index
        return [
            proxy for proxy, (a, b) in self.links.items()
            if a in member and b in member and member[a] != member[b]
        ]

    def partition(self, *groups: Iterable[str]) -> list[str]:
        """Cut the network between ``groups``; returns the disabled proxies."""
        if len(groups) < 2:
            raise ValueError(f"a partition needs at least two groups, got {len(groups)}")
        proxies = [p for p in self.between(*groups) if p not in self.cut]
        self.cut.extend(partition(self.control, proxies))
        return proxies

    def heal(self) -> list[str]:
        """Enable every proxy this network disabled."""
        cut, self.cut = self.cut, []
        return heal(self.control, cut)

    @contextlib.contextmanager
    def partitioned(self, *groups: Iterable[str]) -> Iterator[list[str]]:
        """Partitioned inside the block, healed after it (even on error)."""
        proxies = self.partition(*groups)
        try:
            yield proxies
        finally:
            self.heal()

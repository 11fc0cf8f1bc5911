"""Proxy management verbs, and ``ProxyClient``: the sync client of a running proxy's HTTP API.

``ProxyControl`` holds the verbs once; ``ProxyClient`` (over HTTP, standard library only) and
``ProxyServer`` (in process, in ``background``) each supply its one ``request`` method.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .model import ApiError, split_address

__all__ = ["ProxyClient", "ProxyControl", "ProxyHandle"]


class ProxyControl:
    """Proxy management verbs shared by ``ProxyServer`` (in process) and ``ProxyClient`` (HTTP).

    Every method raises ``ApiError`` (with Toxiproxy's status and message) when refused.
    """

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one API request; return the decoded JSON answer (None for 204).

        Raises ``ApiError`` with the server's status and message when it refuses.
        """
        raise NotImplementedError

    def create(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", *, enabled: bool = True
    ) -> ProxyHandle:
        """Create a proxy; ``listen`` on port 0 gets a free port (read ``handle.port``)."""
        data = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return ProxyHandle(self, self.request("POST", "/proxies", data))

    def populate(self, proxies: Iterable[Mapping[str, Any]]) -> list[ProxyHandle]:
        """Create or replace several proxies at once (Toxiproxy's config-file shape)."""
        payload = self.request("POST", "/populate", list(proxies))
        return [ProxyHandle(self, p) for p in payload["proxies"]]

    def proxy(self, name: str) -> ProxyHandle:
        """A handle on an existing proxy (ApiError 404 if there is none)."""
        return ProxyHandle(self, self.request("GET", f"/proxies/{name}"))

    def proxies(self) -> dict[str, dict[str, Any]]:
        """Every proxy as Toxiproxy JSON, by name."""
        result: dict[str, dict[str, Any]] = self.request("GET", "/proxies")
        return result

    def exists(self, name: str) -> bool:
        return name in self.proxies()

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/proxies/{name}")

    def disable(self, name: str) -> None:
        """Stop listening and drop the proxy's connections: the service looks down."""
        self.request("POST", f"/proxies/{name}", {"enabled": False})

    def enable(self, name: str) -> None:
        self.request("POST", f"/proxies/{name}", {"enabled": True})

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.request("POST", "/reset")

    def add_toxic(
        self, proxy: str, type: str, *, name: str | None = None, stream: str = "downstream",
        toxicity: float = 1.0, **attributes: int,
    ) -> dict[str, Any]:
        """Add a toxic; attributes use Toxiproxy's units (ms, KB/s, bytes, microseconds)."""
        data = {"name": name, "type": type, "stream": stream, "toxicity": toxicity,
                "attributes": attributes}
        result: dict[str, Any] = self.request("POST", f"/proxies/{proxy}/toxics", data)
        return result

    def update_toxic(
        self, proxy: str, name: str, *, toxicity: float | None = None, **attributes: int
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"attributes": attributes}
        if toxicity is not None:
            data["toxicity"] = toxicity
        result: dict[str, Any] = self.request("PATCH", f"/proxies/{proxy}/toxics/{name}", data)
        return result

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.request("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/proxies/{proxy}/toxics")
        return result


class ProxyClient(ProxyControl):
    """Drive a running ``stoic proxy`` (or a real Toxiproxy) over its HTTP API.

    Standard library only (``urllib``), so chaos scripts need no HTTP package. Errors raise
    ``ApiError`` with the server's status and message.
    """

    def __init__(self, url: str = "http://127.0.0.1:8474", *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json", "User-Agent": "stoic-chaos"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace").strip() or exc.reason
            raise ApiError(exc.code, str(message)) from None
        return json.loads(raw) if raw.strip() else None


class ProxyHandle:
    """A proxy seen from Python: its addresses, and verbs that act on it by name."""

    def __init__(self, control: ProxyControl, data: Mapping[str, Any]) -> None:
        self._control = control
        self.name: str = data["name"]
        self.upstream: str = data["upstream"]
        self.listen: str = data["listen"]
        self.enabled: bool = data["enabled"]

    def __repr__(self) -> str:
        return f"ProxyHandle({self.name!r}, listen={self.listen!r}, upstream={self.upstream!r})"

    @property
    def host(self) -> str:
        return split_address(self.listen, "listen")[0]

    @property
    def port(self) -> int:
        """The port clients connect to (already resolved if created with port 0)."""
        return split_address(self.listen, "listen")[1]

    def add_toxic(self, type: str, **kwargs: Any) -> dict[str, Any]:
        """See ``ProxyServer.add_toxic``."""
        return self._control.add_toxic(self.name, type, **kwargs)

    def remove_toxic(self, name: str) -> None:
        self._control.remove_toxic(self.name, name)

    def update_toxic(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return self._control.update_toxic(self.name, name, **kwargs)

    def toxics(self) -> list[dict[str, Any]]:
        return self._control.toxics(self.name)

    @contextlib.contextmanager
    def toxic(self, type: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Add a toxic for the duration of a ``with`` block, then remove it."""
        toxic = self.add_toxic(type, **kwargs)
        try:
            yield toxic
        finally:
            with contextlib.suppress(ApiError):
                self.remove_toxic(toxic["name"])

    def disable(self) -> None:
        self._control.disable(self.name)
        self.enabled = False

    def enable(self) -> None:
        self._control.enable(self.name)
        self.enabled = True

    @contextlib.contextmanager
    def down(self) -> Iterator[ProxyHandle]:
        """Disabled inside the block (connections refused), enabled again after it."""
        self.disable()
        try:
            yield self
        finally:
            self.enable()

    def delete(self) -> None:
        self._control.delete(self.name)

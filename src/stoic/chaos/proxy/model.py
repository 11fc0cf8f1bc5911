"""The Toxiproxy API model: proxies, their toxics, and the operations the routes call.

Every operation validates the whole request before it changes anything, and a change, once
started, cannot fail half way: a refused request leaves every proxy exactly as it was. The
one exception is documented on ``Proxy.apply`` (an address lost to another process while it
was being swapped). Call everything here on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..toxics import Toxic, ToxicError
from .pipes import Connection, client_side

__all__ = [
    "ApiError",
    "Collection",
    "Proxy",
    "ProxyUpdate",
    "body_object",
    "join_address",
    "split_address",
]


class ApiError(Exception):
    """An API request was refused: ``status`` and ``message`` become ``{"error", "status"}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------
# addresses and request fields


def split_address(text: Any, what: str) -> tuple[str, int]:
    """``"host:port"``, ``"[::1]:port"`` or ``":port"`` -> (host, port); ApiError 400 if not."""
    if not isinstance(text, str) or ":" not in text:
        raise ApiError(400, f"{what} must be \"host:port\", got {text!r}")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        raise ApiError(400, f"{what} has a bad host: {text!r}")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ApiError(400, f"{what} has a bad port: {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ApiError(400, f"{what} port must be in 0..65535, got {port}")
    return host, port


def join_address(host: str, port: int) -> str:
    """The inverse of ``split_address``: IPv6 hosts get brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def body_object(body: Any) -> Mapping[str, Any]:
    """The request body as a JSON object, or ApiError 400."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "bad request body: expected a JSON object")
    return body


def _enabled(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"enabled must be true or false, got {value!r}")
    return value


def _address_field(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        return default
    split_address(value, key)
    return str(value)


def _required_string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        raise ApiError(400, f"missing required field: {key}")
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ProxyUpdate:
    """A validated partial update of one proxy: the state it should end in."""

    listen: str
    upstream: str
    enabled: bool

    @classmethod
    def parse(cls, proxy: Proxy, data: Mapping[str, Any]) -> ProxyUpdate:
        """Validate ``data`` against ``proxy``; omitted or null fields keep their values."""
        listen = _address_field(data, "listen", proxy.listen)
        upstream = _address_field(data, "upstream", proxy.upstream)
        return cls(listen, upstream, _enabled(data.get("enabled"), proxy.enabled))


# ---------------------------------------------------------------------------------------------
# one proxy


class Proxy:
    """One listening address forwarding to one upstream, with its toxics. Lives on the loop."""

    def __init__(
        self, name: str, listen: str, upstream: str, loop: asyncio.AbstractEventLoop,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.upstream_address = split_address(upstream, "upstream")
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.connections: set[Connection] = set()
        self.loop = loop
        self.rng = rng
        self._server: asyncio.Server | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics.values()],
        }

    async def _bind(self, listen: str) -> tuple[asyncio.Server, str]:
        """Listen on ``listen``; return the server and the address with its real port.

        Changes nothing on the proxy; ApiError 409 when the address cannot be bound.
        """
        host, port = split_address(listen, "listen")
        try:
            server = await self.loop.create_server(
                lambda: client_side(self), host or None, port, reuse_address=True, backlog=1024,
            )
        except OSError as exc:
            raise ApiError(409, f"cannot listen on {listen}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeError) as exc:  # a host name the resolver refuses
            raise ApiError(400, f"cannot listen on {listen!r}: {exc}") from None
        sockname = server.sockets[0].getsockname()
        bound_host = host if host and host != "localhost" else str(sockname[0])
        if not host:
            bound_host = "::" if ":" in str(sockname[0]) else "0.0.0.0"
        return server, join_address(bound_host, int(sockname[1]))

    async def start(self) -> None:
        """Listen; a port 0 is resolved to the real port, kept across disable/enable."""
        if self._server is not None:
            return
        self._server, self.listen = await self._bind(self.listen)
        self.enabled = True

    async def stop(self) -> None:
        """Stop listening and drop every connection (new ones are refused)."""
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.drop_connections()
        if server is not None:
            await server.wait_closed()

    def drop_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    async def apply(self, update: ProxyUpdate) -> None:
        """Move to ``update``'s state, all or nothing: ApiError 409 leaves the proxy as it was.

        A new listen address is bound before the old one is let go. Only when the new address
        clashes with the proxy's own (same port) is the old one closed first; if the new one
        still cannot be bound the old one is bound again, and in the rare case that another
        process took it meanwhile the proxy ends disabled, which the 409's message says.
        """
        moving = update.listen != self.listen
        if not update.enabled:
            if self.enabled:
                await self.stop()
        elif moving or self._server is None:
            if moving and self._server is not None:
                server, listen = await self._bind_moving(update.listen)
            else:
                server, listen = await self._bind(update.listen)
            old, self._server = self._server, server
            if old is not None:
                old.close()
            self.drop_connections()
            self.listen, self.enabled = listen, True
        elif update.upstream != self.upstream:
            self.drop_connections()  # connections already made go to the old upstream
        if moving and not update.enabled:
            self.listen = update.listen
        self.upstream = update.upstream
        self.upstream_address = split_address(update.upstream, "upstream")

    async def _bind_moving(self, listen: str) -> tuple[asyncio.Server, str]:
        try:
            return await self._bind(listen)
        except ApiError:
            if split_address(listen, "listen")[1] != split_address(self.listen, "listen")[1]:
                raise
        # e.g. 127.0.0.1:P -> 0.0.0.0:P: our own socket is in the way
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        try:
            return await self._bind(listen)
        except ApiError as exc:
            try:
                self._server, self.listen = await self._bind(self.listen)
            except ApiError:
                self.enabled = False
                self.drop_connections()
                raise ApiError(409, f"{exc.message}; the old address {self.listen} was taken "
                                    "meanwhile, so the proxy is now disabled") from None
            raise

    def set_toxics(self, toxics: dict[str, Toxic]) -> None:
        """Replace the toxics; live connections follow at once (this never raises)."""
        self.toxics = toxics
        for conn in list(self.connections):
            conn.sync()


# ---------------------------------------------------------------------------------------------
# every proxy of a server


class Collection:
    """Every proxy of one server, and the operations of the Toxiproxy API over them.

    ``lock`` serialises requests (``routes.dispatch`` holds it), so each sees a whole state.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, seed: int | None = None) -> None:
        self.loop = loop
        self.rng = random.Random(seed)
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(404, "proxy not found")
        return proxy

    def _new(self, data: Mapping[str, Any]) -> tuple[Proxy, bool]:
        name = _required_string(data, "name")
        upstream = _required_string(data, "upstream")
        listen = _address_field(data, "listen", "127.0.0.1:0")
        enabled = _enabled(data.get("enabled"), True)
        return Proxy(name, listen, upstream, self.loop, self.rng), enabled

    async def create(self, data: Mapping[str, Any]) -> Proxy:
        proxy, enabled = self._new(data)
        if proxy.name in self.proxies:
            raise ApiError(409, "proxy already exists")
        if enabled:
            await proxy.start()
        self.proxies[proxy.name] = proxy
        return proxy

    async def populate(self, items: Any) -> tuple[list[Proxy], ApiError | None]:
        """Create or replace each proxy; stops at the first that cannot listen (returned)."""
        if not isinstance(items, list):
            raise ApiError(400, "bad request body: expected a JSON array of proxies")
        parsed = [self._new(body_object(item)) for item in items]  # validate all first
        done: list[Proxy] = []
        for proxy, enabled in parsed:
            existing = self.proxies.get(proxy.name)
            if existing is not None:
                if existing.listen == proxy.listen and existing.upstream == proxy.upstream:
                    done.append(existing)
                    continue
                await self.delete(existing.name)
            try:
                if enabled:
                    await proxy.start()
            except ApiError as exc:
                return done, exc
            self.proxies[proxy.name] = proxy
            done.append(proxy)
        return done, None

    async def update(self, name: str, data: Mapping[str, Any]) -> Proxy:
        proxy = self.get(name)
        await proxy.apply(ProxyUpdate.parse(proxy, data))
        return proxy

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def reset(self) -> dict[str, str]:
        """Remove every toxic and enable every proxy; return {name: why} for those that could
        not listen again. Never stops half way."""
        failed: dict[str, str] = {}
        for proxy in list(self.proxies.values()):
            proxy.set_toxics({})
            if not proxy.enabled:
                try:
                    await proxy.start()
                except ApiError as exc:
                    failed[proxy.name] = exc.message
        return failed

    def add_toxic(self, name: str, data: Mapping[str, Any]) -> Toxic:
        proxy = self.get(name)
        try:
            toxic = Toxic.from_json(data)
        except ToxicError as exc:
            raise ApiError(exc.status, str(exc)) from None
        if toxic.name in proxy.toxics:
            raise ApiError(409, "toxic already exists")
        proxy.set_toxics({**proxy.toxics, toxic.name: toxic})
        return toxic

    def get_toxic(self, name: str, toxic_name: str) -> Toxic:
        toxic = self.get(name).toxics.get(toxic_name)
        if toxic is None:
            raise ApiError(404, "toxic not found")
        return toxic

    def update_toxic(self, name: str, toxic_name: str, data: Mapping[str, Any]) -> Toxic:
        proxy = self.get(name)
        try:
            new = self.get_toxic(name, toxic_name).updated(data)
        except ToxicError as exc:
            raise ApiError(exc.status, str(exc)) from None
        proxy.set_toxics({**proxy.toxics, toxic_name: new})
        return new

    def remove_toxic(self, name: str, toxic_name: str) -> None:
        proxy = self.get(name)
        self.get_toxic(name, toxic_name)
        proxy.set_toxics({k: v for k, v in proxy.toxics.items() if k != toxic_name})

    async def close(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()
        self.proxies.clear()

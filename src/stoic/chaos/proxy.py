"""A TCP fault proxy whose HTTP control API is compatible with Toxiproxy 2.x.

Existing Toxiproxy clients (``toxiproxy-python``, ``chaostoolkit-toxiproxy``, the Go client)
drive it unchanged: the same routes, JSON shapes, status codes and toxics
(see ``stoic.chaos.toxics``). It is pure asyncio and the standard library, so it runs
anywhere stoic does:

* ``stoic proxy`` (``stoic.chaos.cli``) serves the API on 127.0.0.1:8474 like Toxiproxy;
* ``ProxyServer`` runs the same server on a background thread, for tests and demos::

    with ProxyServer() as server:                       # API on a free port
        db = server.create("db", upstream="127.0.0.1:5432")
        connect(port=db.port)                           # through the proxy
        with db.toxic("latency", latency=200):          # every chunk 200 ms late
            ...

Data takes a fast path while a stream has no toxic (the bytes go from one socket's
``data_received`` straight to the other's ``write``); toxics send it through a per-stream
queue and task, which is what lets latency keep ordering and bandwidth pace the stream.
Adding or removing a toxic changes live connections too, as in Toxiproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any
from urllib.parse import unquote

from .toxics import Toxic, ToxicError, _Stage, make_stage

__all__ = [
    "TOXIPROXY_VERSION",
    "ApiError",
    "Collection",
    "Proxy",
    "ProxyClient",
    "ProxyHandle",
    "ProxyServer",
    "serve",
]

#: the Toxiproxy version whose API this server speaks (reported by ``GET /version``)
TOXIPROXY_VERSION = "2.12.0"

_QUEUE_HIGH = 1 << 20  # bytes queued on a toxic stream before the source is paused
_QUEUE_LOW = 1 << 18
_MAX_BODY = 1 << 20


class ApiError(Exception):
    """An API request was refused: ``status`` and ``message`` become ``{"error", "status"}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------
# addresses


def _split_address(text: Any, what: str) -> tuple[str, int]:
    """``"host:port"``, ``"[::1]:port"`` or ``":port"`` -> (host, port); ApiError 400 if not."""
    if not isinstance(text, str) or ":" not in text:
        raise ApiError(400, f"{what} must be \"host:port\", got {text!r}")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ApiError(400, f"{what} has a bad port: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ApiError(400, f"{what} port must be in 0..65535, got {port}")
    return host, port


def _join_address(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# connections


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (client side or upstream side)."""

    __slots__ = ("conn", "is_client", "out", "transport")

    def __init__(self, conn: _Connection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.out: _Pipe | None = None  # the pipe this side's bytes go into

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.is_client:
            self.conn.client_made(self)

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.feed(data)

    def eof_received(self) -> bool:
        if self.out is not None:
            self.out.feed_eof()
        return True  # keep our write side open (half-close) until the other stream ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        self.conn.writing_paused(self, True)

    def resume_writing(self) -> None:
        self.conn.writing_paused(self, False)


class _Pipe:
    """One direction of a connection: bytes from ``source`` to ``dest`` through the toxics."""

    __slots__ = (
        "chain", "conn", "dest", "drained", "ended", "queue", "queued", "source", "stages",
        "stream", "task",
    )

    def __init__(self, conn: _Connection, stream: str, source: _Side, dest: _Side) -> None:
        self.conn = conn
        self.stream = stream
        self.source = source
        self.dest = dest
        self.stages: dict[int, tuple[Toxic, _Stage | None]] = {}  # id(toxic) -> rolled stage
        self.chain: list[_Stage] = []
        self.queue: deque[tuple[bytes | None, float]] = deque()  # (None, t) ends the stream
        self.queued = 0
        self.task: asyncio.Task[None] | None = None
        self.drained: asyncio.Event | None = None
        self.ended = False

    # -- input, from the source socket -------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not self.chain and self.task is None:
            transport = self.dest.transport
            if transport is not None:
                transport.write(data)  # the fast path: no toxic on this stream
            return
        self.queue.append((data, self.conn.loop.time()))
        self.queued += len(data)
        if self.queued > _QUEUE_HIGH and self.source.transport is not None:
            self.source.transport.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        if not self.chain and self.task is None:
            self.finish()
            return
        self.queue.append((None, 0.0))
        self._wake()

    def finish(self) -> None:
        """The source ended and everything before the end was passed on."""
        self.ended = True
        transport = self.dest.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        self.conn.pipe_ended()

    # -- toxics ------------------------------------------------------------------------------
    def sync(self, toxics: Iterable[Toxic]) -> None:
        """Make this stream's chain follow the proxy's toxics: roll new ones, drop removed."""
        wanted = [t for t in toxics if t.stream == self.stream]
        keep = {id(t) for t in wanted}
        for key in list(self.stages):
            if key not in keep:
                _toxic, stage = self.stages.pop(key)
                if stage is not None:
                    stage.cancel()
        for toxic in wanted:
            if id(toxic) not in self.stages:
                self.stages[id(toxic)] = (toxic, make_stage(toxic, self.conn, self.conn.rng))
        self.chain = [s for t in wanted if (s := self.stages[id(t)][1]) is not None]
        if self.chain or self.queue:
            self._wake()

    def cancel(self) -> None:
        for _toxic, stage in self.stages.values():
            if stage is not None:
                stage.cancel()
        self.stages.clear()
        self.chain = []
        if self.task is not None:
            self.task.cancel()
            self.task = None

    # -- the toxic path ----------------------------------------------------------------------
    def _wake(self) -> None:
        if self.task is None and not self.conn.closed:
            self.task = self.conn.loop.create_task(self._run())
        elif self.drained is not None:
            self.drained.set()

    async def _run(self) -> None:
        try:
            while True:
                if not self.queue:
                    if not self.chain:
                        return  # back to the fast path
                    self.drained = asyncio.Event()
                    await self.drained.wait()
                    self.drained = None
                    continue
                data, arrived = self.queue.popleft()
                if data is None:
                    for stage in list(self.chain):
                        await stage.before_eof()
                    self.finish()
                    return
                self.queued -= len(data)
                if self.queued < _QUEUE_LOW and self.source.transport is not None:
                    self.source.transport.resume_reading()
                await self._through(list(self.chain), 0, data, arrived)
        except asyncio.CancelledError:
            pass
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    async def _through(self, chain: list[_Stage], index: int, data: bytes, arrived: float) -> None:
        if self.conn.closed:
            return
        if index == len(chain):
            await self._write(data)
            return

        async def next_(piece: bytes, at: float) -> None:
            await self._through(chain, index + 1, piece, at)

        await chain[index].pipe(data, arrived, next_)

    async def _write(self, data: bytes) -> None:
        transport = self.dest.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        waiter = self.conn.write_waiters.get(self.dest)
        if waiter is not None:
            await waiter


class _Connection:
    """A client connection and its upstream: two sides, two pipes, one toxic state each."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.rng = proxy.rng
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.pipes: list[_Pipe] = []
        self.write_waiters: dict[_Side, asyncio.Future[None]] = {}
        self.closed = False

    # the Link protocol, used by toxics
    def close(self) -> None:
        """Flush what is written, then close both sides (a toxic ended the connection)."""
        self._end(abort=False)

    def reset(self) -> None:
        """Abort both sides with SO_LINGER 0, so the peers get ECONNRESET."""
        if self.closed:
            return
        for transport in self._transports():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._end(abort=True)

    def abort(self) -> None:
        """Drop the connection at once (the proxy was disabled or deleted)."""
        self._end(abort=True)

    def _transports(self) -> list[asyncio.Transport]:
        return [
            side.transport for side in (self.client, self.upstream)
            if side is not None and side.transport is not None
        ]

    def _end(self, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in self.pipes:
            pipe.cancel()
        for transport in self._transports():
            if abort:
                transport.abort()
            else:
                transport.close()
        for waiter in self.write_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.proxy.connections.discard(self)

    # events from the sides
    def client_made(self, side: _Side) -> None:
        self.client = side
        assert side.transport is not None
        side.transport.pause_reading()
        self.proxy.connections.add(self)
        self.loop.create_task(self._dial())

    async def _dial(self) -> None:
        host, port = self.proxy.upstream_address
        try:
            _transport, upstream = await self.loop.create_connection(
                lambda: _Side(self, is_client=False), host, port
            )
        except OSError:
            self.abort()  # like Toxiproxy: an unreachable upstream closes the client
            return
        if self.closed:
            if upstream.transport is not None:
                upstream.transport.abort()
            return
        assert self.client is not None
        self.upstream = upstream
        up = _Pipe(self, "upstream", self.client, upstream)
        down = _Pipe(self, "downstream", upstream, self.client)
        self.client.out, upstream.out = up, down
        self.pipes = [up, down]
        toxics = list(self.proxy.toxics.values())
        up.sync(toxics)
        down.sync(toxics)
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def sync(self) -> None:
        toxics = list(self.proxy.toxics.values())
        for pipe in self.pipes:
            pipe.sync(toxics)

    def side_lost(self, side: _Side) -> None:
        # the other side flushes what it was sent, then ends; closing the lost one is a no-op
        self._end(abort=False)

    def pipe_ended(self) -> None:
        if self.pipes and all(p.ended for p in self.pipes):
            self.close()

    def writing_paused(self, side: _Side, paused: bool) -> None:
        # Backpressure: while a socket's send buffer is full, stop reading what feeds it.
        feeder = self.upstream if side is self.client else self.client
        if paused:
            self.write_waiters[side] = self.loop.create_future()
            if feeder is not None and feeder.transport is not None:
                feeder.transport.pause_reading()
        else:
            waiter = self.write_waiters.pop(side, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if feeder is not None and feeder.transport is not None and not self.closed:
                pipe = feeder.out
                if pipe is None or pipe.queued < _QUEUE_HIGH:
                    feeder.transport.resume_reading()


# ---------------------------------------------------------------------------------------------
# proxies and the collection


class Proxy:
    """One listening address forwarding to one upstream, with its toxics. Lives on the loop."""

    def __init__(
        self, name: str, listen: str, upstream: str, loop: asyncio.AbstractEventLoop,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.upstream_address = _split_address(upstream, "upstream")
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.connections: set[_Connection] = set()
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

    async def start(self) -> None:
        """Listen; a port 0 is resolved to the real port, kept across disable/enable."""
        if self._server is not None:
            return
        host, port = _split_address(self.listen, "listen")
        try:
            server = await self.loop.create_server(
                lambda: _Side(_Connection(self), is_client=True),
                host or None, port, reuse_address=True, backlog=1024,
            )
        except OSError as exc:
            raise ApiError(409, f"cannot listen on {self.listen}: {exc.strerror or exc}") from None
        self._server = server
        sockname = server.sockets[0].getsockname()
        bound_host = host if host and host != "localhost" else str(sockname[0])
        if not host:
            bound_host = "::" if ":" in str(sockname[0]) else "0.0.0.0"
        self.listen = _join_address(bound_host, int(sockname[1]))
        self.enabled = True

    async def stop(self) -> None:
        """Stop listening and drop every connection (new ones are refused)."""
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        if server is not None:
            await server.wait_closed()

    def set_toxics(self, toxics: dict[str, Toxic]) -> None:
        self.toxics = toxics
        for conn in list(self.connections):
            conn.sync()


def _body_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ApiError(400, "bad request body: expected a JSON object")
    return body


def _enabled(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"enabled must be true or false, got {value!r}")
    return value


def _required_string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        raise ApiError(400, f"missing required field: {key}")
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string, got {value!r}")
    return value


class Collection:
    """Every proxy of one server, and the Toxiproxy API over them. Call only on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seed: int | None = None) -> None:
        self.loop = loop
        self.rng = random.Random(seed)
        self.proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()

    # -- operations ------------------------------------------------------------------------
    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(404, "proxy not found")
        return proxy

    def _new(self, data: Mapping[str, Any]) -> tuple[Proxy, bool]:
        name = _required_string(data, "name")
        upstream = _required_string(data, "upstream")
        listen = data.get("listen")
        if listen is None or listen == "":
            listen = "127.0.0.1:0"
        _split_address(listen, "listen")
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
        if not isinstance(items, list):
            raise ApiError(400, "bad request body: expected a JSON array of proxies")
        parsed = [self._new(_body_object(item)) for item in items]  # validate all first
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
        enabled = _enabled(data.get("enabled"), proxy.enabled)
        listen = data.get("listen") or proxy.listen
        upstream = data.get("upstream") or proxy.upstream
        _split_address(listen, "listen")
        upstream_address = _split_address(upstream, "upstream")
        if listen != proxy.listen or upstream != proxy.upstream:
            await proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
            proxy.upstream_address = upstream_address
        if enabled and not proxy.enabled:
            await proxy.start()
        elif not enabled and proxy.enabled:
            await proxy.stop()
        return proxy

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def reset(self) -> None:
        for proxy in self.proxies.values():
            proxy.set_toxics({})
            if not proxy.enabled:
                await proxy.start()

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
        toxic = self.get_toxic(name, toxic_name)
        try:
            new = toxic.updated(data)
        except ToxicError as exc:
            raise ApiError(exc.status, str(exc)) from None
        toxics = dict(proxy.toxics)
        toxics[toxic_name] = new
        proxy.set_toxics(toxics)
        return new

    def remove_toxic(self, name: str, toxic_name: str) -> None:
        proxy = self.get(name)
        self.get_toxic(name, toxic_name)
        proxy.set_toxics({k: v for k, v in proxy.toxics.items() if k != toxic_name})

    async def close(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()
        self.proxies.clear()

    # -- the HTTP API, as (method, path, body) -> (status, json) -----------------------------
    async def dispatch(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """Answer one API request. ``body`` is decoded JSON (or None). Errors are ApiError."""
        async with self._lock:  # one change at a time: requests see whole states
            return await self._route(method, path, body)

    async def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/") if p]
        n = len(parts)
        if n == 1 and parts[0] == "version" and method == "GET":
            return 200, {"version": TOXIPROXY_VERSION}
        if n == 1 and parts[0] == "reset" and method == "POST":
            await self.reset()
            return 204, None
        if n == 1 and parts[0] == "populate" and method == "POST":
            done, error = await self.populate(body)
            payload: dict[str, Any] = {"proxies": [p.to_json() for p in done]}
            if error is not None:
                payload.update({"error": error.message, "status": error.status})
                return error.status, payload
            return 201, payload
        if n >= 1 and parts[0] == "proxies":
            if n == 1:
                if method == "GET":
                    return 200, {name: p.to_json() for name, p in self.proxies.items()}
                if method == "POST":
                    return 201, (await self.create(_body_object(body))).to_json()
            elif n == 2:
                if method == "GET":
                    return 200, self.get(parts[1]).to_json()
                if method in ("POST", "PATCH"):
                    return 200, (await self.update(parts[1], _body_object(body))).to_json()
                if method == "DELETE":
                    await self.delete(parts[1])
                    return 204, None
            elif n == 3 and parts[2] == "toxics":
                if method == "GET":
                    return 200, [t.to_json() for t in self.get(parts[1]).toxics.values()]
                if method == "POST":
                    return 200, self.add_toxic(parts[1], _body_object(body)).to_json()
            elif n == 4 and parts[2] == "toxics":
                if method == "GET":
                    return 200, self.get_toxic(parts[1], parts[3]).to_json()
                if method in ("POST", "PATCH"):
                    toxic = self.update_toxic(parts[1], parts[3], _body_object(body))
                    return 200, toxic.to_json()
                if method == "DELETE":
                    self.remove_toxic(parts[1], parts[3])
                    return 204, None
            else:
                raise ApiError(404, f"no such route: {path}")
            raise ApiError(405, f"method {method} not allowed on {path}")
        raise ApiError(404, f"no such route: {path}")


# ---------------------------------------------------------------------------------------------
# the HTTP/1.1 server (small: JSON requests with Content-Length or chunked bodies)

_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
    500: "Internal Server Error",
}


def _response(status: int, payload: Any, keep_alive: bool) -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
    body = b""
    if status != 204 and payload is not None:
        body = json.dumps(payload).encode() + b"\n"
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if not keep_alive:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()).strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise ApiError(413, "request body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readline()
    length = int(headers.get("content-length", "0") or 0)
    if length > _MAX_BODY:
        raise ApiError(413, "request body too large")
    return await reader.readexactly(length) if length else b""


async def _handle_http(
    collection: Collection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                method, target, version = line.decode("latin-1").split()
            except ValueError:
                writer.write(_response(400, {"error": "bad request line", "status": 400}, False))
                return
            headers: dict[str, str] = {}
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                key, _, value = header.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            keep_alive = (
                headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
            )
            status, payload = await _answer(
                collection, method.upper(), target, headers, reader, writer
            )
            writer.write(_response(status, payload, keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def _answer(
    collection: Collection, method: str, target: str, headers: Mapping[str, str],
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
) -> tuple[int, Any]:
    try:
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl asks before big bodies
        raw = await _read_body(reader, headers)
        # Like Toxiproxy: a browser must not be able to drive the proxy (CSRF from a web page).
        if headers.get("user-agent", "").startswith("Mozilla/"):
            raise ApiError(403, "User agent not allowed")
        body: Any = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise ApiError(400, f"bad request body: {exc}") from None
        return await collection.dispatch(method, target, body)
    except ApiError as exc:
        return exc.status, {"error": exc.message, "status": exc.status}
    except ValueError as exc:
        return 400, {"error": f"bad request: {exc}", "status": 400}
    except Exception as exc:  # the proxy keeps serving whatever one request did
        return 500, {"error": f"internal error: {exc!r}", "status": 500}


async def _start_api(collection: Collection, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _handle_http(collection, reader, writer)
        except asyncio.CancelledError:
            # Shutting down. Ending normally matters: Python 3.11's start_server callback
            # calls task.exception(), which raises (and logs) for a cancelled handler task.
            return

    return await asyncio.start_server(handle, host, port, reuse_address=True)


async def serve(
    host: str = "127.0.0.1", port: int = 8474, proxies: Iterable[Mapping[str, Any]] = (),
    *, seed: int | None = None, ready: asyncio.Future[int] | None = None,
) -> None:
    """Run the API and the ``proxies`` (Toxiproxy config entries) until cancelled."""
    loop = asyncio.get_running_loop()
    collection = Collection(loop, seed)
    _done, error = await collection.populate(list(proxies))
    if error is not None:
        await collection.close()
        raise ApiError(error.status, error.message)
    server = await _start_api(collection, host, port)
    if ready is not None:
        ready.set_result(int(server.sockets[0].getsockname()[1]))
    try:
        async with server:
            await server.serve_forever()
    finally:
        await collection.close()


# ---------------------------------------------------------------------------------------------
# ProxyServer: the same server on a background thread, driven from Python


class _Control:
    """Proxy management verbs shared by ``ProxyServer`` (in process) and ``ProxyClient`` (HTTP).

    Every method raises ``ApiError`` (with Toxiproxy's status and message) when refused.
    """

    def request(self, method: str, path: str, body: Any = None) -> Any:
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


class ProxyClient(_Control):
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

    def __init__(self, control: _Control, data: Mapping[str, Any]) -> None:
        self._control = control
        self.name: str = data["name"]
        self.upstream: str = data["upstream"]
        self.listen: str = data["listen"]
        self.enabled: bool = data["enabled"]

    def __repr__(self) -> str:
        return f"ProxyHandle({self.name!r}, listen={self.listen!r}, upstream={self.upstream!r})"

    @property
    def host(self) -> str:
        return _split_address(self.listen, "listen")[0]

    @property
    def port(self) -> int:
        """The port clients connect to (already resolved if created with port 0)."""
        return _split_address(self.listen, "listen")[1]

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


class ProxyServer(_Control):
    """The fault proxy on its own thread and event loop, for tests, demos and scripts.

    ``with ProxyServer() as server:`` starts it (API on ``server.api_port``, a free port by
    default) and stops it, dropping every connection, on exit. The methods (``create``,
    ``add_toxic``, ``disable``, ``reset``...) act directly on the server, without HTTP; any
    Toxiproxy client can drive it too, at ``server.api_url``. ``seed`` makes toxicity rolls
    and jitter repeatable.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *,
        proxies: Iterable[Mapping[str, Any]] = (), seed: int | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        self.host = host
        self._port = port
        self._initial = [dict(p) for p in proxies]
        self._seed = seed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._collection: Collection | None = None
        self._api: asyncio.Server | None = None
        self.api_port = 0

    @property
    def api_url(self) -> str:
        """Base URL of the Toxiproxy-compatible API, e.g. ``http://127.0.0.1:8474``."""
        return f"http://{_join_address(self.host, self.api_port)}"

    def start(self) -> ProxyServer:
        """Start the thread, the API and the initial proxies; return self."""
        if self._thread is not None:
            raise RuntimeError("ProxyServer already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="stoic-proxy", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._setup())
        except BaseException:
            self.stop()
            raise
        return self

    async def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        self._collection = Collection(loop, self._seed)
        _done, error = await self._collection.populate(self._initial)
        if error is not None:
            raise error
        self._api = await _start_api(self._collection, self.host, self._port)
        self.api_port = int(self._api.sockets[0].getsockname()[1])

    async def _teardown(self) -> None:
        if self._api is not None:
            self._api.close()
        if self._collection is not None:
            await self._collection.close()
        # end what is left (idle API keep-alive connections, toxic timers) before the loop stops
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close every proxy and connection and stop the thread (safe to call twice)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._run(self._teardown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("ProxyServer is not running")
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API request handled in process; returns the JSON answer or raises ApiError."""
        if self._collection is None:
            raise RuntimeError("ProxyServer is not running")
        encoded = json.loads(json.dumps(body)) if body is not None else None
        _status, payload = self._run(self._collection.dispatch(method, path, encoded))
        return payload

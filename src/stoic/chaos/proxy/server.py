"""The HTTP API server: HTTP/1.1 parsed by h11 (sans-IO) on the proxy's asyncio loop.

h11 does the framing (request line, headers, Content-Length or chunked bodies, keep-alive,
pipelining, ``Expect: 100-continue``); this module decides what to answer:

* a body over ``MAX_BODY`` bytes answers 413 and the connection is closed, so nothing after
  it on that connection is ever read as a request;
* requests a browser could send on a web page's behalf are refused before their body is read
  (cross-site request forgery): a ``User-Agent`` starting with ``Mozilla/`` (403, as
  Toxiproxy does), an ``Origin`` other than the API's own (403; browsers send Origin on every
  cross-site POST, ``mode: "no-cors"`` included), ``Sec-Fetch-Site: cross-site`` or
  ``same-site`` (403), and a write (POST, PUT, PATCH, DELETE) whose ``Content-Type`` is not
  JSON (415: the only bodies a page can send without a CORS preflight are form and text
  types). curl, ``toxiproxy-python`` and Node's fetch send none of these;
* a malformed request answers 400 (431 for a header block over 64 KiB) and closes.

Needs the ``chaos`` extra (h11).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from .model import ApiError, Collection, join_address
from .routes import Answer, dispatch

__all__ = ["MAX_BODY", "MAX_HEAD", "browser_refusal", "own_origins", "serve", "start_api"]

#: largest request body accepted, in bytes (a ``populate`` of thousands of proxies fits)
MAX_BODY = 1 << 20
#: largest request line plus headers, in bytes
MAX_HEAD = 64 * 1024

_LINGER_SECONDS = 2.0  # after a refusal, how long unread input is drained before closing
_LINGER_BYTES = 4 * MAX_BODY
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""})

Headers = Mapping[str, list[str]]


def own_origins(host: str, port: int) -> frozenset[str]:
    """The ``Origin`` values of the API itself (loopback names are interchangeable)."""
    hosts = {"127.0.0.1", "localhost", "::1"} if host in _LOOPBACK else {host.lower()}
    origins = {f"http://{join_address(h, port)}" for h in hosts}
    if port == 80:
        origins |= {origin.rsplit(":", 1)[0] for origin in origins}
    return frozenset(origins)


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and
                                          mime.endswith("+json"))


def browser_refusal(method: str, headers: Headers, origins: Iterable[str]) -> ApiError | None:
    """Why a request that a web page could have sent is refused, or None if it is not."""
    if any(agent.startswith("Mozilla/") for agent in headers.get("user-agent", ())):
        return ApiError(403, "User agent not allowed")
    for origin in headers.get("origin", ()):
        if origin.strip().lower().rstrip("/") not in origins:
            return ApiError(403, f"Origin not allowed: {origin!r} (only the API's own)")
    for site in headers.get("sec-fetch-site", ()):
        if site.strip().lower() in ("cross-site", "same-site"):
            return ApiError(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    if method in _WRITES:
        types = headers.get("content-type")
        if types is not None and not all(_is_json(t) for t in types):
            return ApiError(415, f"Content-Type must be application/json, got {types[0]!r}")
        has_body = "transfer-encoding" in headers or any(
            length.strip() != "0" for length in headers.get("content-length", ()))
        if types is None and has_body:
            return ApiError(415, "a request body needs Content-Type: application/json")
    return None


def _too_large(headers: Headers, head_size: int) -> ApiError | None:
    # h11 enforces MAX_HEAD only on a header block still arriving; this catches the rest
    if head_size > MAX_HEAD:
        return ApiError(431, f"request header block over {MAX_HEAD} bytes")
    lengths = headers.get("content-length", ())  # digits only: h11 checked
    if any(len(length) > 12 or int(length) > MAX_BODY for length in lengths):
        return ApiError(413, f"request body too large (limit {MAX_BODY} bytes)")
    return None


def _error(exc: ApiError) -> Answer:
    return exc.status, {"error": exc.message, "status": exc.status}


async def _answer(collection: Collection, method: str, target: str, raw: bytes) -> Answer:
    """Decode the JSON body, dispatch, and turn every refusal into an error answer."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError) as exc:
        return _error(ApiError(400, f"bad request body: {exc}"))
    try:
        return await dispatch(collection, method, target, body)
    except ApiError as exc:
        return _error(exc)
    except ValueError as exc:
        return _error(ApiError(400, f"bad request: {exc}"))
    except Exception as exc:  # the proxy keeps serving; operations store nothing until valid
        return _error(ApiError(500, f"internal error: {exc!r}"))


class _Exchange:
    """One client connection: h11's state, the socket, and the request being read."""

    def __init__(self, api: _Api, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        import h11

        self.h11 = h11
        self.api = api
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.head = False

    async def run(self) -> None:
        h11 = self.h11
        try:
            while await self._one_request():
                self.conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
                await self._refuse(ApiError(status, f"bad request: {exc}"))
        except (ConnectionError, h11.LocalProtocolError):
            pass

    async def _event(self) -> Any:
        h11 = self.h11
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(65536))

    async def _one_request(self) -> bool:
        """Answer one request; True when the connection may carry another."""
        h11 = self.h11
        request = await self._event()
        if not isinstance(request, h11.Request):
            return False  # the client closed (ConnectionClosed)
        headers: dict[str, list[str]] = {}
        for name, value in request.headers:
            headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        method = request.method.decode("ascii").upper()
        self.head = method == "HEAD"  # a HEAD answer has the headers of GET's, and no body
        head_size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        refusal = browser_refusal(method, headers, self.api.origins) or _too_large(
            headers, head_size)
        if refusal is not None:  # answered unread: the connection cannot be trusted further
            await self._refuse(refusal)
            return False
        if self.conn.they_are_waiting_for_100_continue:
            self.writer.write(self.conn.send(h11.InformationalResponse(status_code=100)) or b"")
        raw = await self._body()
        if raw is None:
            await self._refuse(ApiError(413, f"request body too large (limit {MAX_BODY} bytes)"))
            return False
        target = request.target.decode("ascii")
        await self._respond(*await _answer(self.api.collection, method, target, raw))
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def _refuse(self, error: ApiError) -> None:
        """Answer ``error`` and end the connection without reading another request from it.

        What the client sent after is drained unread for a moment (at most ``_LINGER_BYTES``
        bytes or ``_LINGER_SECONDS``): closing with unread data would send a TCP reset, which
        can destroy the answer before the client reads it.
        """
        await self._respond(*_error(error), close=True)
        if self.writer.can_write_eof():
            self.writer.write_eof()
        loop = asyncio.get_running_loop()
        until, drained = loop.time() + _LINGER_SECONDS, 0
        while drained < _LINGER_BYTES and (left := until - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except (asyncio.TimeoutError, ConnectionError):
                return
            if not data:
                return
            drained += len(data)

    async def _body(self) -> bytes | None:
        """The request body, or None as soon as it passes ``MAX_BODY``."""
        h11 = self.h11
        chunks: list[bytes] = []
        total = 0
        while True:
            event = await self._event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            if not isinstance(event, h11.Data):
                raise ConnectionError("the client closed during the request body")
            total += len(event.data)
            if total > MAX_BODY:
                return None
            chunks.append(bytes(event.data))

    async def _respond(self, status: int, payload: Any, close: bool = False) -> None:
        h11 = self.h11
        body = b"" if status == 204 or payload is None else json.dumps(payload).encode() + b"\n"
        headers = [] if status == 204 else [
            ("content-type", "application/json"), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                         reason=HTTPStatus(status).phrase))
        if body and not self.head:
            out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        self.writer.write(out)
        await self.writer.drain()


class _Api:
    """What every connection of one API server shares."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.origins: frozenset[str] = frozenset()


async def start_api(collection: Collection, host: str, port: int) -> asyncio.Server:
    """Serve the Toxiproxy API for ``collection`` on ``host:port`` (0 picks a free port)."""
    try:
        import h11  # noqa: F401  (fail here, at start, when the chaos extra is missing)
    except ImportError:
        raise ImportError("the fault proxy's API needs h11: pip install 'stoic[chaos]'") from None

    api = _Api(collection)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _Exchange(api, reader, writer).run()
        except asyncio.CancelledError:
            # Shutting down. Ending normally matters: Python 3.11's start_server callback
            # calls task.exception(), which raises (and logs) for a cancelled handler task.
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    api.origins = own_origins(host, int(server.sockets[0].getsockname()[1]))
    return server


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
    server = await start_api(collection, host, port)
    if ready is not None:
        ready.set_result(int(server.sockets[0].getsockname()[1]))
    try:
        async with server:
            await server.serve_forever()
    finally:
        await collection.close()

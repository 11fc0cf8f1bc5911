"""``ProxyServer``: the fault proxy on its own thread and event loop, driven from Python."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from .client import ProxyControl
from .model import ApiError, Collection, join_address
from .routes import dispatch
from .server import start_api

__all__ = ["ProxyServer"]


class ProxyServer(ProxyControl):
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
        return f"http://{join_address(self.host, self.api_port)}"

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
        self._api = await start_api(self._collection, self.host, self._port)
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
        status, payload = self._run(dispatch(self._collection, method, path, encoded))
        if status >= 400:  # e.g. a reset that could not enable every proxy, as over HTTP
            raise ApiError(status, str(payload["error"]))
        return payload

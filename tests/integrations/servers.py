"""Real uvicorn servers on loopback for the HTTP integration tests (fixtures in conftest).

A ``Backend`` is a scriptable ASGI app: a test queues what each path answers next
(a status with headers, after an optional delay, or a dropped connection after the work was
recorded), and afterwards reads what arrived: every request with its headers and arrival
time, and the number of TCP connections the server accepted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from support import free_port, read_body

__all__ = ["Action", "Backend", "Hit", "Running", "Server"]


@dataclass
class Action:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    drop: bool = False  # record the request, then close the connection without answering


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Backend:
    """What the server answers (``script``) and what it saw (``hits``, ``connections``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script: dict[str, list[Action]] = {}
        self.hits: list[Hit] = []
        self.connections = 0

    def reset(self) -> None:
        with self.lock:
            self.script.clear()
            self.hits.clear()
            self.connections = 0

    def answer(self, path: str, *actions: Action) -> None:
        """Queue answers for ``path``; the last one repeats."""
        with self.lock:
            self.script[path] = list(actions)

    def seen(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    def _next(self, path: str) -> Action:
        with self.lock:
            queue = self.script.get(path)
            if not queue:
                return Action()
            return queue.pop(0) if len(queue) > 1 else queue[0]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.hits.append(
                Hit(scope["method"], scope["path"], headers, body, time.monotonic())
            )
        action = self._next(scope["path"])
        if action.delay:
            await asyncio.sleep(action.delay)
        if action.drop:
            receive.__self__.transport.close()  # uvicorn's connection: the reply is lost
            await asyncio.sleep(0.05)  # let uvicorn see the disconnect, so it sends no 500
            return
        await send({
            "type": "http.response.start", "status": action.status,
            "headers": [(k.encode(), v.encode()) for k, v in action.headers.items()],
        })
        await send({"type": "http.response.body", "body": action.body})


class Server:
    """uvicorn serving ``app`` on a free loopback port, in a thread, counting connections."""

    def __init__(self, app: Any, counter: Backend | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        class Counting(H11Protocol):  # type: ignore[misc]
            def connection_made(self, transport: Any) -> None:
                if counter is not None:
                    with counter.lock:
                        counter.connections += 1
                super().connection_made(transport)

        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, http=Counting, lifespan="off",
            log_level="warning", access_log=False, timeout_graceful_shutdown=0.2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@dataclass
class Running:
    backend: Backend
    server: Server

    @property
    def url(self) -> str:
        return self.server.url



"""What every shop service shares: its configuration, its SQLite database, the fault layer.

Each service is a separate process running one FastAPI app under uvicorn, with its own SQLite
file in the run's working directory; the fault layer and the demo's control routes are plain
ASGI middleware around it. The runner writes one ``ShopConfig`` as JSON and starts
each service with its name and the path of that file.

The fault layer (``ChaosLayer``) is the in-process fault of the scenario: "payments loses
replies" lets the request run to completion, charge and all, then closes the connection
instead of sending the answer, exactly what a reply lost in the network looks like to the
caller. It also serves as the fallback for network faults (latency, a blackholed partition)
when the Toxiproxy-compatible proxy is not available.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "ORDER_ID",
    "SERVICES",
    "ASGIApp",
    "ChaosLayer",
    "ShopConfig",
    "Stats",
    "connect",
    "header",
    "json_response",
    "new_service",
    "open_db",
    "read_json",
    "route",
    "transaction",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: What an order id may be: letters, digits and ``._:-``, 1 to 128 of them (it travels in
#: URL paths, headers and keys).
ORDER_ID = r"^[A-Za-z0-9._:-]{1,128}$"

#: The shop's services, in the order they start (orders last: it calls the others).
SERVICES = ("payments", "inventory", "fulfillment", "orders")


@dataclass(slots=True)
class ShopConfig:
    """Everything a service needs to know about the run, written once by the runner.

    ``urls`` are where ``orders`` reaches the others: through a chaos proxy when one is
    running, directly otherwise. ``prefix`` namespaces Redis keys, RabbitMQ queues and the
    PostgreSQL schema (``pg_schema``) so two runs never share state.
    """

    mode: str
    workdir: str
    ports: dict[str, int]
    urls: dict[str, str]
    backend: str = "sqlite"
    seed: int = 0
    prefix: str = "stoic-demo"
    edge_deadline: float = 2.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/test"
    naive_timeout: float = 5.0
    naive_attempts: int = 3
    naive_sleep: float = 0.5
    worker_lease: float = 1.5
    cleanup: bool = False  # the services delete ``workdir`` if the runner dies without doing so

    def db(self, service: str) -> str:
        """Path of ``service``'s own SQLite database."""
        return str(Path(self.workdir) / f"{service}.db")

    @property
    def pg_schema(self) -> str:
        """The run's own PostgreSQL schema (``--backend postgres``): every table of stoic's
        machinery lives in it, and dropping it removes the run's state."""
        return self.prefix.replace("-", "_")

    @property
    def pg_dsn(self) -> str:
        """``postgres_url`` with the run's schema first on the search path, so stores that
        name plain tables (workflow runs, idempotency records, the outbox) create and find
        them in the run's schema."""
        parts = urlsplit(self.postgres_url)
        query = [*parse_qsl(parts.query), ("options", f"-csearch_path={self.pg_schema}")]
        return urlunsplit(parts._replace(query=urlencode(query)))

    @property
    def broker_url(self) -> str:
        """Where the stoic build's durable queue lives, by backend."""
        if self.backend == "redis":
            return self.redis_url
        if self.backend == "rabbitmq":
            return self.amqp_url
        if self.backend == "postgres":
            return self.postgres_url
        return "sqlite:///" + str(Path(self.workdir) / "queue.db")

    def save(self, path: str | Path) -> None:
        """Write the configuration as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ShopConfig:
        """Read a configuration written by ``save``."""
        return cls(**json.loads(Path(path).read_text()))


def connect(path: str) -> sqlite3.Connection:
    """An SQLite connection in WAL mode with a busy timeout, safe to share across threads.

    Services touch their database from the event loop and from helper threads; writes are
    short single transactions, so one connection guarded by the caller's lock is enough.
    """
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_db(cfg: ShopConfig, service: str, schema: str) -> tuple[sqlite3.Connection, threading.Lock]:
    """``service``'s own database with ``schema`` applied, and the lock its connection needs."""
    conn = connect(cfg.db(service))
    conn.executescript(schema)
    return conn, threading.Lock()


def new_service(
    cfg: ShopConfig, service: str, schema: str, description: str,
) -> tuple[sqlite3.Connection, threading.Lock, Stats, FastAPI]:
    """What a FastAPI service starts from: its database (``open_db``) and that database's
    lock, its counters, and its app, titled ``service``, described by ``description``."""
    from fastapi import FastAPI

    conn, lock = open_db(cfg, service, schema)
    return conn, lock, Stats(), FastAPI(title=service, version="demo", description=description)


@contextmanager
def transaction(conn: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction: everything in the block commits together, or nothing does."""
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


async def read_json(receive: Receive) -> Any:
    """The request body, parsed as JSON (an empty body is ``{}``)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return json.loads(body) if body else {}


async def json_response(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send ``payload`` as a JSON response."""
    body = json.dumps(payload).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """One request header, decoded, or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def route(
    app: ASGIApp, *, metrics: ASGIApp | None, control: Callable[[Any], Awaitable[Any]] | None,
    stats: Callable[[], Any] | None,
) -> ASGIApp:
    """Put ``/metrics``, ``/_demo/chaos`` and ``/_demo/stats`` next to the service's own app.

    The control routes bypass every middleware and fault, so the runner can always reach them.
    """

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn's ``send`` is a method of the request cycle that owns the socket; the
            # "lost reply" fault needs it to drop the connection without a response.
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[TRANSPORT_KEY] = transport
            path = scope["path"]
            if path == "/metrics" and metrics is not None:
                await metrics(scope, receive, send)
                return
            if path == "/_demo/chaos" and control is not None:
                await json_response(send, 200, await control(await read_json(receive)))
                return
            if path == "/_demo/stats" and stats is not None:
                await json_response(send, 200, stats())
                return
            if path == "/_demo/health":
                await json_response(send, 200, {"ok": True})
                return
        await app(scope, receive, send)

    return router


#: Where the outermost layer leaves the connection's transport, so a fault can drop it.
TRANSPORT_KEY = "stoic.demo.transport"


class ChaosLayer:
    """In-process faults, switched at run time through ``/_demo/chaos``.

    ``lose_replies`` (a rate in [0, 1]): the wrapped app runs to completion, its work is done
    and committed, then the connection is dropped instead of sending the reply (the caller
    sees the server disconnect without a response: did it happen? it cannot know).
    ``latency``/``jitter`` (seconds) delay each request; ``blackhole`` holds each request
    until the caller gives up. The last two are used only when no chaos proxy is running.
    """

    def __init__(self, app: ASGIApp, *, seed: int) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.latency = 0.0
        self.jitter = 0.0
        self.lose_replies = 0.0
        self.blackhole = False
        self.lost = 0

    async def control(self, body: Any) -> dict[str, Any]:
        """Apply the settings in ``body`` (missing keys are left as they are)."""
        for key in ("latency", "jitter", "lose_replies"):
            if key in body:
                setattr(self, key, float(body[key]))
        if "blackhole" in body:
            self.blackhole = bool(body["blackhole"])
        if "seed" in body:
            self.rng.seed(int(body["seed"]))
        return {"latency": self.latency, "jitter": self.jitter, "blackhole": self.blackhole,
                "lose_replies": self.lose_replies, "lost": self.lost}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.blackhole:
            await asyncio.sleep(3600.0)
        if self.latency > 0:
            await asyncio.sleep(max(0.0, self.rng.gauss(self.latency, self.jitter)))
        if self.lose_replies <= 0 or self.rng.random() >= self.lose_replies:
            await self.app(scope, receive, send)
            return

        async def hold(message: Message) -> None:
            pass  # the reply is produced, and never sent

        await self.app(scope, receive, hold)
        self.lost += 1
        transport = scope.get(TRANSPORT_KEY)
        if transport is not None:
            transport.abort()  # the connection drops: the caller sees no reply at all
            return
        await asyncio.sleep(30.0)  # no socket to drop: hold the reply until the caller gives up


class Stats:
    """Small thread-safe counters a service exposes at ``/_demo/stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, Any] = {}

    def add(self, key: str, amount: int = 1) -> None:
        """Increase counter ``key``."""
        with self._lock:
            self.values[key] = self.values.get(key, 0) + amount

    def snapshot(self) -> dict[str, Any]:
        """A copy of every counter."""
        with self._lock:
            return dict(self.values)


def watch_parent(interval: float = 0.5, *, remove: str | None = None) -> None:
    """Exit this process as soon as the process that started it is gone.

    The runner kills its services on exit, but a runner killed with SIGKILL cannot; then
    each service notices it was re-parented and leaves, so no demo process outlives the demo.
    ``remove``: a working directory to delete on the way out (the run's, when the demo was
    asked not to keep it), since the dead runner no longer can.
    """
    parent = os.getppid()

    def loop() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                if remove is not None:
                    shutil.rmtree(remove, ignore_errors=True)
                os._exit(0)

    threading.Thread(target=loop, name="stoic-demo-watch-parent", daemon=True).start()

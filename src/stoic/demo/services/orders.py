"""orders: ``POST /orders`` reserves stock, charges the card, and hands the order on.

The same shop, written two ways:

* naive: what such code commonly looks like. Every outgoing call sits in a hand-written loop
  that retries on any exception after a fixed sleep, with a long fixed timeout, no breaker,
  no idempotency key and no deadline; the hand-off to fulfillment is a direct HTTP call
  whose failure is logged and forgotten.
* stoic: calls go through ``stoic.integrations.httpx`` (retries by classification, with a
  budget and jitter; one breaker per host; each attempt bounded by the deadline set at the
  edge and sent on in a header); the client's ``Idempotency-Key`` is honoured, the charge
  carries its own key derived from the order; the hand-off is a row in the transactional
  outbox written in the same transaction as the order, relayed to a durable queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .common import ASGIApp, Receive, Scope, Send, ShopConfig, Stats, connect, json_response, read_json, route

__all__ = ["build"]

_log = logging.getLogger("stoic.demo.orders")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, amount REAL NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, charge_at REAL, finished_at REAL,
    error TEXT);
CREATE TABLE IF NOT EXISTS payment_attempts (at REAL NOT NULL, order_id TEXT);
"""


def build(cfg: ShopConfig) -> ASGIApp:
    """The orders app for ``cfg.mode``."""
    conn = connect(cfg.db("orders"))
    conn.executescript(SCHEMA)
    lock = threading.Lock()
    stats = Stats()

    def execute(sql: str, args: tuple[Any, ...]) -> None:
        with lock:
            conn.execute(sql, args)

    if cfg.mode == "naive":
        handle = _naive_handler(cfg, execute, stats)
    else:
        handle = _stoic_handler(cfg, conn, lock, execute, stats)

    async def orders(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/orders":
            await json_response(send, 404, {"error": "not found"})
            return
        body = await read_json(receive)
        order_id = str(body.get("order_id", ""))
        if not order_id:
            await json_response(send, 400, {"error": "order_id required"})
            return
        status, payload = await handle(order_id, body)
        await json_response(send, status, payload)

    app: ASGIApp = orders
    from .. import parts

    if cfg.mode == "stoic":
        app = parts.idempotency_middleware(app, cfg, "orders")
        app = parts.edge_middleware(app, cfg, "orders")
        parts.count_breaker_openings(stats)
        parts.start_outbox_relay(cfg, cfg.db("orders"))
    return route(app, metrics=parts.metrics_app(cfg), control=None, stats=stats.snapshot)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


Handler = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


def _naive_handler(
    cfg: ShopConfig, execute: Callable[[str, tuple[Any, ...]], None], stats: Stats,
) -> Handler:
    import httpx

    client = httpx.AsyncClient(
        timeout=cfg.naive_timeout,
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200),
    )

    async def with_retries(call: Callable[[], Awaitable[Any]]) -> Any:
        # The loop most services start with: any exception, fixed sleep, try again.
        for attempt in range(1, cfg.naive_attempts + 1):
            try:
                return await call()
            except Exception:
                if attempt == cfg.naive_attempts:
                    raise
                await asyncio.sleep(cfg.naive_sleep)
        return None

    async def reserve(order_id: str, body: dict[str, Any]) -> None:
        response = await client.put(
            f"{cfg.urls['inventory']}/reservations/{order_id}",
            json={"sku": body.get("sku", "sku-1"), "quantity": body.get("quantity", 1)},
        )
        response.raise_for_status()

    async def charge(order_id: str, amount: float) -> None:
        execute("INSERT INTO payment_attempts(at, order_id) VALUES (?, ?)",
                (time.time(), order_id))
        response = await client.post(
            f"{cfg.urls['payments']}/charges", json={"order_id": order_id, "amount": amount},
            headers={"x-order-id": order_id},
        )
        response.raise_for_status()

    async def hand_off(order_id: str, amount: float) -> None:
        response = await client.post(
            f"{cfg.urls['fulfillment']}/fulfillments",
            json={"order_id": order_id, "amount": amount},
        )
        response.raise_for_status()

    async def handle(order_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        amount = float(body.get("amount", 10.0))
        execute(
            "INSERT OR IGNORE INTO orders(id, amount, status, created_at) VALUES (?,?,?,?)",
            (order_id, amount, "pending", time.time()),
        )
        try:
            await with_retries(lambda: reserve(order_id, body))
            execute("UPDATE orders SET charge_at=? WHERE id=?", (time.time(), order_id))
            await with_retries(lambda: charge(order_id, amount))
        except Exception as exc:
            execute(
                "UPDATE orders SET status='failed', finished_at=?, error=? WHERE id=?",
                (time.time(), type(exc).__name__, order_id),
            )
            stats.add("failed")
            return 502, {"order_id": order_id, "error": type(exc).__name__}
        execute(
            "UPDATE orders SET status='accepted', finished_at=? WHERE id=?",
            (time.time(), order_id),
        )
        try:
            await with_retries(lambda: hand_off(order_id, amount))
        except Exception as exc:  # "fulfillment will catch up": it will not
            _log.warning("hand-off of %s failed: %r", order_id, exc)
            stats.add("hand_off_failed")
        stats.add("accepted")
        return 201, {"order_id": order_id, "status": "accepted"}

    return handle


def _stoic_handler(
    cfg: ShopConfig, conn: Any, lock: threading.Lock,
    execute: Callable[[str, tuple[Any, ...]], None], stats: Stats,
) -> Handler:
    import httpx

    import stoic
    from stoic.errors import DeadlineExceeded, Rejected

    from .. import parts

    payments_host = httpx.URL(cfg.urls["payments"]).netloc

    class CountingTransport(httpx.AsyncHTTPTransport):
        """Counts every request that leaves for payments (what the network carries)."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.netloc == payments_host:
                execute("INSERT INTO payment_attempts(at, order_id) VALUES (?, ?)",
                        (time.time(), request.headers.get("x-order-id")))
            return await super().handle_async_request(request)

    client = parts.http_client(cfg, CountingTransport(
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200)))
    with lock:
        outbox = parts.outbox(cfg, conn)

    async def handle(order_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        amount = float(body.get("amount", 10.0))
        execute(
            "INSERT OR IGNORE INTO orders(id, amount, status, created_at) VALUES (?,?,?,?)",
            (order_id, amount, "pending", time.time()),
        )
        try:
            async with stoic.deadline(cfg.edge_deadline):  # the edge: never longer than this
                response = await client.put(
                    f"{cfg.urls['inventory']}/reservations/{order_id}",
                    json={"sku": body.get("sku", "sku-1"), "quantity": body.get("quantity", 1)},
                )
                response.raise_for_status()
                execute("UPDATE orders SET charge_at=? WHERE id=?", (time.time(), order_id))
                response = await client.post(
                    f"{cfg.urls['payments']}/charges",
                    json={"order_id": order_id, "amount": amount},
                    headers={"idempotency-key": f"charge-{order_id}", "x-order-id": order_id},
                )
                response.raise_for_status()
        except Exception as exc:
            status = 502
            if isinstance(exc, Rejected):
                status = 503
            elif isinstance(exc, (DeadlineExceeded, TimeoutError)):
                status = 504
            execute(
                "UPDATE orders SET status='failed', finished_at=?, error=? WHERE id=?",
                (time.time(), type(exc).__name__, order_id),
            )
            stats.add("failed")
            return status, {"order_id": order_id, "error": type(exc).__name__}
        with lock:  # the order and its hand-off commit together, or not at all
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "UPDATE orders SET status='accepted', finished_at=? WHERE id=?",
                    (time.time(), order_id),
                )
                outbox.add(conn, "order.placed", {"order_id": order_id, "amount": amount},
                           id=order_id)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        stats.add("accepted")
        return 201, {"order_id": order_id, "status": "accepted"}

    return handle

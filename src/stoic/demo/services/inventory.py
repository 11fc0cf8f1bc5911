"""inventory: ``PUT /reservations/{order}`` reserves stock for an order (idempotent by nature)."""

from __future__ import annotations

import threading
import time

from .common import (
    ASGIApp,
    ChaosLayer,
    Receive,
    Scope,
    Send,
    ShopConfig,
    Stats,
    connect,
    json_response,
    read_json,
    route,
)

__all__ = ["build"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
    quantity INTEGER NOT NULL, at REAL NOT NULL);
"""


def build(cfg: ShopConfig) -> ASGIApp:
    """The inventory app; a PUT for the same order twice keeps one reservation."""
    conn = connect(cfg.db("inventory"))
    conn.executescript(SCHEMA)
    lock = threading.Lock()
    stats = Stats()

    async def reservations(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] != "PUT" or not path.startswith("/reservations/"):
            await json_response(send, 404, {"error": "not found"})
            return
        order_id = path.rsplit("/", 1)[-1]
        body = await read_json(receive)
        with lock:
            conn.execute(
                "INSERT INTO reservations(order_id, sku, quantity, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(order_id) DO NOTHING",
                (order_id, str(body.get("sku", "sku-1")), int(body.get("quantity", 1)),
                 time.time()),
            )
        stats.add("reservations")
        await json_response(send, 200, {"order_id": order_id, "reserved": True})

    chaos = ChaosLayer(reservations, seed=cfg.seed * 7919 + 2)
    app: ASGIApp = chaos
    from .. import parts

    if cfg.mode == "stoic":
        app = parts.edge_middleware(app, cfg, "inventory")
    return route(app, metrics=parts.metrics_app(cfg), control=chaos.control, stats=stats.snapshot)

"""inventory: ``PUT /reservations/{order}`` reserves stock for an order (idempotent by nature)."""

from __future__ import annotations

import time
from typing import Any

from .. import parts
from .common import ASGIApp, ChaosLayer, Scope, ShopConfig, Stats, endpoint, open_db, route

__all__ = ["build"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
    quantity INTEGER NOT NULL, at REAL NOT NULL);
"""


def build(cfg: ShopConfig) -> ASGIApp:
    """The inventory app; a PUT for the same order twice keeps one reservation."""
    conn, lock = open_db(cfg, "inventory", SCHEMA)
    stats = Stats()

    async def reserve(scope: Scope, body: Any) -> tuple[int, dict[str, Any]]:
        order_id = scope["path"].rsplit("/", 1)[-1]
        with lock:
            conn.execute(
                "INSERT INTO reservations(order_id, sku, quantity, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(order_id) DO NOTHING",
                (order_id, str(body.get("sku", "sku-1")), int(body.get("quantity", 1)),
                 time.time()),
            )
        stats.add("reservations")
        return 200, {"order_id": order_id, "reserved": True}

    chaos = ChaosLayer(endpoint("PUT", "/reservations/", reserve), seed=cfg.seed * 7919 + 2)
    app: ASGIApp = chaos
    if cfg.mode == "stoic":
        app = parts.edge_middleware(app, cfg, "inventory")
    return route(app, metrics=parts.metrics_app(cfg), control=chaos.control, stats=stats.snapshot)

"""payments: ``POST /charges`` records a charge. Its table is the ground truth for duplicates.

Every request that reaches the service is logged in ``arrivals`` before anything else runs
(the load actually arriving at payments); ``charges`` holds one row per charge made, so two
rows for one order is a duplicate charge, whatever any caller believes.
"""

from __future__ import annotations

import time
from typing import Any

from .. import parts
from .common import (
    ASGIApp,
    ChaosLayer,
    Receive,
    Scope,
    Send,
    ShopConfig,
    Stats,
    endpoint,
    header,
    open_db,
    route,
)

__all__ = ["build"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,
    amount REAL NOT NULL, key TEXT, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS arrivals (at REAL NOT NULL, order_id TEXT, key TEXT);
"""


def build(cfg: ShopConfig) -> ASGIApp:
    """The payments app for ``cfg.mode`` (the stoic build adds idempotency keys and deadlines)."""
    conn, lock = open_db(cfg, "payments", SCHEMA)
    stats = Stats()

    async def charge(scope: Scope, body: Any) -> tuple[int, dict[str, Any]]:
        order_id = str(body.get("order_id", ""))
        amount = float(body.get("amount", 0.0))
        if not order_id or amount <= 0:
            return 400, {"error": "order_id and a positive amount needed"}
        with lock:
            cur = conn.execute(
                "INSERT INTO charges(order_id, amount, key, at) VALUES (?, ?, ?, ?)",
                (order_id, amount, header(scope, b"idempotency-key"), time.time()),
            )
        stats.add("charges")
        return 201, {"charge_id": cur.lastrowid, "order_id": order_id}

    app = endpoint("POST", "/charges", charge)
    if cfg.mode == "stoic":
        app = parts.idempotency_middleware(app, cfg, "payments")
    chaos = ChaosLayer(app, seed=cfg.seed * 7919 + 1)
    app = chaos
    if cfg.mode == "stoic":
        app = parts.edge_middleware(app, cfg, "payments")

    async def arrivals(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/charges":
            with lock:
                conn.execute(
                    "INSERT INTO arrivals(at, order_id, key) VALUES (?, ?, ?)",
                    (time.time(), header(scope, b"x-order-id"),
                     header(scope, b"idempotency-key")),
                )
            stats.add("arrivals")
        await app(scope, receive, send)

    def snapshot() -> dict[str, Any]:
        return {**stats.snapshot(), "lost_replies": chaos.lost}

    return route(arrivals, metrics=parts.metrics_app(cfg), control=chaos.control, stats=snapshot)

"""inventory: ``PUT /reservations/{order_id}`` reserves stock for an order (idempotent by nature).

A FastAPI app. A PUT for the same order twice keeps one reservation; ``DELETE`` releases it
(the stoic build's saga compensation when the charge is declined), and releasing twice is
the same as once.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, Field

from .. import parts
from .common import ORDER_ID, ASGIApp, ChaosLayer, ShopConfig, new_service, route

__all__ = ["Reservation", "ReservationRequest", "build"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
    quantity INTEGER NOT NULL, at REAL NOT NULL, released_at REAL);
"""

OrderId = Annotated[str, Path(pattern=ORDER_ID)]


class ReservationRequest(BaseModel):
    """Reserve ``quantity`` of ``sku``."""

    sku: str = Field("sku-1", min_length=1, max_length=64)
    quantity: int = Field(1, ge=1, le=1000)


class Reservation(BaseModel):
    """An order's reservation as it now stands."""

    order_id: str
    reserved: bool


def build(cfg: ShopConfig) -> ASGIApp:
    """The inventory app for ``cfg.mode``."""
    conn, lock, stats, api = new_service(cfg, "inventory", SCHEMA, __doc__)

    @api.put("/reservations/{order_id}")
    async def reserve(order_id: OrderId, body: ReservationRequest) -> Reservation:
        """Reserve stock for the order (once, however often it is asked)."""
        with lock:
            conn.execute(
                "INSERT INTO reservations(order_id, sku, quantity, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(order_id) DO NOTHING",
                (order_id, body.sku, body.quantity, time.time()),
            )
        stats.add("reservations")
        return Reservation(order_id=order_id, reserved=True)

    @api.delete("/reservations/{order_id}")
    async def release(order_id: OrderId) -> Reservation:
        """Release the order's reservation (once, however often it is asked)."""
        with lock:
            conn.execute("UPDATE reservations SET released_at=? WHERE order_id=? AND "
                         "released_at IS NULL", (time.time(), order_id))
        stats.add("releases")
        return Reservation(order_id=order_id, reserved=False)

    chaos = ChaosLayer(api, seed=cfg.seed * 7919 + 2)
    app: ASGIApp = chaos
    if cfg.mode == "stoic":
        app = parts.edge_middleware(app, cfg, "inventory")
    return route(app, metrics=parts.metrics_app(cfg), control=chaos.control, stats=stats.snapshot)

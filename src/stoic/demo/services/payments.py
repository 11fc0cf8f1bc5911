"""payments: ``POST /charges`` records a charge. Its table is the ground truth for duplicates.

A FastAPI app, as a payments service is commonly written. Every request that reaches the
service is logged in ``arrivals`` before anything else runs (the load actually arriving at
payments); ``charges`` holds one row per charge made, so two rows for one order is a
duplicate charge, whatever any caller believes. ``POST /refunds`` undoes a charge (the
stoic build's saga compensation), once per order.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Header
from pydantic import BaseModel, Field

from .. import parts
from .common import (
    ORDER_ID,
    ASGIApp,
    ChaosLayer,
    Receive,
    Scope,
    Send,
    ShopConfig,
    header,
    new_service,
    route,
)

__all__ = ["KEY_PATTERN", "Charge", "ChargeRequest", "Problem", "Refund", "RefundRequest", "build"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,
    amount REAL NOT NULL, key TEXT, at REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS charges_key ON charges(key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS arrivals (at REAL NOT NULL, order_id TEXT, key TEXT);
CREATE TABLE IF NOT EXISTS refunds (order_id TEXT PRIMARY KEY, amount REAL NOT NULL,
    at REAL NOT NULL);
"""


class ChargeRequest(BaseModel):
    """Charge ``amount`` for ``order_id``."""

    order_id: str = Field(pattern=ORDER_ID)
    amount: float = Field(gt=0, le=1_000_000)


class Charge(BaseModel):
    """A charge made."""

    charge_id: int
    order_id: str


class RefundRequest(BaseModel):
    """Give back what was charged for ``order_id``."""

    order_id: str = Field(pattern=ORDER_ID)


class Refund(BaseModel):
    """What was refunded for an order (0 when nothing had been charged)."""

    order_id: str
    amount: float


class Problem(BaseModel):
    """An error answered by stoic's IdempotencyMiddleware (RFC 9457 problem details)."""

    type: str
    title: str
    status: int
    detail: str | None = None


def _problem(what: str) -> dict[str, Any]:
    return {"description": what, "content": {"application/problem+json": {
        "schema": Problem.model_json_schema()}}}


#: What stoic's IdempotencyMiddleware may answer in front of ``/charges``.
_KEYED: dict[int | str, dict[str, Any]] = {
    400: _problem("the Idempotency-Key is malformed"),
    409: _problem("a request with this key is still being handled; retry after Retry-After"),
    422: _problem("the key was used before for a different request"),
}

#: What an Idempotency-Key may be (printable ASCII without spaces, 1 to 255 characters).
KEY_PATTERN = r"^[!-~]{1,255}$"


def build(cfg: ShopConfig) -> ASGIApp:
    """The payments app for ``cfg.mode`` (the stoic build adds idempotency keys and deadlines)."""
    conn, lock, stats, api = new_service(cfg, "payments", SCHEMA, __doc__)

    @api.post("/charges", status_code=201, responses=_KEYED)
    async def charge(
        body: ChargeRequest,
        idempotency_key: Annotated[str | None, Header(pattern=KEY_PATTERN)] = None,
    ) -> Charge:
        """Charge the card. Without an ``Idempotency-Key`` every request is a new charge."""
        with lock:
            # The key is also recorded with the charge, in the charge's own write: a process
            # killed after the charge and before stoic's middleware stored the answer leaves
            # the key in flight; when its lease runs out the retry runs here again and must
            # find the charge, not make a second one (as a payment processor's ledger does).
            cur = conn.execute(
                "INSERT OR IGNORE INTO charges(order_id, amount, key, at) VALUES (?, ?, ?, ?)",
                (body.order_id, body.amount, idempotency_key, time.time()),
            )
            charge_id, order_id = int(cur.lastrowid or 0), body.order_id
            if cur.rowcount == 0:  # charged before under this key
                charge_id, order_id = conn.execute(
                    "SELECT id, order_id FROM charges WHERE key=?", (idempotency_key,)).fetchone()
        stats.add("charges")
        return Charge(charge_id=charge_id, order_id=order_id)

    @api.post("/refunds", status_code=200)
    async def refund(body: RefundRequest) -> Refund:
        """Refund an order's charges, once (a repeated refund changes nothing)."""
        with lock:
            row = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM charges WHERE order_id=?",
                               (body.order_id,)).fetchone()
            conn.execute("INSERT OR IGNORE INTO refunds(order_id, amount, at) VALUES (?, ?, ?)",
                         (body.order_id, float(row[0]), time.time()))
            amount = conn.execute("SELECT amount FROM refunds WHERE order_id=?",
                                  (body.order_id,)).fetchone()[0]
        stats.add("refunds")
        return Refund(order_id=body.order_id, amount=float(amount))

    app: ASGIApp = api
    if cfg.mode == "stoic":
        app = parts.idempotency_middleware(app, cfg, "payments")
    chaos = ChaosLayer(app, seed=cfg.seed * 7919 + 1)
    app = chaos
    if cfg.mode == "stoic":
        app = parts.edge_middleware(app, cfg, "payments")
    inner = app

    async def arrivals(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/charges":
            with lock:
                conn.execute(
                    "INSERT INTO arrivals(at, order_id, key) VALUES (?, ?, ?)",
                    (time.time(), header(scope, b"x-order-id"),
                     header(scope, b"idempotency-key")),
                )
            stats.add("arrivals")
        await inner(scope, receive, send)

    def snapshot() -> dict[str, Any]:
        return {**stats.snapshot(), "lost_replies": chaos.lost}

    return route(arrivals, metrics=parts.metrics_app(cfg), control=chaos.control, stats=snapshot)

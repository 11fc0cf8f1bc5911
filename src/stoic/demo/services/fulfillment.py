"""fulfillment: records each order it fulfils. Its table is the ground truth for lost orders.

A FastAPI app with a background worker.

* naive: ``POST /fulfillments`` puts the order in an in-memory batch and answers 202 at once;
  a background thread works through the batch. A crash loses whatever the batch held.
* stoic: a ``stoic.messaging.Worker`` consumes ``order.placed`` from the durable queue with
  a lease (a message held by a killed worker is delivered again) and de-duplication by
  message id (a redelivered message does not fulfil twice).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import BaseModel, Field

from .. import parts
from .common import ORDER_ID, ASGIApp, ShopConfig, new_service, route, transaction

__all__ = ["WORK_SECONDS", "FulfillmentRequest", "Queued", "build"]

#: Time each fulfilment takes (the work a crash can interrupt), in seconds.
WORK_SECONDS = 0.01

SCHEMA = """
CREATE TABLE IF NOT EXISTS fulfillments (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,
    message_id TEXT, at REAL NOT NULL);
"""

_FULFIL = "INSERT INTO fulfillments(order_id, message_id, at) VALUES (?, ?, ?)"


class FulfillmentRequest(BaseModel):
    """Fulfil ``order_id`` (the naive build's direct hand-off)."""

    order_id: str = Field(pattern=ORDER_ID)
    amount: float = Field(0.0, ge=0)


class Queued(BaseModel):
    """The order is in the batch; it will be fulfilled by the background thread."""

    queued: bool


def build(cfg: ShopConfig) -> ASGIApp:
    """The fulfillment service for ``cfg.mode``; its work runs on a background thread."""
    conn, lock, stats, api = new_service(cfg, "fulfillment", SCHEMA, __doc__)
    batch: list[str] = []
    batch_lock = threading.Lock()

    @api.post("/fulfillments", status_code=202)
    async def enqueue(body: FulfillmentRequest) -> Queued:
        """Queue the order in this process's in-memory batch (answered at once)."""
        with batch_lock:
            batch.append(body.order_id)
        return Queued(queued=True)

    def batches() -> None:
        while True:
            time.sleep(0.25)
            with batch_lock:
                todo = list(batch)
                batch.clear()
            for order_id in todo:
                time.sleep(WORK_SECONDS)
                with lock:
                    conn.execute(_FULFIL, (order_id, None, time.time()))
                stats.add("fulfilled")

    def snapshot() -> dict[str, Any]:
        with batch_lock:
            pending = len(batch)
        return {**stats.snapshot(), "pending": pending}

    if cfg.mode == "naive":
        threading.Thread(target=batches, name="fulfillment-batches", daemon=True).start()
    else:
        with lock:
            inbox = parts.inbox(conn)

        def handler(message: Any) -> None:
            # The inbox row and the fulfilment commit together: a worker killed at any
            # point leaves both or neither, so a redelivered message is fulfilled once.
            time.sleep(WORK_SECONDS)
            with transaction(conn, lock):
                if inbox.mark(conn, message):
                    conn.execute(_FULFIL, (str(message.payload["order_id"]), message.id,
                                           time.time()))
                    stats.add("fulfilled")

        parts.start_worker(cfg, handler)
    return route(api, metrics=parts.metrics_app(cfg), control=None, stats=snapshot)

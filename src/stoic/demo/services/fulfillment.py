"""fulfillment: records each order it fulfils. Its table is the ground truth for lost orders.

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

from .common import ASGIApp, Receive, Scope, Send, ShopConfig, Stats, connect, json_response, read_json, route

__all__ = ["WORK_SECONDS", "build"]

#: Time each fulfilment takes (the work a crash can interrupt), in seconds.
WORK_SECONDS = 0.01

SCHEMA = """
CREATE TABLE IF NOT EXISTS fulfillments (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,
    message_id TEXT, at REAL NOT NULL);
"""


def build(cfg: ShopConfig) -> ASGIApp:
    """The fulfillment service for ``cfg.mode``; its work runs on a background thread."""
    conn = connect(cfg.db("fulfillment"))
    conn.executescript(SCHEMA)
    lock = threading.Lock()
    stats = Stats()

    def fulfil(order_id: str, message_id: str | None) -> None:
        time.sleep(WORK_SECONDS)
        with lock:
            conn.execute(
                "INSERT INTO fulfillments(order_id, message_id, at) VALUES (?, ?, ?)",
                (order_id, message_id, time.time()),
            )
        stats.add("fulfilled")

    batch: list[str] = []
    batch_lock = threading.Lock()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/fulfillments":
            await json_response(send, 404, {"error": "not found"})
            return
        body = await read_json(receive)
        with batch_lock:
            batch.append(str(body["order_id"]))
        await json_response(send, 202, {"queued": True})

    def batches() -> None:
        while True:
            time.sleep(0.25)
            with batch_lock:
                todo = list(batch)
                batch.clear()
            for order_id in todo:
                fulfil(order_id, None)

    def snapshot() -> dict[str, Any]:
        with batch_lock:
            pending = len(batch)
        return {**stats.snapshot(), "pending": pending}

    from .. import parts

    if cfg.mode == "naive":
        threading.Thread(target=batches, name="fulfillment-batches", daemon=True).start()
    else:
        with lock:
            inbox = parts.inbox(conn)

        def handler(message: Any) -> None:
            # The inbox row and the fulfilment commit together: a worker killed at any
            # point leaves both or neither, so a redelivered message is fulfilled once.
            time.sleep(WORK_SECONDS)
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if inbox.mark(conn, message):
                        conn.execute(
                            "INSERT INTO fulfillments(order_id, message_id, at) VALUES (?, ?, ?)",
                            (str(message.payload["order_id"]), message.id, time.time()),
                        )
                        stats.add("fulfilled")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        parts.start_worker(cfg, handler)
    return route(app, metrics=parts.metrics_app(cfg), control=None, stats=snapshot)

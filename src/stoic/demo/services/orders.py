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
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import stoic

from .. import parts
from .common import ORDER_ID, ASGIApp, ShopConfig, Stats, open_db, route, transaction

__all__ = ["OrderError", "OrderRequest", "OrderStatus", "build"]

_log = logging.getLogger("stoic.demo.orders")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, amount REAL NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, charge_at REAL, finished_at REAL,
    error TEXT);
CREATE TABLE IF NOT EXISTS payment_attempts (at REAL NOT NULL, order_id TEXT);
"""

Reply = tuple[int, dict[str, Any]]


class OrderRequest(BaseModel):
    """An order as the checkout page sends it."""

    order_id: str = Field(pattern=ORDER_ID)
    amount: float = Field(10.0, gt=0, le=1_000_000)
    sku: str = Field("sku-1", min_length=1, max_length=64)
    quantity: int = Field(1, ge=1, le=1000)


class OrderStatus(BaseModel):
    """Where an order stands: ``accepted`` (paid and handed to fulfillment), ``pending``
    (being worked on), or ``failed``."""

    order_id: str
    status: str
    error: str | None = None
    url: str | None = None


class OrderError(BaseModel):
    """Why an order was not accepted."""

    order_id: str | None = None
    error: str


Handler = Callable[[str, OrderRequest], Awaitable[Reply]]


class _Ledger:
    """The orders database as both builds write it: one connection, one lock, short writes."""

    def __init__(self, cfg: ShopConfig) -> None:
        self.conn, self.lock = open_db(cfg, "orders", SCHEMA)
        self.stats = Stats()

    def execute(self, sql: str, args: tuple[Any, ...]) -> None:
        with self.lock:
            self.conn.execute(sql, args)

    def opened(self, order_id: str, order: OrderRequest) -> float:
        """Record the order as pending (once, whatever the retries); returns its amount."""
        self.execute(
            "INSERT OR IGNORE INTO orders(id, amount, status, created_at) VALUES (?,?,?,?)",
            (order_id, order.amount, "pending", time.time()),
        )
        return order.amount

    def charging(self, order_id: str) -> None:
        """The order needs its charge now (the scorecard's count of logical charges).

        The first time only: a workflow's charge step tried again after an outage is the
        same logical charge, needed when it was first tried (moving it would count the
        outage's attempts against charges needed later)."""
        self.execute("UPDATE orders SET charge_at=? WHERE id=? AND charge_at IS NULL",
                     (time.time(), order_id))

    def payment_sent(self, order_id: str | None) -> None:
        """One request left for payments (the scorecard's count of load sent to payments)."""
        self.execute("INSERT INTO payment_attempts(at, order_id) VALUES (?, ?)",
                     (time.time(), order_id))

    def failed(self, order_id: str, exc: Exception, status: int) -> Reply:
        self.execute(
            "UPDATE orders SET status='failed', finished_at=?, error=? WHERE id=?",
            (time.time(), type(exc).__name__, order_id),
        )
        self.stats.add("failed")
        return status, {"order_id": order_id, "error": type(exc).__name__}

    def accepted(self, order_id: str) -> Reply:
        """Mark the order accepted; inside ``transaction`` it commits with the hand-off."""
        self.conn.execute("UPDATE orders SET status='accepted', finished_at=? WHERE id=?",
                          (time.time(), order_id))
        self.stats.add("accepted")
        return 201, {"order_id": order_id, "status": "accepted"}

    def status(self, order_id: str) -> OrderStatus | None:
        with self.lock:
            row = self.conn.execute("SELECT status, error FROM orders WHERE id=?",
                                    (order_id,)).fetchone()
        return None if row is None else OrderStatus(order_id=order_id, status=row[0], error=row[1])


_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": OrderStatus,
          "description": "accepted: the order finishes in the background; follow its url"},
}
_FAILURES: dict[int | str, dict[str, Any]] = {
    code: {"model": OrderError, "description": what} for code, what in (
        (404, "no such order"),
        (409, "an order with this id and other contents was placed before"),
        (424, "the order failed for good (declined, unknown item); its steps were undone"),
        (502, "a dependency failed; the order was not accepted"),
        (503, "a dependency is refusing calls (open breaker, limit); not accepted"),
        (504, "the order could not be finished within its deadline; not accepted"),
    )
}


def build(cfg: ShopConfig) -> ASGIApp:
    """The orders app for ``cfg.mode``."""
    ledger = _Ledger(cfg)
    handle = _naive_handler(cfg, ledger) if cfg.mode == "naive" else _stoic_handler(cfg, ledger)
    api = FastAPI(title="orders", version="demo", description=__doc__)

    @api.post("/orders", status_code=201, response_model=OrderStatus,
              responses={**_ANSWERS, **_FAILURES})
    async def place(order: OrderRequest) -> JSONResponse:
        """Place an order: reserve stock, charge the card, hand it to fulfillment."""
        status, payload = await handle(order.order_id, order)
        return JSONResponse(payload, status_code=status)

    @api.get("/orders/{order_id}", response_model=OrderStatus, responses=_FAILURES)
    async def show(order_id: Annotated[str, Path(pattern=ORDER_ID)]) -> JSONResponse:
        """Where the order stands now."""
        found = ledger.status(order_id)
        if found is None:
            return JSONResponse({"order_id": order_id, "error": "no such order"}, status_code=404)
        return JSONResponse(found.model_dump())

    app: ASGIApp = api
    if cfg.mode == "stoic":
        app = parts.idempotency_middleware(app, cfg, "orders")
        app = parts.load_shedder(app, cfg)
        app = parts.edge_middleware(app, cfg, "orders")
        parts.count_breaker_openings(ledger.stats)
        parts.start_outbox_relay(cfg, cfg.db("orders"))
    return route(app, metrics=parts.metrics_app(cfg), control=None, stats=ledger.stats.snapshot)


def _reservation(cfg: ShopConfig, order_id: str, order: OrderRequest) -> dict[str, Any]:
    return {"url": f"{cfg.urls['inventory']}/reservations/{order_id}",
            "json": {"sku": order.sku, "quantity": order.quantity}}


def _naive_handler(cfg: ShopConfig, ledger: _Ledger) -> Handler:
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

    async def reserve(order_id: str, order: OrderRequest) -> None:
        response = await client.put(**_reservation(cfg, order_id, order))
        response.raise_for_status()

    async def charge(order_id: str, amount: float) -> None:
        ledger.payment_sent(order_id)
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

    async def handle(order_id: str, order: OrderRequest) -> Reply:
        amount = ledger.opened(order_id, order)
        try:
            await with_retries(lambda: reserve(order_id, order))
            ledger.charging(order_id)
            await with_retries(lambda: charge(order_id, amount))
        except Exception as exc:
            return ledger.failed(order_id, exc, 502)
        with ledger.lock:
            reply = ledger.accepted(order_id)
        try:
            await with_retries(lambda: hand_off(order_id, amount))
        except Exception as exc:  # "fulfillment will catch up": it will not
            _log.warning("hand-off of %s failed: %r", order_id, exc)
            ledger.stats.add("hand_off_failed")
        return reply

    return handle


def _stoic_handler(cfg: ShopConfig, ledger: _Ledger) -> Handler:
    """Take the order on a durable workflow; answer with its result, or 202 if it needs longer.

    The workflow (reserve stock, charge with the step's own idempotency key, hand off through
    the outbox in the same commit as the checkpoint, mark the order accepted) runs on this
    process's workflow worker. While payments or inventory is down its steps come back later,
    durably, with backoff; the customer has already been told the truth: accepted, finishing.
    A declined charge or an unknown item fails the workflow, and its compensations release
    the stock and refund the charge.
    """
    import httpx

    from stoic.workflow import WorkflowConflict, WorkflowFailed, Workflows

    store = parts.workflow_store(cfg)
    flows = Workflows(
        store, lease=cfg.worker_lease, poll_interval=0.05,
        # waits up to KEY_LEASE: a 409 "key still in use" asks for up to that long
        # (Retry-After), and a Retry-After beyond the backoff's cap is a give-up
        retry=stoic.Retry(max_attempts=1000,
                          backoff=stoic.backoff.exponential(0.2, 2.0, parts.KEY_LEASE),
                          max_time=600.0, name="order-steps"),
    )
    payments_host = httpx.URL(cfg.urls["payments"]).netloc

    class CountingTransport(httpx.HTTPTransport):
        """Counts every request that leaves for payments (what the network carries)."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.netloc == payments_host:
                ledger.payment_sent(request.headers.get("x-order-id"))
            return super().handle_request(request)

    client = parts.sync_http_client(cfg, CountingTransport(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=100)))
    if isinstance(store, str):  # the outbox lives where the checkpoints do: orders.db
        with ledger.lock:
            box = parts.outbox(ledger.conn)
    else:
        box = parts.postgres_outbox(store)

    def keyed() -> dict[str, str]:
        key = stoic.context.idempotency_key()  # the step's: workflow id + step + occurrence
        return {} if key is None else {"idempotency-key": key}

    def reserve(order: dict[str, Any]) -> None:
        client.put(f"{cfg.urls['inventory']}/reservations/{order['order_id']}",
                   json={"sku": order["sku"], "quantity": order["quantity"]}).raise_for_status()

    def release(order: dict[str, Any]) -> None:
        client.delete(f"{cfg.urls['inventory']}/reservations/{order['order_id']}",
                      ).raise_for_status()

    def charge(order: dict[str, Any]) -> None:
        order_id = order["order_id"]
        ledger.charging(order_id)
        client.post(f"{cfg.urls['payments']}/charges",
                    json={"order_id": order_id, "amount": order["amount"]},
                    headers={**keyed(), "x-order-id": order_id}).raise_for_status()

    def refund(order: dict[str, Any]) -> None:
        client.post(f"{cfg.urls['payments']}/refunds", json={"order_id": order["order_id"]},
                    headers=keyed()).raise_for_status()

    def accepted(order_id: str) -> None:
        with transaction(ledger.conn, ledger.lock):
            ledger.accepted(order_id)

    @flows.workflow("place-order", version=1)
    def place_order(ctx: Any, order: dict[str, Any]) -> dict[str, Any]:
        ctx.step("reserve", reserve, order, compensate=release)
        ctx.step("charge", charge, order, compensate=refund)
        ctx.publish(box, "order.placed", {"order_id": order["order_id"],
                                          "amount": order["amount"]})
        ctx.step("accept", accepted, order["order_id"])
        return {"order_id": order["order_id"], "status": "accepted"}

    flows.start_worker(concurrency=16)

    # the edge waits for workflows on threads of its own: asyncio's default pool (a handful
    # of threads) would queue the orders of a busy second behind each other's waits
    edge = ThreadPoolExecutor(max_workers=256, thread_name_prefix="orders-edge")

    def open_and_start(order_id: str, order: OrderRequest) -> Any:
        ledger.opened(order_id, order)
        return flows.start("place-order", order.model_dump(), id=f"order-{order_id}")

    async def handle(order_id: str, order: OrderRequest) -> Reply:
        loop = asyncio.get_running_loop()
        try:
            # both writes wait for the database's write lock, which the workflows' checkpoints
            # also take: on the event loop that wait would hold up every other order (seconds,
            # on a busy machine), so they run on the edge's threads
            run = await loop.run_in_executor(edge, functools.partial(open_and_start, order_id,
                                                                     order))
        except WorkflowConflict:  # the same order id, placed again with other contents
            return 409, {"order_id": order_id,
                         "error": "an order with this id and other contents exists"}
        left = stoic.remaining()
        wait = _FIRST_WAIT if left is None else max(0.0, min(_FIRST_WAIT, left - _ANSWER_MARGIN))
        try:
            await loop.run_in_executor(edge, functools.partial(run.result, timeout=wait))
        except TimeoutError:
            ledger.stats.add("accepted_later")
            return 202, {"order_id": order_id, "status": "pending",
                         "url": f"/orders/{order_id}"}
        except WorkflowFailed as exc:
            return ledger.failed(order_id, exc, 424)
        return 201, {"order_id": order_id, "status": "accepted"}

    return handle


#: How long the edge waits for the workflow before answering 202 (seconds).
_FIRST_WAIT = 0.3
#: Time kept back from the deadline for sending the answer (seconds).
_ANSWER_MARGIN = 0.1

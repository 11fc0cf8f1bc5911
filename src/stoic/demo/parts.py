"""The stoic pieces the shop's stoic build is made of, assembled in one place.

Each function builds one thing from another area of stoic (HTTP integration, idempotency,
messaging, breakers, Prometheus) for the run's backend. Keeping them here means the
services read as plain application code. Pieces that need an optional library (httpx,
prometheus_client, redis) are imported inside the function that uses them, so the naive
build of the demo never imports them.
"""

from __future__ import annotations

import threading
from typing import Any

import stoic

from ..events import Event
from ..idempotency import IdempotencyMiddleware, RedisStore, SQLiteStore, Store
from ..integrations.asgi import StoicMiddleware
from ..messaging import Inbox, Outbox, OutboxRelay, Worker, connect
from ..policies.breaker import BreakerOpened, CircuitBreaker, CountWindow
from ..state import RedisState
from .services.common import ASGIApp, ShopConfig, Stats

__all__ = [
    "broker",
    "count_breaker_openings",
    "edge_middleware",
    "http_client",
    "idempotency_middleware",
    "inbox",
    "metrics_app",
    "outbox",
    "start_outbox_relay",
    "start_worker",
]


def metrics_app(cfg: ShopConfig) -> ASGIApp:
    """The ``/metrics`` endpoint, with stoic's Prometheus instrumentation (``stoic[prometheus]``)."""
    from ..observability import prometheus

    prometheus.instrument()
    app: ASGIApp = prometheus.make_asgi_app()
    return app


def edge_middleware(app: ASGIApp, cfg: ShopConfig, service: str) -> ASGIApp:
    """Read the deadline header and bind the request id (``StoicMiddleware``)."""
    return StoicMiddleware(app, service=service, version="demo", max_deadline=cfg.edge_deadline)


def _idempotency_store(cfg: ShopConfig, service: str) -> Store:
    if cfg.backend == "redis":
        return RedisStore(cfg.redis_url, prefix=f"{cfg.prefix}:{service}:")
    return SQLiteStore(f"{cfg.workdir}/{service}-idempotency.db")


def idempotency_middleware(app: ASGIApp, cfg: ShopConfig, service: str) -> ASGIApp:
    """Honour ``Idempotency-Key``: a repeated request gets the first one's stored reply."""
    return IdempotencyMiddleware(app, store=_idempotency_store(cfg, service))


def _breaker_state(cfg: ShopConfig) -> RedisState | None:
    """Shared breaker state: in Redis with the redis backend, else in this process."""
    if cfg.backend != "redis":
        return None
    return RedisState(cfg.redis_url, prefix=f"{cfg.prefix}:breakers")


def http_client(cfg: ShopConfig, inner: Any) -> Any:
    """An ``httpx.AsyncClient`` through stoic's resilient transport.

    Retries by classification (UNKNOWN only with an idempotency key), at most 3 attempts,
    exponential backoff with full jitter, a retry budget of 20% of traffic; one breaker per
    host that opens at 60% failures over the last 40 calls (so a 30% loss rate, which
    retries with keys absorb, does not trip it; an outage does) and tries again after 1 s
    (short, because the whole demo lasts a minute); attempts bounded by the deadline.
    """
    import httpx

    from ..integrations.httpx import ResilientAsyncTransport

    shared = _breaker_state(cfg)

    # the transport asks for a breaker per host ("http:127.0.0.1:40123"); name each after the
    # service behind that address, so /metrics, dashboards and probes say "payments"
    services = {f"http:{httpx.URL(url).netloc.decode()}": name for name, url in cfg.urls.items()}

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(
            services.get(name, name), failure_rate=0.6, window=CountWindow(40), minimum_calls=10,
            open_for=1.0, half_open_calls=3, state=shared,
        )

    policy = stoic.Retry(
        max_attempts=3, backoff=stoic.backoff.exponential(0.02, 2.0, 0.2),
        budget=stoic.RetryBudget(ratio=0.2, min_per_second=1.0), name="orders-out",
    )
    transport = ResilientAsyncTransport(
        inner=inner, policy=policy, per_host=True, breaker=breaker,
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(1.0))


def broker(cfg: ShopConfig) -> Any:
    """The run's durable queue; on a shared Redis or RabbitMQ, namespaced to this run.

    Typed as ``connect`` is: the concrete broker class, whose extras (``delete_topic`` on
    Redis and RabbitMQ) the runner uses beyond the ``Broker`` protocol."""
    if cfg.backend in ("redis", "rabbitmq"):
        return connect(cfg.broker_url, prefix=cfg.prefix)
    return connect(cfg.broker_url)


def outbox(conn: Any) -> Outbox:
    """The transactional outbox orders writes its hand-offs to (table created on ``conn``)."""
    box = Outbox()
    box.create(conn)
    return box


def start_outbox_relay(cfg: ShopConfig, db_path: str) -> None:
    """Relay outbox rows from ``db_path`` to the durable queue, on a background thread."""
    import sqlite3

    db = sqlite3.connect(db_path, timeout=10.0, check_same_thread=False)
    relay = OutboxRelay(db, broker(cfg), poll_interval=0.05)
    threading.Thread(target=relay.run, name="outbox-relay", daemon=True).start()


def inbox(conn: Any) -> Inbox:
    """The consumer's inbox: handled message ids, committed with the handler's own writes."""
    box = Inbox()
    box.create(conn)
    return box


def start_worker(cfg: ShopConfig, handler: Any) -> None:
    """Consume ``order.placed`` with a lease and de-duplication, on a background thread.

    The lease is short (1.5 s) so a killed worker's messages come back within the demo;
    ``prefetch`` makes the worker hold a batch, which is what a kill interrupts.
    """
    worker = Worker(
        broker(cfg), "order.placed", handler, lease=cfg.worker_lease,
        dedupe=_idempotency_store(cfg, "fulfillment"), prefetch=10,
        retry=stoic.Retry(max_attempts=5, backoff=stoic.backoff.exponential(0.1, 2.0, 1.0)),
        poll_interval=0.05,
    )

    def run() -> None:
        worker.run(handle_signals=False)

    threading.Thread(target=run, name="worker", daemon=True).start()


def count_breaker_openings(stats: Stats) -> None:
    """Count every breaker opening this process decided (from stoic's events) in
    ``stats['breaker_openings']``; openings followed from shared state are not counted."""

    def sink(event: Event) -> None:
        if isinstance(event, BreakerOpened) and event.source != "remote":
            stats.add("breaker_openings")

    stoic.events.subscribe(sink)

"""The stoic pieces the shop's stoic build is made of, assembled in one place.

Each function builds one thing from another area of stoic (HTTP integration, idempotency,
messaging, breakers, Prometheus) for the run's backend. Keeping them here means the
services read as plain application code, and a piece that is not installed fails here with
a message that names it.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from .services.common import ASGIApp, ShopConfig, Stats

__all__ = [
    "count_breaker_openings",
    "edge_middleware",
    "http_client",
    "idempotency_middleware",
    "metrics_app",
    "outbox",
    "require",
    "start_outbox_relay",
    "start_worker",
]


def require(module: str, what: str) -> Any:
    """Import ``module`` or fail naming the missing piece of the stoic build."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"the stoic build of the demo needs {what} ({module}): {exc}") from exc


def metrics_app(cfg: ShopConfig) -> ASGIApp:
    """The ``/metrics`` endpoint: stoic's Prometheus instrumentation where it is available."""
    try:
        prom = importlib.import_module("stoic.observability.prometheus")
    except ImportError:
        prom = None
    if prom is not None:
        prom.instrument()
        return prom.make_asgi_app()  # type: ignore[no-any-return]
    import prometheus_client

    return prometheus_client.make_asgi_app()  # type: ignore[no-any-return]


def edge_middleware(app: ASGIApp, cfg: ShopConfig, service: str) -> ASGIApp:
    """Read the deadline header and bind the request id (``StoicMiddleware``)."""
    asgi = require("stoic.integrations.asgi", "the ASGI middleware")
    return asgi.StoicMiddleware(  # type: ignore[no-any-return]
        app, service=service, version="demo", max_deadline=cfg.edge_deadline,
    )


def _idempotency_store(cfg: ShopConfig, service: str) -> Any:
    idem = require("stoic.idempotency", "idempotency stores")
    if cfg.backend == "redis":
        return idem.RedisStore(cfg.redis_url, prefix=f"{cfg.prefix}:{service}")
    return idem.SQLiteStore(f"{cfg.workdir}/{service}-idempotency.db")


def idempotency_middleware(app: ASGIApp, cfg: ShopConfig, service: str) -> ASGIApp:
    """Honour ``Idempotency-Key``: a repeated request gets the first one's stored reply."""
    asgi = require("stoic.integrations.asgi", "the idempotency middleware")
    return asgi.IdempotencyMiddleware(  # type: ignore[no-any-return]
        app, store=_idempotency_store(cfg, service),
    )


def http_client(cfg: ShopConfig) -> Any:
    """An ``httpx.AsyncClient`` through stoic's resilient transport.

    Retries by classification (UNKNOWN only with an idempotency key), a retry budget of 20%
    of traffic, full jitter, one breaker per host, attempts bounded by the deadline.
    """
    import httpx

    import stoic

    integ = require("stoic.integrations.httpx", "the httpx integration")
    breaker_mod = require("stoic.policies.breaker", "circuit breakers")
    del breaker_mod
    policy = stoic.Retry(
        attempts=3, backoff=stoic.backoff.exponential(0.02, 2.0, 0.2),
        budget=stoic.RetryBudget(ratio=0.2, min_per_second=1.0), name="orders-out",
    )
    transport = integ.ResilientAsyncTransport(
        inner=httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200)),
        policy=policy, per_host=True,
    )
    return httpx.AsyncClient(transport=transport, timeout=cfg.edge_deadline)


def outbox(cfg: ShopConfig) -> Any:
    """The transactional outbox the orders service writes its hand-offs to."""
    messaging = require("stoic.messaging", "the transactional outbox")
    return messaging.Outbox()


def start_outbox_relay(cfg: ShopConfig, db_path: str) -> None:
    """Relay outbox rows from ``db_path`` to the durable queue, on a background thread."""
    messaging = require("stoic.messaging", "the outbox relay")
    broker = messaging.connect(cfg.broker_url)
    relay = messaging.OutboxRelay(db_path, broker)
    threading.Thread(target=relay.run, name="outbox-relay", daemon=True).start()


def start_worker(cfg: ShopConfig, handler: Any, stats: Stats) -> None:
    """Consume ``order.placed`` with a lease and de-duplication, on a background thread."""
    messaging = require("stoic.messaging", "the worker")
    broker = messaging.connect(cfg.broker_url)
    dedupe = _idempotency_store(cfg, "fulfillment")

    def handle(message: Any) -> None:
        handler(message.payload, message.id)

    worker = messaging.Worker(broker, "order.placed", handle, lease=cfg.worker_lease,
                              dedupe=dedupe)
    threading.Thread(target=worker.run, name="worker", daemon=True).start()


def count_breaker_openings(stats: Stats) -> None:
    """Count every breaker opening (from stoic's events) in ``stats['breaker_openings']``."""
    import stoic

    def sink(event: Any) -> None:
        if type(event).__name__ == "BreakerOpened":
            stats.add("breaker_openings")

    stoic.events.subscribe(sink)

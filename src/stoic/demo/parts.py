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
    "broker",
    "count_breaker_openings",
    "edge_middleware",
    "http_client",
    "idempotency_middleware",
    "inbox",
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
        return idem.RedisStore(cfg.redis_url, prefix=f"{cfg.prefix}:{service}:")
    return idem.SQLiteStore(f"{cfg.workdir}/{service}-idempotency.db")


def idempotency_middleware(app: ASGIApp, cfg: ShopConfig, service: str) -> ASGIApp:
    """Honour ``Idempotency-Key``: a repeated request gets the first one's stored reply."""
    asgi = require("stoic.idempotency.asgi", "the idempotency middleware")
    return asgi.IdempotencyMiddleware(  # type: ignore[no-any-return]
        app, store=_idempotency_store(cfg, service),
    )


def _breaker_state(cfg: ShopConfig) -> Any:
    """Shared breaker state: in Redis with the redis backend, else in this process."""
    if cfg.backend != "redis":
        return None
    state = require("stoic.state", "shared breaker state")
    return state.RedisState(cfg.redis_url, prefix=f"{cfg.prefix}:breakers")


def http_client(cfg: ShopConfig, inner: Any) -> Any:
    """An ``httpx.AsyncClient`` through stoic's resilient transport.

    Retries by classification (UNKNOWN only with an idempotency key), at most 3 attempts,
    exponential backoff with full jitter, a retry budget of 20% of traffic; one breaker per
    host that opens at 60% failures over the last 40 calls (so a 30% loss rate, which
    retries with keys absorb, does not trip it; an outage does) and tries again after 1 s
    (short, because the whole demo lasts a minute); attempts bounded by the deadline.
    """
    import httpx

    import stoic

    integ = require("stoic.integrations.httpx", "the httpx integration")
    breaker_mod = require("stoic.policies.breaker", "circuit breakers")
    shared = _breaker_state(cfg)

    # the transport asks for a breaker per host ("http:127.0.0.1:40123"); name each after the
    # service behind that address, so /metrics, dashboards and probes say "payments"
    services = {f"http:{httpx.URL(url).netloc.decode()}": name for name, url in cfg.urls.items()}

    def breaker(name: str) -> Any:
        return breaker_mod.CircuitBreaker(
            services.get(name, name), failure_rate=0.6, window=breaker_mod.CountWindow(40), minimum_calls=10,
            open_for=1.0, half_open_calls=3, state=shared,
        )

    policy = stoic.Retry(
        max_attempts=3, backoff=stoic.backoff.exponential(0.02, 2.0, 0.2),
        budget=stoic.RetryBudget(ratio=0.2, min_per_second=1.0), name="orders-out",
    )
    transport = integ.ResilientAsyncTransport(
        inner=inner, policy=policy, per_host=True, breaker=breaker,
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(1.0))


def broker(cfg: ShopConfig) -> Any:
    """The run's durable queue; on a shared Redis or RabbitMQ, namespaced to this run."""
    messaging = require("stoic.messaging", "the durable queue")
    if cfg.backend in ("redis", "rabbitmq"):
        return messaging.connect(cfg.broker_url, prefix=cfg.prefix)
    return messaging.connect(cfg.broker_url)


def _made_on(conn: Any, kind: str, what: str) -> Any:
    """An ``Outbox`` or ``Inbox`` whose table is created on ``conn``."""
    box = getattr(require("stoic.messaging.outbox", what), kind)()
    box.create(conn)
    return box


def outbox(conn: Any) -> Any:
    """The transactional outbox orders writes its hand-offs to (table created on ``conn``)."""
    return _made_on(conn, "Outbox", "the transactional outbox")


def start_outbox_relay(cfg: ShopConfig, db_path: str) -> None:
    """Relay outbox rows from ``db_path`` to the durable queue, on a background thread."""
    import sqlite3

    outbox_mod = require("stoic.messaging.outbox", "the outbox relay")
    db = sqlite3.connect(db_path, timeout=10.0, check_same_thread=False)
    relay = outbox_mod.OutboxRelay(db, broker(cfg), poll_interval=0.05)
    threading.Thread(target=relay.run, name="outbox-relay", daemon=True).start()


def inbox(conn: Any) -> Any:
    """The consumer's inbox: handled message ids, committed with the handler's own writes."""
    return _made_on(conn, "Inbox", "the inbox")


def start_worker(cfg: ShopConfig, handler: Any) -> None:
    """Consume ``order.placed`` with a lease and de-duplication, on a background thread.

    The lease is short (1.5 s) so a killed worker's messages come back within the demo;
    ``prefetch`` makes the worker hold a batch, which is what a kill interrupts.
    """
    import stoic

    messaging = require("stoic.messaging", "the worker")
    dedupe = _idempotency_store(cfg, "fulfillment")
    worker = messaging.Worker(
        broker(cfg), "order.placed", handler, lease=cfg.worker_lease, dedupe=dedupe, prefetch=10,
        retry=stoic.Retry(max_attempts=5, backoff=stoic.backoff.exponential(0.1, 2.0, 1.0)),
        poll_interval=0.05,
    )

    def run() -> None:
        worker.run(handle_signals=False)

    threading.Thread(target=run, name="worker", daemon=True).start()


def count_breaker_openings(stats: Stats) -> None:
    """Count every breaker opening (from stoic's events) in ``stats['breaker_openings']``."""
    import stoic

    def sink(event: Any) -> None:
        if type(event).__name__ == "BreakerOpened" and getattr(event, "source", "") != "remote":
            stats.add("breaker_openings")

    stoic.events.subscribe(sink)

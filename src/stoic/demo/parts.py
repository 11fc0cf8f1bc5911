"""The stoic pieces the shop's stoic build is made of, assembled in one place.

Each function builds one thing from another area of stoic (HTTP integration, idempotency,
messaging, breakers, Prometheus) for the run's backend. Keeping them here means the
services read as plain application code. Pieces that need an optional library (httpx,
prometheus_client, redis) are imported inside the function that uses them, so the naive
build of the demo never imports them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import stoic

from ..events import Event
from ..idempotency import IdempotencyMiddleware, RedisStore, SQLiteStore, Store
from ..integrations.asgi import LoadShedder, StoicMiddleware
from ..messaging import Inbox, Outbox, OutboxRelay, Worker, connect
from ..policies.breaker import BreakerOpened, CircuitBreaker, CountWindow
from ..policies.limit import AdaptiveLimit, LimitChanged
from ..state import RedisState
from .services.common import ASGIApp, ShopConfig, Stats

if TYPE_CHECKING:
    from ..workflow.postgres import PostgresStore as PostgresWorkflowStore

__all__ = [
    "KEY_LEASE",
    "broker",
    "count_breaker_openings",
    "create_namespace",
    "drop_namespace",
    "edge_middleware",
    "http_client",
    "idempotency_middleware",
    "inbox",
    "load_shedder",
    "metrics_app",
    "outbox",
    "postgres_outbox",
    "start_outbox_relay",
    "start_worker",
    "sync_http_client",
    "workflow_store",
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
    if cfg.backend == "postgres":
        from ..idempotency.postgres import PostgresStore

        # bounded pools: the services of a run share the server with everyone else's
        return PostgresStore(cfg.pg_dsn, table=f"{service}_idempotency", max_size=8)
    return SQLiteStore(f"{cfg.workdir}/{service}-idempotency.db")


def idempotency_middleware(app: ASGIApp, cfg: ShopConfig, service: str) -> ASGIApp:
    """Honour ``Idempotency-Key``: a repeated request gets the first one's stored reply.

    A request in progress holds its key for ``KEY_LEASE`` seconds: the shop's handlers take
    milliseconds, and a key held by a request that died with its process (payments is
    killed mid-charge) comes free within seconds, not after the default minute, so the
    order's retries get through once payments is back instead of 409s until then.
    """
    return IdempotencyMiddleware(app, store=_idempotency_store(cfg, service), lease=KEY_LEASE)


#: Seconds a request in progress holds its idempotency key (see ``idempotency_middleware``).
KEY_LEASE = 5.0


def _breaker_state(cfg: ShopConfig) -> RedisState | None:
    """Shared breaker state: in Redis with the redis backend, else in this process."""
    if cfg.backend != "redis":
        return None
    return RedisState(cfg.redis_url, prefix=f"{cfg.prefix}:breakers")


def _transport_options(cfg: ShopConfig) -> dict[str, Any]:
    """The resilience settings both HTTP clients share (see ``http_client``)."""
    import httpx

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
    return {"policy": policy, "per_host": True, "breaker": breaker}


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

    transport = ResilientAsyncTransport(inner=inner, **_transport_options(cfg))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(1.0))


def sync_http_client(cfg: ShopConfig, inner: Any) -> Any:
    """An ``httpx.Client`` with the same resilience as ``http_client``, for workflow steps
    (they run on the workflow worker's threads)."""
    import httpx

    from ..integrations.httpx import ResilientTransport

    transport = ResilientTransport(inner=inner, **_transport_options(cfg))
    return httpx.Client(transport=transport, timeout=httpx.Timeout(1.0))


def broker(cfg: ShopConfig) -> Any:
    """The run's durable queue; on a shared Redis or RabbitMQ, namespaced to this run.

    Typed as ``connect`` is: the concrete broker class, whose extras (``delete_topic`` on
    Redis and RabbitMQ) the runner uses beyond the ``Broker`` protocol."""
    if cfg.backend in ("redis", "rabbitmq"):
        return connect(cfg.broker_url, prefix=cfg.prefix)
    if cfg.backend == "postgres":
        return connect(cfg.broker_url, schema=cfg.pg_schema, max_size=4)
    return connect(cfg.broker_url)


def create_namespace(cfg: ShopConfig) -> None:
    """Make the run's own place on a shared server before the services start.

    On PostgreSQL that is a schema named after the run (``cfg.pg_schema``): the stores
    create their tables in it, found through the search path of ``cfg.pg_dsn``.
    """
    if cfg.backend == "postgres":
        import psycopg

        with psycopg.connect(cfg.postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {cfg.pg_schema}")


def drop_namespace(cfg: ShopConfig) -> None:
    """Remove what the run left on a shared server (after its processes have stopped)."""
    if cfg.backend == "postgres":
        import psycopg

        with psycopg.connect(cfg.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {cfg.pg_schema} CASCADE")


def outbox(conn: Any) -> Outbox:
    """The transactional outbox orders writes its hand-offs to (table created on ``conn``)."""
    box = Outbox()
    box.create(conn)
    return box


def workflow_store(cfg: ShopConfig) -> str | PostgresWorkflowStore:
    """Where the stoic build's workflows keep their checkpoints: orders' own SQLite file, or
    (``--backend postgres``) tables in the run's PostgreSQL schema."""
    if cfg.backend == "postgres":
        from ..workflow.postgres import PostgresStore

        return PostgresStore(cfg.pg_dsn, prefix=f"{cfg.pg_schema}_wf", max_size=8)
    return f"sqlite:///{cfg.db('orders')}"


def postgres_outbox(store: PostgresWorkflowStore) -> Outbox:
    """The outbox in a PostgreSQL workflow store's own database (table created now), so
    ``ctx.publish`` writes the hand-off in the commit of the checkpoint that records it."""
    with store.connection() as conn:
        return outbox(conn)


def start_outbox_relay(cfg: ShopConfig, db_path: str) -> None:
    """Relay outbox rows to the durable queue, on a background thread: from ``db_path``, or
    with ``--backend postgres`` from the run's schema, where the workflows write them."""
    import sqlite3

    db: Any
    if cfg.backend == "postgres":
        import psycopg

        db = psycopg.connect(cfg.pg_dsn)
    else:
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
    ``stats['breaker_openings']``, and every move of an adaptive limit in
    ``stats['limit_changes']``; openings followed from shared state are not counted."""

    def sink(event: Event) -> None:
        if isinstance(event, BreakerOpened) and event.source != "remote":
            stats.add("breaker_openings")
        elif isinstance(event, LimitChanged):
            stats.add("limit_changes")

    stoic.events.subscribe(sink)


def load_shedder(app: ASGIApp, cfg: ShopConfig) -> ASGIApp:
    """Shed load at the edge only when the shop is overloaded (``LoadShedder``).

    The adaptive limit never goes below 32 orders in progress, about three times what the
    demo's 30 orders/s keep in flight, so ordinary traffic, outages included, is never
    refused: with a limit free to fall to its default minimum the shop refused 49 to 59
    orders per run and completed fewer than the naive build. Past that, the most important
    orders are served first and the rest get 503 with Retry-After.
    """
    limit = AdaptiveLimit("gradient2", initial_limit=64, min_limit=32, max_limit=512,
                          name="orders-edge")
    return LoadShedder(app, limit)

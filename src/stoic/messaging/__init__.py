"""Durable messaging: queues that lose nothing, workers that retry and dead-letter, an outbox.

Delivery is at-least-once on every broker; ``Worker(dedupe=...)`` and ``Inbox`` turn it into
effectively-once side effects, and ``Outbox`` publishes in the same transaction as the
business write. ``connect(url)`` picks the broker from a URL. The Redis and RabbitMQ clients
are imported only when those brokers are created, so this package needs only the stdlib.
See docs/messaging.md for what is guaranteed and what is not.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from .broker import AckAndClaim, AsyncBroker, Broker, SyncBroker
from .memory import MemoryBroker
from .model import (
    REQUEST_ID_HEADER,
    VERSION_HEADER,
    DeadLetter,
    DeadLettersRequeued,
    Message,
    MessageDeadLettered,
    MessageHandled,
    MessageRetried,
    QueueStats,
)
from .outbox import Inbox, Outbox, OutboxRelay
from .sqlite import SQLiteBroker
from .worker import Worker, WorkerCounts

__all__ = [
    "REQUEST_ID_HEADER",
    "VERSION_HEADER",
    "AckAndClaim",
    "AsyncBroker",
    "Broker",
    "DeadLetter",
    "DeadLettersRequeued",
    "Inbox",
    "MemoryBroker",
    "Message",
    "MessageDeadLettered",
    "MessageHandled",
    "MessageRetried",
    "NatsBroker",
    "Outbox",
    "OutboxRelay",
    "PostgresBroker",
    "QueueStats",
    "RabbitBroker",
    "RedisBroker",
    "SQLiteBroker",
    "SyncBroker",
    "Worker",
    "WorkerCounts",
    "connect",
]


def __getattr__(name: str) -> Any:
    # The Redis and RabbitMQ brokers need their extras; import them only when named.
    if name == "RedisBroker":
        from .redis import RedisBroker

        return RedisBroker
    if name == "RabbitBroker":
        from .rabbitmq import RabbitBroker

        return RabbitBroker
    if name == "PostgresBroker":
        from .postgres import PostgresBroker

        return PostgresBroker
    if name == "NatsBroker":
        from .nats import NatsBroker

        return NatsBroker
    raise AttributeError(f"module 'stoic.messaging' has no attribute {name!r}")


def connect(url: str, **options: Any) -> Any:
    """The broker a URL names.

    ``memory://``, ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (query
    options: ``synchronous``, ``dedupe_window``), ``redis://host:port/db`` (``rediss://``
    too), ``amqp://user:password@host:port/vhost`` (``amqps://`` too) and
    ``postgresql://user@host:port/db`` (``postgres://`` too; query options ``schema``,
    ``table_prefix``, ``dedupe_window``; the rest of the query goes to libpq) and
    ``nats://host:4222`` (``tls://`` too; query options ``prefix``, ``ack_wait``,
    ``dedupe_window``, ``max_deliver``, ``storage``). Keyword
    ``options`` go to the broker's constructor and win over the query string.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"url must look like 'scheme://...', got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "memory":
        if "dedupe_window" in query:
            options.setdefault("dedupe_window", float(query["dedupe_window"]))
        return MemoryBroker(**options)
    if scheme == "sqlite":
        path = unquote(url.split("://", 1)[1].split("?", 1)[0])
        if not path.startswith("/") or path == "/":
            raise ValueError(f"sqlite URLs look like 'sqlite:///file.db', got {url!r}")
        path = path[1:]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        if "synchronous" in query:
            options.setdefault("synchronous", query["synchronous"].upper())
        if "dedupe_window" in query:
            options.setdefault("dedupe_window", float(query["dedupe_window"]))
        return SQLiteBroker(path, **options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBroker

        return RedisBroker(url, **options)
    if scheme in ("amqp", "amqps"):
        from .rabbitmq import RabbitBroker

        return RabbitBroker(url, **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBroker

        for name in ("schema", "table_prefix"):
            if name in query:
                options.setdefault(name, query.pop(name))
        if "dedupe_window" in query:
            options.setdefault("dedupe_window", float(query.pop("dedupe_window")))
        dsn = urlunsplit(parts._replace(query=urlencode(query)))
        return PostgresBroker(dsn, **options)
    if scheme in ("nats", "tls"):
        from .nats import NatsBroker

        for name, kind in (("prefix", str), ("storage", str), ("ack_wait", float),
                           ("dedupe_window", float), ("max_deliver", int)):
            if name in query:
                options.setdefault(name, kind(query.pop(name)))
        return NatsBroker(urlunsplit(parts._replace(query=urlencode(query))), **options)
    raise ValueError(
        f"unknown broker scheme {scheme!r} in {url!r}: use memory://, sqlite:///, redis://, "
        "amqp://, postgresql:// or nats://"
    )

"""Idempotency keys: operations that run once however often they are retried.

``@idempotent(store=..., key=...)`` claims a key before running the function, stores its
result, and replays that result to every repeat of the key. The stores share one contract
(``Store``, see ``stoic.idempotency.store``) so the same code runs on memory, SQLite (the
embedded default), Redis or PostgreSQL. Redis and psycopg are imported only when their
store is used, so this package imports with the standard library alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .memory import MemoryStore
from .store import MAX_KEY_LENGTH, BaseStore, Claim, ClaimStatus, Record, RecordState, Store

if TYPE_CHECKING:
    from .asgi import IdempotencyMiddleware
    from .claims import aextend, extend
    from .decorator import Idempotent, idempotent
    from .postgres import PostgresStore
    from .redis import RedisStore
    from .sqlite import SQLiteStore

__all__ = [
    "MAX_KEY_LENGTH",
    "BaseStore",
    "Claim",
    "ClaimStatus",
    "IdempotencyMiddleware",
    "Idempotent",
    "MemoryStore",
    "PostgresStore",
    "Record",
    "RecordState",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "aextend",
    "extend",
    "idempotent",
]

_LAZY: dict[str, str] = {
    "IdempotencyMiddleware": "stoic.idempotency.asgi",
    "Idempotent": "stoic.idempotency.decorator",
    "aextend": "stoic.idempotency.claims",
    "extend": "stoic.idempotency.claims",
    "idempotent": "stoic.idempotency.decorator",
    "PostgresStore": "stoic.idempotency.postgres",
    "RedisStore": "stoic.idempotency.redis",
    "SQLiteStore": "stoic.idempotency.sqlite",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__, globals())

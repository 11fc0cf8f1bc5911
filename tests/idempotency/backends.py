"""Test backends for the idempotency suite: make stores, corrupt records, describe to workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stoic.idempotency import MemoryStore, Store

BACKENDS = ["memory", "sqlite", "redis", "postgres"]


@dataclass
class Backend:
    """How to make stores on one backend, corrupt a record, and describe it to a subprocess."""

    kind: str
    spec: dict[str, str]
    made: list[Any] = field(default_factory=list)
    _shared: Any = None

    def make(self) -> Store:
        """A store on this backend (memory: the same instance, since it cannot be shared)."""
        if self.kind == "memory":
            if self._shared is None:
                self._shared = MemoryStore()
            return self._shared  # type: ignore[no-any-return]
        store = make_store(self.spec)
        self.made.append(store)
        return store

    @property
    def shared_across_processes(self) -> bool:
        return self.kind != "memory"

    def corrupt(self, store: Any, key: str) -> None:
        """Make the record for ``key`` unreadable, the way a bad write or a bug would."""
        if self.kind == "sqlite":
            store._conn().execute(
                f"UPDATE {store.table} SET state = 7, lease_until = 'not a time' WHERE key = ?",
                (key,),
            )
        elif self.kind == "redis":
            store._sync("claim")
            store._client.delete(store.prefix + key)
            store._client.set(store.prefix + key, "{not json")
        else:
            with store._sync_pool().connection() as conn:
                conn.execute(f"UPDATE {store.table} SET state = 9 WHERE key = %s", (key,))


def make_store(spec: dict[str, str]) -> Any:
    """Build a store from a plain dict (also used by the subprocess workers)."""
    from stoic.idempotency import PostgresStore, RedisStore, SQLiteStore

    kind = spec["kind"]
    if kind == "sqlite":
        return SQLiteStore(spec["path"])
    if kind == "redis":
        return RedisStore(spec["url"], prefix=spec["prefix"])
    if kind == "postgres":
        return PostgresStore(spec["dsn"], table=spec["table"], max_size=4)
    if kind == "memory":
        return MemoryStore()
    raise ValueError(kind)



"""An in-process idempotency store: a dict behind a lock.

A full implementation of the store contract, not a mock: use it for tests, for a single
process that needs no persistence, or as the reference the other stores are checked
against. Records vanish with the process, so it protects against retries inside one
process only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .. import clock
from .store import (
    BaseStore,
    Claim,
    Record,
    RecordState,
    live_answer,
    new_token,
    unexpired,
    won_claim,
)

__all__ = ["MemoryStore"]


class MemoryStore(BaseStore):
    """Idempotency records in this process's memory. Safe for threads and tasks."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)})"

    def _claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> Claim:
        now = clock.wall()
        with self._lock:
            old = self._records.get(key)
            answer = live_answer(old, fingerprint, now)
            if answer is not None:
                return answer
            token = new_token()
            self._records[key] = Record(
                key=key, fingerprint=fingerprint, state=RecordState.IN_FLIGHT, token=token,
                lease_until=now + lease, expires_at=now + max(ttl, lease),
            )
        return won_claim(key, token, old, now)

    def _owned(self, key: str, token: str, now: float) -> Record | None:
        record = self._records.get(key)
        if (
            record is None or record.token != token
            or record.state is not RecordState.IN_FLIGHT or record.expires_at <= now
        ):
            return None
        return record

    def _update(self, key: str, token: str, change: Callable[[Record, float], Record]) -> bool:
        """Replace ``token``'s live in-flight record with ``change(record, now)``; whether
        there was one."""
        now = clock.wall()
        with self._lock:
            record = self._owned(key, token, now)
            if record is None:
                return False
            self._records[key] = change(record, now)
            return True

    def _complete(self, key: str, token: str, response: str | None, ttl: float) -> bool:
        return self._update(key, token, lambda record, now: Record(
            key=key, fingerprint=record.fingerprint, state=RecordState.COMPLETED,
            token=token, lease_until=now, expires_at=now + ttl, response=response,
        ))

    def release(self, key: str, token: str) -> bool:
        with self._lock:
            if self._owned(key, token, clock.wall()) is None:
                return False
            del self._records[key]
            return True

    def _extend(self, key: str, token: str, lease: float) -> bool:
        return self._update(key, token, lambda record, now: Record(
            key=key, fingerprint=record.fingerprint, state=record.state, token=token,
            lease_until=now + lease, expires_at=max(record.expires_at, now + lease),
        ))

    def _get(self, key: str) -> Record | None:
        return unexpired(self._records.get(key), clock.wall())

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._records.pop(key, None) is not None

    def purge_expired(self) -> int:
        now = clock.wall()
        with self._lock:
            dead = [k for k, r in self._records.items() if r.expires_at <= now]
            for k in dead:
                del self._records[k]
        return len(dead)

    # The async twins need no thread: nothing here blocks for long.
    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        return self.claim(key, fingerprint, lease=lease, ttl=ttl)

    async def acomplete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        return self.complete(key, token, response, ttl=ttl)

    async def arelease(self, key: str, token: str) -> bool:
        return self.release(key, token)

    async def aextend(self, key: str, token: str, lease: float) -> bool:
        return self.extend(key, token, lease)

    async def aget(self, key: str) -> Record | None:
        return self.get(key)

    async def adelete(self, key: str) -> bool:
        return self.delete(key)

    async def apurge_expired(self) -> int:
        return self.purge_expired()

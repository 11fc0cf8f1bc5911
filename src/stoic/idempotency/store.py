"""The store contract every idempotency backend keeps, and the logic they share.

A store keeps one record per key. A record is either *in flight* (somebody claimed the key
and holds a lease on it) or *completed* (the work is done and ``response`` holds its stored
reply). The whole protocol is five operations, each atomic on its own:

``claim(key, fingerprint, *, lease, ttl) -> Claim``
    Try to become the one caller that runs the work for ``key``. Exactly one of any number
    of concurrent callers (threads, processes, machines sharing the backend) gets
    ``ClaimStatus.CLAIMED`` and a fresh ``token``; the record it creates is in flight for
    ``lease`` seconds and expires ``ttl`` seconds from now. Everybody else gets:

    * ``COMPLETED``: the work is done; ``claim.record.response`` is the stored reply;
    * ``IN_FLIGHT``: somebody holds a live lease; ``claim.retry_after`` is the time left on it;
    * ``MISMATCH``: the key is in use (in flight or completed) with a different ``fingerprint``.

    A record whose ``ttl`` has passed, an in-flight record whose lease has run out (its owner
    died or stalled) and a record the store cannot read (corrupted) all count as absent: the
    claim replaces them, and says so in ``claim.replaced`` (``"expired"``, ``"lease_expired"``
    or ``"corrupted"``). Taking over an expired lease is what makes execution *at least once*
    across crashes: if the old owner was only slow, the work may run twice.

``complete(key, token, response, *, ttl) -> bool``
    Store ``response`` (text, opaque to the store; ``None`` is allowed) and mark the record
    completed, expiring ``ttl`` seconds from now. Only the holder of ``token`` can do this,
    and only while the record is still its in-flight record: False means the lease was lost
    (another caller took the key over), and nothing was written.

``release(key, token) -> bool``
    Delete the in-flight record owned by ``token`` so the next claim runs the work again
    (a failure that did not take effect). False when ``token`` no longer owns the key, or
    its record has expired (``ttl``) and so is gone already as far as readers can tell.

``extend(key, token, lease) -> bool``
    Push the owner's lease to ``lease`` seconds from now, for calls that run long.
    False when ``token`` no longer owns the key.

``get(key) -> Record | None``
    Read the live record, or None when absent, expired or unreadable.

and housekeeping: ``delete(key)`` (unconditional, for operators), ``purge_expired() -> int``
(remove expired records; reads ignore them anyway) and ``close()``. Every operation has an
async twin with an ``a`` prefix (``aclaim``, ``acomplete``, ...) with the same contract.

Keys are at most ``MAX_KEY_LENGTH`` (255) characters, refused with ``ValueError`` otherwise.
``lease`` and ``ttl`` are float seconds > 0. Time is the wall clock of the caller
(``stoic.clock.wall()``), so processes sharing a store must have roughly synchronised clocks;
leases should be much longer than the skew. Stores never unpickle or evaluate anything they
read: records are plain columns or fields, and ``response`` is text handed back unchanged.

What every backend shares is written once here: the argument checks (``check_claim``,
``check_seconds``, ``check_key``), what a claim on a live record answers (``live_answer``),
why a won claim replaced a dead one (``won_claim``) and what ``get`` hides (``unexpired``).
``BaseStore`` runs those checks before its backend's own ``claim``, ``complete``, ``extend``
and ``get`` (``_claim``, ...), and adds default async twins that run the sync method in a
worker thread (so the event loop never blocks); backends with a native async client
override them.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MAX_KEY_LENGTH",
    "SEPARATOR",
    "SQL_COLUMNS",
    "SQL_COMPLETED",
    "SQL_IN_FLIGHT",
    "BaseStore",
    "Claim",
    "ClaimStatus",
    "Record",
    "RecordState",
    "Store",
    "check_claim",
    "check_key",
    "check_seconds",
    "check_store",
    "check_table",
    "decide",
    "live_answer",
    "new_token",
    "record_from_row",
    "report_corrupted",
    "store_key",
    "unexpired",
    "won_claim",
]

_log = logging.getLogger("stoic.idempotency")

MAX_KEY_LENGTH = 255
"""Longest key a store accepts. The IETF draft leaves it open; 255 fits every index."""

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

SEPARATOR = "\x1f"
"""Joins namespace, scope and client key (ASCII unit separator: not in a name or a header)."""


class RecordState(str, enum.Enum):
    """Where the work for a key stands."""

    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


class ClaimStatus(str, enum.Enum):
    """The answer to ``claim``: run the work, replay it, wait, or refuse a reused key."""

    CLAIMED = "claimed"
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class Record:
    """One key's record as stored. Times are wall-clock epoch seconds."""

    key: str
    fingerprint: str
    state: RecordState
    token: str
    lease_until: float
    expires_at: float
    response: str | None = None

    @property
    def completed(self) -> bool:
        return self.state is RecordState.COMPLETED


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of ``claim``.

    ``token`` is set only for ``CLAIMED``: it proves ownership to ``complete``, ``release``
    and ``extend``. ``record`` is the existing record for every other status.
    ``retry_after`` is the lease time left for ``IN_FLIGHT``. ``replaced`` says why a claim
    replaced an existing record (``"expired"``, ``"lease_expired"``, ``"corrupted"``).
    """

    status: ClaimStatus
    key: str
    token: str | None = None
    record: Record | None = None
    retry_after: float | None = None
    replaced: str | None = None

    @property
    def claimed(self) -> bool:
        return self.status is ClaimStatus.CLAIMED


@runtime_checkable
class Store(Protocol):
    """What an idempotency store does; see the module docstring for the full contract."""

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim: ...
    def complete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool: ...
    def release(self, key: str, token: str) -> bool: ...
    def extend(self, key: str, token: str, lease: float) -> bool: ...
    def get(self, key: str) -> Record | None: ...
    def delete(self, key: str) -> bool: ...
    def purge_expired(self) -> int: ...
    def close(self) -> None: ...

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim: ...
    async def acomplete(
        self, key: str, token: str, response: str | None, *, ttl: float
    ) -> bool: ...
    async def arelease(self, key: str, token: str) -> bool: ...
    async def aextend(self, key: str, token: str, lease: float) -> bool: ...
    async def aget(self, key: str) -> Record | None: ...
    async def adelete(self, key: str) -> bool: ...
    async def apurge_expired(self) -> int: ...
    async def aclose(self) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys a store cannot hold: not a string, empty, or longer than 255 characters."""
    if not isinstance(key, str):
        raise TypeError(f"idempotency key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("idempotency key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"idempotency key is {len(key)} characters long; at most {MAX_KEY_LENGTH} allowed"
        )
    return key


def check_seconds(name: str, value: float) -> float:
    """A duration argument: a finite float > 0 (ValueError naming it otherwise)."""
    if type(value) is float and 0.0 < value < math.inf:
        return value  # the common case, checked first: this runs on every claim
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_claim(key: str, lease: float, ttl: float) -> tuple[float, float]:
    """Check a claim's arguments (every store's first step); returns ``(lease, ttl)``."""
    check_key(key)
    return check_seconds("lease", lease), check_seconds("ttl", ttl)


def check_store(store: object, methods: tuple[str, ...]) -> None:
    """Refuse, at construction, a store that lacks a method its user will call."""
    missing = [name for name in methods if not callable(getattr(store, name, None))]
    if missing:
        raise TypeError(f"store must implement stoic.idempotency.Store (no {', '.join(missing)}),"
                        f" got {store!r}")


def check_table(table: str) -> str:
    """A table name safe to put in SQL: ASCII letters, digits and ``_``, not starting with a
    digit, at most 63 characters (PostgreSQL's limit)."""
    if not (isinstance(table, str) and _TABLE.fullmatch(table)):
        raise ValueError(f"table must be an SQL name (ASCII letters, digits and _, not starting"
                         f" with a digit, at most 63), got {table!r}")
    return table


def store_key(namespace: str, scope: str, key: str) -> str:
    """The stored key for a client's key: namespace, scope and key joined by ``SEPARATOR``,
    or the SHA-256 of that when it is longer than ``MAX_KEY_LENGTH`` (so any client key that
    fits also fits behind a long namespace or scope)."""
    joined = SEPARATOR.join((namespace, scope, key))
    if len(joined) <= MAX_KEY_LENGTH:
        return joined
    return "sha256:" + hashlib.sha256(joined.encode("utf-8")).hexdigest()


def new_token() -> str:
    """An unguessable owner token: 128 random bits."""
    return secrets.token_hex(16)


def decide(record: Record, fingerprint: str, now: float) -> Claim:
    """What a claim on a live record answers (shared by every backend, written once)."""
    if record.fingerprint != fingerprint:
        return Claim(ClaimStatus.MISMATCH, record.key, record=record)
    if record.state is RecordState.COMPLETED:
        return Claim(ClaimStatus.COMPLETED, record.key, record=record)
    return Claim(
        ClaimStatus.IN_FLIGHT, record.key, record=record,
        retry_after=max(0.0, record.lease_until - now),
    )


def live_answer(record: Record | None, fingerprint: str, now: float) -> Claim | None:
    """What a claim answers when ``record`` is live; None when the key is free to claim.

    A record is dead once it expired, or while in flight once its lease ran out."""
    if record is None or record.expires_at <= now or (
        record.state is RecordState.IN_FLIGHT and record.lease_until <= now
    ):
        return None
    return decide(record, fingerprint, now)


def won_claim(key: str, token: str, old: Record | None, now: float, *,
              corrupted: bool = False) -> Claim:
    """A won claim, saying why it replaced the dead record ``old``, if there was one."""
    if corrupted:
        replaced: str | None = "corrupted"
    elif old is None:
        replaced = None
    else:
        replaced = "expired" if old.expires_at <= now else "lease_expired"
    return Claim(ClaimStatus.CLAIMED, key, token=token, replaced=replaced)


def unexpired(record: Record | None, now: float) -> Record | None:
    """What ``get`` returns: the record unless it has expired (a lapsed lease still counts)."""
    return record if record is not None and record.expires_at > now else None


SQL_IN_FLIGHT, SQL_COMPLETED = 0, 1
"""How the SQL stores (SQLite, PostgreSQL) keep ``RecordState`` in their integer column."""
_SQL_STATES = {SQL_IN_FLIGHT: RecordState.IN_FLIGHT, SQL_COMPLETED: RecordState.COMPLETED}

SQL_COLUMNS = "fingerprint, state, token, lease_until, expires_at, response"
"""The columns the SQL stores select for a record, in the order ``record_from_row`` reads."""


def record_from_row(key: str, row: tuple[Any, ...]) -> Record:
    """The record in an SQL row of ``SQL_COLUMNS``. ``ValueError`` or ``TypeError`` when
    the row does not hold one (an unknown state, a time or a text of the wrong type)."""
    fingerprint, state, token, lease_until, expires_at, response = row
    known = _SQL_STATES.get(state)
    if known is None:
        raise ValueError(f"state={state!r}")
    if not (isinstance(fingerprint, str) and isinstance(token, str)
            and (response is None or isinstance(response, str))):
        raise TypeError("fingerprint, token or response is not text")
    return Record(key=key, fingerprint=fingerprint, state=known, token=token,
                  lease_until=float(lease_until), expires_at=float(expires_at),
                  response=response)


def report_corrupted(store: str, key: str, problem: object) -> None:
    """A record that cannot be read is logged and then treated as absent, never raised."""
    _log.warning("idempotency %s: record for key %r is unreadable (%s); treating it as absent",
                 store, key, problem)


class BaseStore:
    """Argument checks and thread-offloaded async twins for stores with a sync client.

    ``claim``, ``complete``, ``extend`` and ``get`` check their arguments, then hand them to
    the backend's ``_claim``, ``_complete``, ``_extend`` and ``_get`` (``lease`` and ``ttl``
    as float seconds). A store may instead override the public methods themselves."""

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        lease, ttl = check_claim(key, lease, ttl)
        return self._claim(key, fingerprint, lease, ttl)

    def _claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> Claim:
        raise NotImplementedError

    def complete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        return self._complete(key, token, response, check_seconds("ttl", ttl))

    def _complete(self, key: str, token: str, response: str | None, ttl: float) -> bool:
        raise NotImplementedError

    def release(self, key: str, token: str) -> bool:
        raise NotImplementedError

    def extend(self, key: str, token: str, lease: float) -> bool:
        return self._extend(key, token, check_seconds("lease", lease))

    def _extend(self, key: str, token: str, lease: float) -> bool:
        raise NotImplementedError

    def get(self, key: str) -> Record | None:
        return self._get(check_key(key))

    def _get(self, key: str) -> Record | None:
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        raise NotImplementedError

    def purge_expired(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections. The store may not be used afterwards."""

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        return await asyncio.to_thread(self.claim, key, fingerprint, lease=lease, ttl=ttl)

    async def acomplete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        return await asyncio.to_thread(self.complete, key, token, response, ttl=ttl)

    async def arelease(self, key: str, token: str) -> bool:
        return await asyncio.to_thread(self.release, key, token)

    async def aextend(self, key: str, token: str, lease: float) -> bool:
        return await asyncio.to_thread(self.extend, key, token, lease)

    async def aget(self, key: str) -> Record | None:
        return await asyncio.to_thread(self.get, key)

    async def adelete(self, key: str) -> bool:
        return await asyncio.to_thread(self.delete, key)

    async def apurge_expired(self) -> int:
        return await asyncio.to_thread(self.purge_expired)

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> BaseStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

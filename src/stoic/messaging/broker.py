"""The contract every broker keeps, in sync and async form.

Delivery is at-least-once. ``claim`` hands out messages under a lease (a visibility timeout):
until the lease ends nobody else receives them; if the consumer neither acks nor extends the
lease in time (it crashed, hung, or lost its connection) the message is delivered again. A
consumer therefore acks only after its work is done, and must tolerate seeing a message twice
(``Worker(dedupe=...)`` or an ``Inbox`` make the effects happen once).

Every method has an ``a``-prefixed async twin with the same contract. ``ThreadedAsync``
provides the twins for brokers whose client is synchronous by running the sync method in a
worker thread, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .._lazy import require
from .model import (
    DeadLetter,
    Message,
    QueueStats,
    encode_payload,
    message_ids,
    new_id,
    outgoing_headers,
)

__all__ = [
    "AckAndClaim",
    "AsyncBroker",
    "BatchBroker",
    "Broker",
    "PreparedPublish",
    "PublishOne",
    "SyncBroker",
    "ThreadedAsync",
    "Waking",
    "check_claim",
    "check_delay",
    "check_int",
    "check_topic",
    "prepare",
    "prepare_one",
    "require",
]


@runtime_checkable
class SyncBroker(Protocol):
    """The synchronous half of the broker contract."""

    def publish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        """Queue ``payload`` on ``topic``; return the message id.

        The payload is encoded (``stoic.codec``) before anything is written: an unencodable
        payload raises ``CodecError`` and nothing is queued. Publishing an ``id`` that was
        already published within the broker's de-duplication window does nothing and returns
        that id. ``delay`` (seconds) holds the message back before its first delivery. When
        this returns, the broker has the message durably (committed, persisted or confirmed).
        """
        ...

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        """``publish`` for several payloads in one round trip/transaction, in order.

        All payloads are encoded first; if any fails, none is queued.
        """
        ...

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        """Receive up to ``max_messages`` ready messages, leased for ``lease`` seconds.

        Returns at once (an empty list when nothing is ready). Each returned message has its
        ``attempts`` already counted for this delivery.
        """
        ...

    def ack(self, message: Message) -> bool:
        """The message is done: remove it. False if the lease had expired and it was re-leased."""
        ...

    def ack_many(self, messages: Sequence[Message]) -> int:
        """Ack several messages in one commit; returns how many were still held."""
        ...

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        """Give the message back: deliverable again after ``delay`` seconds."""
        ...

    def extend_lease(self, message: Message, lease: float) -> bool:
        """Keep holding the message for ``lease`` more seconds from now. False if lost."""
        ...

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        """Move the message to the dead-letter queue with why (``reason``) and what (``error``)."""
        ...

    def stats(self, topic: str) -> QueueStats:
        """Ready, delayed, in-flight and dead counts for ``topic``."""
        ...

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        """The next messages on ``topic`` without leasing them (for inspection)."""
        ...

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """The dead-letter queue of ``topic``, oldest first."""
        ...

    def requeue(self, topic: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those in ``ids``) back on the queue with attempts reset."""
        ...

    def purge_dead(self, topic: str) -> int:
        """Delete the dead-letter queue of ``topic``; returns how many were deleted."""
        ...

    def close(self) -> None:
        """Release connections. Further calls may fail."""
        ...


@runtime_checkable
class AsyncBroker(Protocol):
    """The async twin: same contract, ``a``-prefixed, awaitable."""

    async def apublish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str: ...

    async def apublish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]: ...

    async def aclaim(
        self, topic: str, *, max_messages: int = 1, lease: float = 30.0
    ) -> list[Message]: ...

    async def aack(self, message: Message) -> bool: ...

    async def aack_many(self, messages: Sequence[Message]) -> int: ...

    async def anack(self, message: Message, delay: float = 0.0) -> bool: ...

    async def aextend_lease(self, message: Message, lease: float) -> bool: ...

    async def adead_letter(
        self, message: Message, reason: str, error: str | None = None
    ) -> None: ...

    async def astats(self, topic: str) -> QueueStats: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Broker(SyncBroker, AsyncBroker, Protocol):
    """A broker: the sync and the async contract together. Every stoic broker is one."""


@runtime_checkable
class Waking(Protocol):
    """A broker that can tell an idle consumer that something was published (PostgreSQL's
    LISTEN/NOTIFY). The ``Worker`` calls ``wait`` instead of sleeping when a claim found
    nothing, so it reacts to a publish at once instead of at its next poll."""

    def wait(self, topic: str, timeout: float) -> bool:
        """Block until a publish on ``topic`` or ``timeout`` seconds; True when woken."""
        ...


@runtime_checkable
class AckAndClaim(Protocol):
    """A broker that acks what a consumer finished and claims its next messages in one call:
    one round trip instead of two (PostgreSQL). The ``Worker`` uses it between batches when
    it can; each ack is as durable when the call returns as ``ack_many``'s."""

    def ack_and_claim(
        self, done: Sequence[Message], topic: str, *, max_messages: int = 1,
        lease: float = 30.0,
    ) -> tuple[int, list[Message]]:
        """Ack ``done`` (as ``ack_many``), then claim (as ``claim``): how many of ``done``
        were acked, and the claimed messages. Either both happen or neither does."""
        ...


class ThreadedAsync:
    """Async twins that run the sync methods in a thread (``asyncio.to_thread``).

    For brokers whose client is synchronous and thread-safe (SQLite behind a lock, memory,
    redis-py's pooled client): the event loop never blocks on their I/O.
    """

    async def apublish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(
            sync.publish, topic, payload, id=id, headers=headers, delay=delay
        )

    async def apublish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        sync: SyncBroker = self  # type: ignore[assignment]
        items = list(payloads)
        return await asyncio.to_thread(
            sync.publish_many, topic, items, ids=ids, headers=headers, delay=delay
        )

    async def aclaim(
        self, topic: str, *, max_messages: int = 1, lease: float = 30.0
    ) -> list[Message]:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(
            sync.claim, topic, max_messages=max_messages, lease=lease
        )

    async def aack(self, message: Message) -> bool:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(sync.ack, message)

    async def aack_many(self, messages: Sequence[Message]) -> int:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(sync.ack_many, list(messages))

    async def anack(self, message: Message, delay: float = 0.0) -> bool:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(sync.nack, message, delay)

    async def aextend_lease(self, message: Message, lease: float) -> bool:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(sync.extend_lease, message, lease)

    async def adead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        sync: SyncBroker = self  # type: ignore[assignment]
        await asyncio.to_thread(sync.dead_letter, message, reason, error)

    async def astats(self, topic: str) -> QueueStats:
        sync: SyncBroker = self  # type: ignore[assignment]
        return await asyncio.to_thread(sync.stats, topic)

    async def aclose(self) -> None:
        sync: SyncBroker = self  # type: ignore[assignment]
        await asyncio.to_thread(sync.close)


class PublishOne:
    """``publish`` and ``apublish`` as a batch of one, for brokers whose ``publish_many``
    costs no more than a single publish (one script call, one confirm round)."""

    def publish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        sync: SyncBroker = self  # type: ignore[assignment]
        return sync.publish_many(
            topic, [payload], ids=None if id is None else [id], headers=headers, delay=delay
        )[0]

    async def apublish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        broker: AsyncBroker = self  # type: ignore[assignment]
        return (await broker.apublish_many(
            topic, [payload], ids=None if id is None else [id], headers=headers, delay=delay
        ))[0]


class PreparedPublish:
    """``publish_many`` for brokers that write a checked, encoded batch in one step.

    The batch is checked and encoded by ``prepare`` (nothing is written when that fails);
    the broker writes it in ``_write``, the one part that differs between brokers.
    """

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        msg_ids, bodies, head, delay = prepare(topic, payloads, ids, headers, delay)
        if msg_ids:
            self._write(topic, msg_ids, bodies, head, delay)
        return msg_ids

    def _write(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float,
    ) -> None:
        raise NotImplementedError


class BatchBroker(PreparedPublish, PublishOne, ThreadedAsync):
    """A broker whose one write (``_write``) serves ``publish`` and ``publish_many`` alike,
    with the async twins run in a thread."""


def prepare(
    topic: str, payloads: Iterable[Any], ids: Sequence[str] | None,
    headers: Mapping[str, str] | None, delay: float,
) -> tuple[list[str], list[str], dict[str, str], float]:
    """Check and encode a ``publish_many`` before anything is written.

    Returns ``(ids, bodies, headers, delay)``: the caller's ids or fresh ones, the encoded
    payloads, the outgoing headers (request id and trace context added) and the delay as a
    float. A bad argument raises ``ValueError`` and an unencodable payload ``CodecError``, so
    a broker that calls this first never writes half a batch.
    """
    check_topic(topic)
    delay = check_delay(delay)
    bodies = [encode_payload(p) for p in payloads]
    return message_ids(ids, len(bodies)), bodies, outgoing_headers(headers), delay


def prepare_one(
    topic: str, payload: Any, id: str | None, headers: Mapping[str, str] | None, delay: float,
) -> tuple[str, str, dict[str, str], float]:
    """``prepare`` for a single payload, without building lists (``publish``'s hot path)."""
    check_topic(topic)
    delay = check_delay(delay)
    body = encode_payload(payload)
    msg_id = new_id() if id is None else message_ids([id], 1)[0]
    return msg_id, body, outgoing_headers(headers), delay


def check_topic(topic: str) -> str:
    """Topics are non-empty strings without control characters (they become table keys,
    stream names and queue names)."""
    if topic in _valid_topics:
        return topic
    if not isinstance(topic, str) or not topic or any(ord(c) < 32 for c in topic):
        raise ValueError(f"topic must be a non-empty printable string, got {topic!r}")
    if len(_valid_topics) < 10_000:
        _valid_topics.add(topic)
    return topic


_valid_topics: set[str] = set()  # a cache of checked names, so publishing skips the scan


def check_int(name: str, value: int, minimum: int = 1) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``; ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_claim(max_messages: int, lease: float) -> None:
    """Validate ``claim`` arguments the same way for every broker."""
    check_int("max_messages", max_messages)
    if not lease > 0:
        raise ValueError(f"lease must be > 0 seconds, got {lease!r}")


def check_delay(delay: float) -> float:
    """Delays are seconds >= 0."""
    if not delay >= 0:
        raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
    return float(delay)

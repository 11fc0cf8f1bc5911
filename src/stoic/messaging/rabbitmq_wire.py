"""What ``RabbitBroker`` keeps and reads on the wire: delay buckets, headers, deliveries.

AMQP deliveries become ``Message`` and ``DeadLetter`` here; a held delivery (``Held``) and
a topic's push consumer (``Consumer``) are the broker's bookkeeping. aio-pika is not
imported: these read what it hands over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .. import clock
from .model import DeadLetter, Message

__all__ = [
    "IDLE",
    "STOIC_HEADERS",
    "Consumer",
    "Held",
    "browse",
    "bucket",
    "carry",
    "count",
    "from_server",
    "to_message",
]

_BUCKETS_MS = (100, 250, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 120_000, 300_000,
               600_000, 1_800_000, 3_600_000)
#: headers stoic writes (attempts, times, the dead letter's reason): never user headers
STOIC_HEADERS = ("x-stoic-attempts", "x-stoic-created", "x-stoic-reason", "x-stoic-error",
                 "x-stoic-dead-at")

# set by RabbitMQ itself (redelivery count, dead-letter history): never user headers
_SERVER_HEADERS = frozenset({"x-delivery-count", "x-death", "x-last-death-queue",
                             "x-last-death-reason", "x-last-death-exchange"})

IDLE = 2.0  # seconds without a claim after which a topic's consumer lets its buffer go


def from_server(name: str) -> bool:
    """A header RabbitMQ set (redelivery count, dead-letter history)."""
    return name in _SERVER_HEADERS or name.startswith("x-first-death")


def bucket(delay: float) -> int:
    """The delay queue's TTL (ms) for ``delay`` seconds: the next bucket up."""
    ms = int(delay * 1000 + 0.999)
    for b in _BUCKETS_MS:
        if ms <= b:
            return b
    hour = 3_600_000
    return -(-ms // hour) * hour


class Held:
    """A claimed delivery, until it is acked, given back or its lease runs out."""

    __slots__ = ("incoming", "lease_until", "topic")

    def __init__(self, incoming: Any, topic: str, lease_until: float) -> None:
        self.incoming, self.topic, self.lease_until = incoming, topic, lease_until


class Consumer:
    """A basic.consume on its own channel whose deliveries wait in ``buffer`` until claimed.

    RabbitMQ pushes up to ``prefetch`` unacked deliveries to it; they are invisible to other
    consumers while buffered (and redelivered at once if this process dies). A consumer that
    nobody claimed from for ``IDLE`` seconds is cancelled and its buffer given back, so a
    stopped worker does not sit on messages.
    """

    __slots__ = ("buffer", "channel", "last_claim", "queue", "tag")

    def __init__(self, channel: Any, queue: Any, tag: str, buffer: deque[Any]) -> None:
        self.channel, self.queue, self.tag, self.buffer = channel, queue, tag, buffer
        self.last_claim = clock.now()


async def count(channel: Any, name: str) -> int:
    """Messages ready in queue ``name`` (0 when it does not exist)."""
    try:
        q = await channel.declare_queue(name, passive=True)
    except Exception:
        return 0
    return int(q.declaration_result.message_count or 0)


async def browse(conn: Any, queue_name: str, topic: str, limit: int) -> list[DeadLetter]:
    """Read up to ``limit`` messages of a queue on a channel of their own, then give them
    all back (closing the channel), in order."""
    ch = await conn.channel()
    out = []
    try:
        queue = await ch.declare_queue(queue_name, passive=True)
        before = int(queue.declaration_result.message_count or 0)
        for _ in range(limit):
            incoming = await queue.get(no_ack=False, fail=False)
            if incoming is None:
                break
            h = incoming.headers or {}
            m = to_message(topic, incoming, "", 0.0, dead=True)
            out.append(DeadLetter(
                message=m, reason=_text(h.get("x-stoic-reason")),
                error=_text(h.get("x-stoic-error")) or None,
                dead_at=_float(h.get("x-stoic-dead-at")),
            ))
    finally:
        await ch.close()  # everything read goes back to the queue, in order
    if out:
        await _counted_again(conn, queue_name, before)
    return out


async def _counted_again(conn: Any, queue_name: str, before: int, within: float = 1.0) -> None:
    """Wait (at most ``within`` seconds) until a browsed queue counts what it held before.

    Closing the browsing channel gives its messages back, but a quorum queue applies the
    return after answering the close, so a ``stats`` right after a browse could miss
    them. Other consumers taking messages meanwhile can keep the count lower: hence the
    bound.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    ch = await conn.channel()
    try:
        while await count(ch, queue_name) < before and loop.time() < until:
            await asyncio.sleep(0.005)
    finally:
        await ch.close()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _float(value: Any) -> float:
    try:
        return float(_text(value))
    except ValueError:
        return 0.0


def _attempts_before(incoming: Any, dead: bool = False) -> int:
    h = incoming.headers or {}
    try:
        base = int(_text(h.get("x-stoic-attempts")) or 0)
    except ValueError:
        base = 0
    if dead:
        return base
    returned = h.get("x-delivery-count")
    if returned is not None:
        try:
            return base + int(returned)
        except (TypeError, ValueError):
            pass
    return base + (1 if incoming.redelivered else 0)


def carry(incoming: Any, attempts: int) -> dict[str, Any]:
    """Headers for a republished copy: the user's headers plus the attempts so far."""
    h = {k: v for k, v in (incoming.headers or {}).items() if not from_server(k)}
    h["x-stoic-attempts"] = str(attempts)
    return h


def to_message(
    topic: str, incoming: Any, receipt: str, available_at: float, *, dead: bool = False
) -> Message:
    raw = incoming.headers or {}
    headers: dict[str, str] = {}
    defect = None
    for k, v in raw.items():
        if k.startswith("x-stoic-") or from_server(k):
            continue
        if isinstance(v, (str, bytes)):
            headers[k] = _text(v)
        else:
            defect = defect or f"header {k!r} is not a string"
    try:
        body = incoming.body.decode("utf-8")
    except UnicodeDecodeError:
        body = ""
        defect = defect or "body is not UTF-8"
    if incoming.message_id is None:
        defect = defect or "message has no message_id"
    before = _attempts_before(incoming, dead)
    return Message(
        id=str(incoming.message_id or ""), topic=topic, body=body, headers=headers,
        attempts=before if dead else before + 1, created_at=_float(raw.get("x-stoic-created")),
        available_at=available_at, receipt=receipt, defect=defect,
    )

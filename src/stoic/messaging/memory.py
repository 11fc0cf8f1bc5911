"""An in-process broker with the full contract: leases, delays, de-duplication, a DLQ.

For tests and single-process tools. It is a real implementation, not a mock: the conformance
suite runs against it exactly as against SQLite, Redis and RabbitMQ. Nothing survives the
process, so it offers no durability; use ``SQLiteBroker`` for that.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .. import clock
from .broker import (
    BatchBroker,
    check_claim,
    check_delay,
    check_topic,
)
from .model import DeadLetter, Message, QueueStats, report_requeued

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Entry:
    seq: int
    id: str
    body: str
    headers: dict[str, str]
    attempts: int
    created_at: float
    available_at: float
    receipt: str | None = None


class _Topic:
    __slots__ = ("dead", "entries", "recovered", "seen")

    def __init__(self) -> None:
        self.recovered = 0  # deliveries that took a message back from an expired lease
        self.entries: dict[str, _Entry] = {}
        self.seen: dict[str, float] = {}  # id -> when it was first published
        self.dead: dict[str, DeadLetter] = {}


class MemoryBroker(BatchBroker):
    """Broker in a dict behind a lock. ``memory://`` in ``connect``.

    Args:
        dedupe_window: seconds during which publishing an id again is a no-op (default a day).
    """

    def __init__(self, *, dedupe_window: float = 86400.0) -> None:
        if not dedupe_window >= 0:
            raise ValueError(f"dedupe_window must be >= 0 seconds, got {dedupe_window!r}")
        self.dedupe_window = float(dedupe_window)
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"MemoryBroker(topics={sorted(self._topics)!r})"

    def _topic(self, topic: str) -> _Topic:
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[check_topic(topic)] = _Topic()
        return t

    # --- publishing ----------------------------------------------------------------------

    def _write(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float,
    ) -> None:
        now = clock.wall()
        with self._lock:
            t = self._topic(topic)
            horizon = now - self.dedupe_window
            for msg_id, body in zip(msg_ids, bodies, strict=True):
                first = t.seen.get(msg_id)
                if first is not None and first >= horizon:
                    continue
                t.seen[msg_id] = now
                t.entries[msg_id] = _Entry(
                    next(self._seq), msg_id, body, dict(head), 0, now, now + delay
                )
            if len(t.seen) > 4 * len(t.entries) + 1024:
                t.seen = {k: v for k, v in t.seen.items() if v >= horizon}

    # --- consuming -----------------------------------------------------------------------

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        check_claim(max_messages, lease)
        now = clock.wall()
        with self._lock:
            t = self._topic(topic)
            ready = heapq.nsmallest(
                max_messages, (e for e in t.entries.values() if e.available_at <= now),
                key=_order,
            )
            out = []
            for e in ready:
                if e.receipt is not None:  # leased, and the lease ran out: stalled work
                    t.recovered += 1
                e.attempts += 1
                e.receipt = uuid.uuid4().hex
                e.available_at = now + lease
                out.append(_message(topic, e))
        return out

    def _held(self, t: _Topic, message: Message) -> _Entry | None:
        e = t.entries.get(message.id)
        if e is None or e.receipt is None or e.receipt != message.receipt:
            return None
        return e

    def ack(self, message: Message) -> bool:
        return self.ack_many([message]) == 1

    def ack_many(self, messages: Sequence[Message]) -> int:
        done = 0
        with self._lock:
            for m in messages:
                t = self._topic(m.topic)
                if self._held(t, m) is not None:
                    del t.entries[m.id]
                    done += 1
        return done

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        delay = check_delay(delay)
        with self._lock:
            e = self._held(self._topic(message.topic), message)
            if e is None:
                return False
            e.receipt = None
            e.available_at = clock.wall() + delay
            return True

    def extend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        with self._lock:
            e = self._held(self._topic(message.topic), message)
            if e is None:
                return False
            e.available_at = clock.wall() + lease
            return True

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        with self._lock:
            t = self._topic(message.topic)
            e = self._held(t, message)
            if e is None:
                return
            del t.entries[message.id]
            e.receipt = None
            t.dead[message.id] = DeadLetter(
                message=_message(message.topic, e), reason=reason, error=error,
                dead_at=clock.wall(),
            )

    # --- inspection and the DLQ ----------------------------------------------------------

    def stats(self, topic: str) -> QueueStats:
        now = clock.wall()
        with self._lock:
            t = self._topic(topic)
            ready = delayed = in_flight = 0
            for e in t.entries.values():
                if e.available_at <= now:
                    ready += 1
                elif e.receipt is not None:
                    in_flight += 1
                else:
                    delayed += 1
            return QueueStats(topic, ready, delayed, in_flight, len(t.dead),
                              recovered=t.recovered)

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        with self._lock:
            t = self._topic(topic)
            entries = heapq.nsmallest(limit, t.entries.values(), key=_order)
            return [_message(topic, e) for e in entries]

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(self._topic(topic).dead.values())[:limit]

    def requeue(self, topic: str, ids: Sequence[str] | None = None) -> int:
        now = clock.wall()
        with self._lock:
            t = self._topic(topic)
            chosen = list(t.dead) if ids is None else [i for i in ids if i in t.dead]
            for msg_id in chosen:
                m = t.dead.pop(msg_id).message
                t.entries[msg_id] = _Entry(
                    next(self._seq), msg_id, m.body, dict(m.headers), 0, m.created_at, now
                )
        return report_requeued(self, topic, len(chosen))

    def purge_dead(self, topic: str) -> int:
        with self._lock:
            t = self._topic(topic)
            n = len(t.dead)
            t.dead.clear()
            return n

    def close(self) -> None:
        """Nothing to release; the messages stay until the broker is garbage-collected."""


def _order(e: _Entry) -> tuple[float, int]:
    """Delivery order: earliest available first, then publish order."""
    return e.available_at, e.seq


def _message(topic: str, e: _Entry) -> Message:
    return Message(
        id=e.id, topic=topic, body=e.body, headers=dict(e.headers), attempts=e.attempts,
        created_at=e.created_at, available_at=e.available_at, receipt=e.receipt or "",
    )


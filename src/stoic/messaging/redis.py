"""A broker on Redis Streams, for queues shared by several machines (``stoic[redis]``).

Layout, per topic (every key carries the hash tag ``{topic}``, so one topic lives in one
cluster slot and every script touches only that slot):

- ``stoic:{topic}:stream``: the stream; consumer group ``stoic`` delivers new entries
  (XREADGROUP) and tracks them as pending until acked (XACK). An acked entry is deleted
  (XDEL), or, when the ack leaves nothing pending, trimmed (XTRIM MINID) together with every
  entry up to the last one delivered, which are all acked by then.
- ``stoic:{topic}:leases``: a sorted set of the receipts of pending entries (``<entry
  id>|<token>``, a fresh token per claim) scored by lease end. A claim first takes over
  entries whose lease ended (XCLAIM to itself, so a crashed consumer's messages come back),
  then reads new ones. Redis's own idle time cannot express a lease chosen per claim and
  extended per message, so the deadline is kept here explicitly. An ack, nack or extension
  whose receipt is no longer in the set (the entry was taken over) does nothing. Delivery
  counts are the stream's own (XPENDING).
- ``stoic:{topic}:delayed``: a sorted set of messages waiting for a publish delay or a retry
  backoff, moved into the stream by the next claim once due.
- ``stoic:{topic}:dead``: the dead-letter stream (fields plus reason, error, time).
- ``stoic:{topic}:seen:<id>``: one key per published id, expiring after the de-duplication
  window, so republishing an id is a no-op.

Every operation is one Lua script, so each is atomic on the server: two consumers can never
take over the same expired lease, and a message is never both acked and re-queued. Messages
are JSON text in stream fields; nothing is ever unpickled or evaluated.

Deadlines: a broker made from a ``redis://`` URL reads every reply through
``stoic.integrations.redis.DeadlineConnection``, so under ``stoic.deadline`` no operation
waits past the time left (``stoic.DeadlineExceeded``, the connection dropped). A script is
atomic, so it ran entirely or not at all, but when the deadline ends the wait for its reply
the caller cannot tell which: a publish may be retried with the same id (de-duplicated), and
a claim whose reply was lost leaves its messages leased until the lease ends. A ``client``
you pass in is used as it is.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync everysec`` (a common setup)
a server crash can lose the last second of writes; configure Redis accordingly.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from .. import clock
from . import redis_scripts as lua
from .broker import (
    BatchBroker,
    check_claim,
    check_delay,
    check_topic,
    require,
)
from .model import DeadLetter, Message, QueueStats, decode_headers, dump_headers, report_requeued

__all__ = ["RedisBroker", "open_client"]


class RedisBroker(BatchBroker):
    """At-least-once queues on Redis Streams; ``redis://host:port/db`` in ``connect``.

    Args:
        url: the Redis URL (``redis://``, ``rediss://``, ``unix://``).
        dedupe_window: seconds during which an id already published is not queued again
            (default a day; 0 turns de-duplication off and saves a key per message).
        prefix: key prefix (default ``"stoic"``), to share a Redis between applications.
        client: an existing ``redis.Redis`` client (created with ``decode_responses=True``)
            instead of ``url``.
    """

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", *, dedupe_window: float = 86400.0,
        prefix: str = "stoic", client: Any = None,
    ) -> None:
        if client is None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
        if not dedupe_window >= 0:
            raise ValueError(f"dedupe_window must be >= 0 seconds, got {dedupe_window!r}")
        client = open_client(url, client, prefix, "RedisBroker")
        self.url = url
        self.dedupe_window = float(dedupe_window)
        self.prefix = prefix
        self._r = client
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._groups: set[str] = set()
        self._groups_lock = threading.Lock()
        self._publish = client.register_script(lua.PUBLISH)
        self._claim = client.register_script(lua.CLAIM)
        self._ack = client.register_script(lua.ACK)
        self._nack = client.register_script(lua.NACK)
        self._dead = client.register_script(lua.DEAD)
        self._extend = client.register_script(lua.EXTEND)
        self._requeue = client.register_script(lua.REQUEUE)

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r}, prefix={self.prefix!r})"

    def _k(self, topic: str, part: str) -> str:
        return f"{self.prefix}:{{{topic}}}:{part}"

    def _stream(self, topic: str) -> str:
        """The stream key, with the consumer group created on first use."""
        key = self._k(topic, "stream")
        if topic not in self._groups:
            check_topic(topic)
            with self._groups_lock:
                try:
                    self._r.xgroup_create(key, lua.GROUP, id="0", mkstream=True)
                except Exception as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._groups.add(topic)
        return key

    # --- publishing ----------------------------------------------------------------------

    def _write(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float,
    ) -> None:
        stream = self._stream(topic)
        raw_headers = dump_headers(head) if head else ""
        now = clock.wall()
        at = repr(now + delay) if delay > 0 else "0"
        data = "\x1e".join(map("\x1f".join, zip(msg_ids, bodies, strict=True)))
        messages = [data]
        if data.count("\x1e") != len(bodies) - 1:  # a body holds the separator: send unframed
            messages = ["", *itertools.chain.from_iterable(zip(msg_ids, bodies, strict=True))]
        self._publish(
            keys=[stream, self._k(topic, "delayed")],
            args=[self._k(topic, "seen:"), int(self.dedupe_window * 1000), repr(now),
                  raw_headers, at, *messages],
        )

    # --- consuming -----------------------------------------------------------------------

    def _keys(self, topic: str, *parts: str) -> list[str]:
        return [self._stream(topic), *(self._k(topic, p) for p in parts)]

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        check_claim(max_messages, lease)
        token = uuid.uuid4().hex[:16]
        now = clock.wall()
        until = now + lease
        reply = self._claim(
            keys=self._keys(topic, "leases", "delayed", "recovered"),
            args=[lua.GROUP, self._consumer, repr(now), repr(until), max_messages, token],
        )
        out = []
        for row in reply.split("\x1d") if reply else ():
            head, sep, body = row.partition("\x1e")
            eid, tries, meta = head.split("\x1f", 2)
            out.append(_message(topic, eid, meta, body if sep else None, int(tries), token, until))
        return out

    def ack(self, message: Message) -> bool:
        return self.ack_many([message]) == 1

    def ack_many(self, messages: Sequence[Message]) -> int:
        by_topic: dict[str, list[str]] = {}
        for m in messages:
            _key(m)  # a receipt from another broker raises here, before anything is acked
            by_topic.setdefault(m.topic, []).append(m.receipt)
        done = 0
        for topic, receipts in by_topic.items():
            receipts.sort()  # the lease set's order, so ZREM finds each at a small set's head
            done += int(self._ack(keys=self._keys(topic, "leases"),
                                  args=[lua.GROUP, "\n".join(receipts)]))
        return done

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        delay = check_delay(delay)
        eid = _key(message)
        now = clock.wall()
        at = repr(now + delay) if delay > 0 else "0"
        return bool(self._nack(
            keys=self._keys(message.topic, "leases", "delayed"),
            args=[lua.GROUP, eid, message.receipt, at, repr(now)],
        ))

    def extend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        _key(message)
        return bool(self._extend(
            keys=self._keys(message.topic, "leases"),
            args=[message.receipt, repr(clock.wall() + lease)],
        ))

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        eid = _key(message)
        self._dead(
            keys=self._keys(message.topic, "leases", "dead"),
            args=[lua.GROUP, eid, message.receipt, reason, error if error is not None else "",
                  repr(clock.wall())],
        )

    # --- inspection and the DLQ ----------------------------------------------------------

    def stats(self, topic: str) -> QueueStats:
        now = clock.wall()
        stream = self._stream(topic)
        pipe = self._r.pipeline(transaction=True)
        pipe.xlen(stream)
        pipe.zcount(self._k(topic, "leases"), f"({now!r}", "+inf")
        pipe.zcard(self._k(topic, "delayed"))
        pipe.xlen(self._k(topic, "dead"))
        pipe.get(self._k(topic, "recovered"))
        length, in_flight, delayed, dead, recovered = pipe.execute()
        return QueueStats(topic, max(0, length - in_flight), delayed, in_flight, dead,
                          recovered=int(recovered or 0))

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        entries = self._r.xrange(self._stream(topic), count=limit)
        return [_message(topic, eid, f.get("m", ""), f.get("b"), 0, "", 0.0)
                for eid, f in entries]

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        out = []
        for eid, fields in self._r.xrange(self._k(topic, "dead"), count=limit):
            f = dict(fields)
            message = _message(topic, eid, f.get("m", ""), f.get("b"), 0, "", 0.0)
            out.append(DeadLetter(
                message=message, reason=f.get("r", ""), error=f.get("e") or None,
                dead_at=_float(f.get("t")),
            ))
        return out

    def requeue(self, topic: str, ids: Sequence[str] | None = None) -> int:
        dead_key = self._k(topic, "dead")
        entry_ids: list[str] = []
        if ids is not None:
            wanted = set(ids)
            entry_ids = [eid for eid, f in self._r.xrange(dead_key)
                         if f.get("m", "").split("\x1f", 1)[0] in wanted]
            if not entry_ids:
                return 0
        n = int(self._requeue(keys=[self._stream(topic), dead_key], args=entry_ids))
        return report_requeued(self, topic, n)

    def purge_dead(self, topic: str) -> int:
        dead_key = self._k(topic, "dead")
        pipe = self._r.pipeline(transaction=True)
        pipe.xlen(dead_key)
        pipe.delete(dead_key)
        n, _ = pipe.execute()
        return int(n)

    def delete_topic(self, topic: str) -> None:
        """Remove every key of ``topic`` except the de-duplication marks (for tests, tools)."""
        parts = ("stream", "leases", "delayed", "dead", "recovered")
        self._r.delete(*(self._k(topic, p) for p in parts))
        self._groups.discard(topic)

    def close(self) -> None:
        self._r.close()


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _key(message: Message) -> str:
    """The stream entry id of a receipt ("<entry id>|<token>", the lease's member)."""
    eid, sep, _ = message.receipt.partition("|")
    if not sep or "\n" in message.receipt:
        raise ValueError(f"not a receipt from RedisBroker.claim: {message.receipt!r}")
    return eid


def _message(
    topic: str, eid: str, meta: str, body: str | None, tries: int, token: str,
    available_at: float,
) -> Message:
    parts = meta.split("\x1f", 3)
    defect = None
    if len(parts) != 4:
        defect = "stream entry lacks readable metadata"
        parts = [eid, "0", "0", ""]
    elif body is None:
        defect = "stream entry lacks its body, or it holds a raw \\x1d that a claim cannot carry"
    msg_id, created, before, raw_headers = parts
    headers, header_defect = decode_headers(raw_headers)
    defect = defect or header_defect
    try:
        attempts = int(before) + int(tries)
    except ValueError:
        attempts = int(tries)
        defect = defect or "stream entry has a non-numeric attempts field"
    return Message(
        id=msg_id or eid, topic=topic, body=body or "", headers=headers, attempts=attempts,
        created_at=_float(created), available_at=available_at,
        receipt=f"{eid}|{token}" if token else "", defect=defect,
    )


def open_client(url: str, client: Any, prefix: str, who: str) -> Any:
    """``client``, or a redis-py client for ``url`` (text replies); checks the key
    ``prefix`` (braces would break the hash tags that keep a topic's keys on one slot)."""
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
    if client is not None:
        return client
    redis = require("redis", who, "redis")
    options: dict[str, Any] = {}
    if url.startswith("redis://"):  # TCP: no reply is waited for past the caller's deadline
        from ..integrations.redis import DeadlineConnection

        options["connection_class"] = DeadlineConnection
    return redis.Redis.from_url(url, decode_responses=True, **options)

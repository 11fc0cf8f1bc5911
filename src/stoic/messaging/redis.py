"""A broker on Redis Streams, for queues shared by several machines (``stoic[redis]``).

Layout, per topic (every key carries the hash tag ``{topic}``, so one topic lives in one
cluster slot and every script touches only that slot):

- ``stoic:{topic}:stream``: the stream; consumer group ``stoic`` delivers new entries
  (XREADGROUP) and tracks them as pending until acked (XACK, then XDEL).
- ``stoic:{topic}:leases``: a sorted set of pending entry ids scored by lease end. A claim
  first takes over entries whose lease ended (XCLAIM to itself, so a crashed consumer's
  messages come back), then reads new ones. Redis's own idle time cannot express a lease
  chosen per claim and extended per message, so the deadline is kept here explicitly.
- ``stoic:{topic}:owner`` / ``:tries``: the receipt token and the delivery count of each
  pending entry; an ack or nack with a token that no longer owns the entry does nothing.
- ``stoic:{topic}:delayed``: a sorted set of messages waiting for a publish delay or a retry
  backoff, moved into the stream by the next claim once due.
- ``stoic:{topic}:dead``: the dead-letter stream (fields plus reason, error, time).
- ``stoic:{topic}:seen:<id>``: one key per published id, expiring after the de-duplication
  window, so republishing an id is a no-op.

Every operation is one Lua script, so each is atomic on the server: two consumers can never
take over the same expired lease, and a message is never both acked and re-queued. Messages
are JSON text in stream fields; nothing is ever unpickled or evaluated.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync everysec`` (a common setup)
a server crash can lose the last second of writes; configure Redis accordingly.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import clock
from .broker import ThreadedAsync, check_claim, check_delay, check_topic
from .model import (
    DeadLetter,
    Message,
    QueueStats,
    decode_headers,
    dump_headers,
    encode_payload,
    message_ids,
    outgoing_headers,
)

__all__ = ["RedisBroker"]

_GROUP = "stoic"

_PUBLISH = """
local window = tonumber(ARGV[2])
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local fresh = true
  if window > 0 then
    fresh = redis.call('SET', ARGV[1] .. id, '1', 'NX', 'PX', window)
  end
  if fresh then
    local at = tonumber(ARGV[i + 3])
    if at > 0 then
      redis.call('ZADD', KEYS[2], at, cjson.encode({id, ARGV[i + 1], ARGV[i + 2], ARGV[3], 0}))
    else
      redis.call('XADD', KEYS[1], '*', 'id', id, 'b', ARGV[i + 1], 'h', ARGV[i + 2],
                 'c', ARGV[3], 'a', '0')
    end
  end
end
return 1
"""

# KEYS: stream, leases, delayed, owner, tries. ARGV: group, consumer, now, until, n, token
_CLAIM = """
local now = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(due) do
  local ok, d = pcall(cjson.decode, m)
  if ok and type(d) == 'table' then
    redis.call('XADD', KEYS[1], '*', 'id', tostring(d[1]), 'b', tostring(d[2]),
               'h', tostring(d[3]), 'c', tostring(d[4]), 'a', tostring(d[5]))
  end
  redis.call('ZREM', KEYS[3], m)
end
local out = {}
local n = tonumber(ARGV[5])
local function take(eid, fields)
  redis.call('ZADD', KEYS[2], ARGV[4], eid)
  redis.call('HSET', KEYS[4], eid, ARGV[6])
  local tries = redis.call('HINCRBY', KEYS[5], eid, 1)
  out[#out + 1] = {eid, fields, tries}
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
for _, eid in ipairs(expired) do
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, eid)
  if #got > 0 and got[1] and got[1][2] then
    take(eid, got[1][2])
  else
    redis.call('ZREM', KEYS[2], eid)
    redis.call('HDEL', KEYS[4], eid)
    redis.call('HDEL', KEYS[5], eid)
  end
end
if #out < n then
  local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n - #out,
                         'STREAMS', KEYS[1], '>')
  if res then
    for _, e in ipairs(res[1][2]) do
      take(e[1], e[2])
    end
  end
end
return out
"""

# KEYS: stream, leases, owner, tries. ARGV: group, then (eid, token) pairs
_ACK = """
local done = 0
for i = 2, #ARGV, 2 do
  local eid = ARGV[i]
  if redis.call('HGET', KEYS[3], eid) == ARGV[i + 1] then
    redis.call('XACK', KEYS[1], ARGV[1], eid)
    redis.call('XDEL', KEYS[1], eid)
    redis.call('ZREM', KEYS[2], eid)
    redis.call('HDEL', KEYS[3], eid)
    redis.call('HDEL', KEYS[4], eid)
    done = done + 1
  end
end
return done
"""

_TAKE_BACK = """
local function fields_of(eid)
  local e = redis.call('XRANGE', KEYS[1], eid, eid)
  local f = {}
  if #e > 0 then
    local flat = e[1][2]
    for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  end
  local tries = tonumber(redis.call('HGET', KEYS[4], eid) or '0')
  redis.call('XACK', KEYS[1], ARGV[1], eid)
  redis.call('XDEL', KEYS[1], eid)
  redis.call('ZREM', KEYS[2], eid)
  redis.call('HDEL', KEYS[3], eid)
  redis.call('HDEL', KEYS[4], eid)
  return f, (tonumber(f['a'] or '0') or 0) + tries, #e > 0
end
"""

# KEYS: stream, leases, owner, tries, delayed. ARGV: group, eid, token, at, now
_NACK = _TAKE_BACK + """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[3] then return 0 end
local f, a, found = fields_of(ARGV[2])
if not found then return 0 end
if tonumber(ARGV[4]) > tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[5], ARGV[4],
             cjson.encode({f['id'] or ARGV[2], f['b'] or '', f['h'] or '', f['c'] or ARGV[5], a}))
else
  redis.call('XADD', KEYS[1], '*', 'id', f['id'] or ARGV[2], 'b', f['b'] or '',
             'h', f['h'] or '', 'c', f['c'] or ARGV[5], 'a', tostring(a))
end
return 1
"""

# KEYS: stream, leases, owner, tries, dead. ARGV: group, eid, token, reason, error, now
_DEAD = _TAKE_BACK + """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[3] then return 0 end
local f, a, found = fields_of(ARGV[2])
redis.call('XADD', KEYS[5], '*', 'id', f['id'] or ARGV[2], 'b', f['b'] or '',
           'h', f['h'] or '', 'c', f['c'] or ARGV[6], 'a', tostring(a),
           'r', ARGV[4], 'e', ARGV[5], 't', ARGV[6])
return 1
"""

# KEYS: leases, owner. ARGV: eid, token, until
_EXTEND = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""

# KEYS: stream, dead. ARGV: dead entry ids to requeue (all when none given)
_REQUEUE = """
local entries
if #ARGV == 0 then
  entries = redis.call('XRANGE', KEYS[2], '-', '+')
else
  entries = {}
  for _, eid in ipairs(ARGV) do
    local e = redis.call('XRANGE', KEYS[2], eid, eid)
    if #e > 0 then entries[#entries + 1] = e[1] end
  end
end
for _, e in ipairs(entries) do
  local f = {}
  local flat = e[2]
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  redis.call('XADD', KEYS[1], '*', 'id', f['id'] or e[1], 'b', f['b'] or '', 'h', f['h'] or '',
             'c', f['c'] or '0', 'a', '0')
  redis.call('XDEL', KEYS[2], e[1])
end
return #entries
"""


class RedisBroker(ThreadedAsync):
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
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
        if client is None:
            try:
                import redis
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError("RedisBroker needs redis: pip install 'stoic[redis]'") from exc
            client = redis.Redis.from_url(url, decode_responses=True)
        self.url = url
        self.dedupe_window = float(dedupe_window)
        self.prefix = prefix
        self._r = client
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._groups: set[str] = set()
        self._groups_lock = threading.Lock()
        self._publish = client.register_script(_PUBLISH)
        self._claim = client.register_script(_CLAIM)
        self._ack = client.register_script(_ACK)
        self._nack = client.register_script(_NACK)
        self._dead = client.register_script(_DEAD)
        self._extend = client.register_script(_EXTEND)
        self._requeue = client.register_script(_REQUEUE)

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
                    self._r.xgroup_create(key, _GROUP, id="0", mkstream=True)
                except Exception as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._groups.add(topic)
        return key

    # --- publishing ----------------------------------------------------------------------

    def publish(
        self, topic: str, payload: Any, *, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> str:
        return self.publish_many(
            topic, [payload], ids=None if id is None else [id], headers=headers, delay=delay
        )[0]

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        delay = check_delay(delay)
        stream = self._stream(topic)
        bodies = [encode_payload(p) for p in payloads]
        msg_ids = message_ids(ids, len(bodies))
        head = outgoing_headers(headers)
        raw_headers = dump_headers(head) if head else ""
        now = clock.wall()
        at = repr(now + delay) if delay > 0 else "0"
        args: list[Any] = [self._k(topic, "seen:"), int(self.dedupe_window * 1000), repr(now)]
        for msg_id, body in zip(msg_ids, bodies, strict=True):
            args += (msg_id, body, raw_headers, at)
        self._publish(keys=[stream, self._k(topic, "delayed")], args=args)
        return msg_ids

    # --- consuming -----------------------------------------------------------------------

    def _keys(self, topic: str, *parts: str) -> list[str]:
        return [self._stream(topic), *(self._k(topic, p) for p in parts)]

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        check_claim(max_messages, lease)
        token = uuid.uuid4().hex[:16]
        now = clock.wall()
        until = now + lease
        rows = self._claim(
            keys=self._keys(topic, "leases", "delayed", "owner", "tries"),
            args=[_GROUP, self._consumer, repr(now), repr(until), max_messages, token],
        )
        return [_message(topic, eid, fields, tries, token, until) for eid, fields, tries in rows]

    def ack(self, message: Message) -> bool:
        return self.ack_many([message]) == 1

    def ack_many(self, messages: Sequence[Message]) -> int:
        by_topic: dict[str, list[str]] = {}
        for m in messages:
            eid, token = _key(m)
            by_topic.setdefault(m.topic, []).extend((eid, token))
        done = 0
        for topic, pairs in by_topic.items():
            done += int(self._ack(keys=self._keys(topic, "leases", "owner", "tries"),
                                  args=[_GROUP, *pairs]))
        return done

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        delay = check_delay(delay)
        eid, token = _key(message)
        now = clock.wall()
        at = repr(now + delay) if delay > 0 else "0"
        return bool(self._nack(
            keys=self._keys(message.topic, "leases", "owner", "tries", "delayed"),
            args=[_GROUP, eid, token, at, repr(now)],
        ))

    def extend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        eid, token = _key(message)
        return bool(self._extend(
            keys=[self._k(message.topic, "leases"), self._k(message.topic, "owner")],
            args=[eid, token, repr(clock.wall() + lease)],
        ))

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        eid, token = _key(message)
        self._dead(
            keys=self._keys(message.topic, "leases", "owner", "tries", "dead"),
            args=[_GROUP, eid, token, reason, error if error is not None else "",
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
        length, in_flight, delayed, dead = pipe.execute()
        return QueueStats(topic, max(0, length - in_flight), delayed, in_flight, dead)

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        entries = self._r.xrange(self._stream(topic), count=limit)
        return [_message(topic, eid, fields, 0, "", 0.0) for eid, fields in entries]

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        out = []
        for eid, fields in self._r.xrange(self._k(topic, "dead"), count=limit):
            f = dict(fields)
            message = _message(topic, eid, f, 0, "", 0.0)
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
            entry_ids = [eid for eid, f in self._r.xrange(dead_key) if f.get("id") in wanted]
            if not entry_ids:
                return 0
        return int(self._requeue(keys=[self._stream(topic), dead_key], args=entry_ids))

    def purge_dead(self, topic: str) -> int:
        dead_key = self._k(topic, "dead")
        pipe = self._r.pipeline(transaction=True)
        pipe.xlen(dead_key)
        pipe.delete(dead_key)
        n, _ = pipe.execute()
        return int(n)

    def delete_topic(self, topic: str) -> None:
        """Remove every key of ``topic`` except the de-duplication marks (for tests, tools)."""
        parts = ("stream", "leases", "delayed", "owner", "tries", "dead")
        self._r.delete(*(self._k(topic, p) for p in parts))
        self._groups.discard(topic)

    def close(self) -> None:
        self._r.close()


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _key(message: Message) -> tuple[str, str]:
    eid, sep, token = message.receipt.partition("|")
    if not sep:
        raise ValueError(f"not a receipt from RedisBroker.claim: {message.receipt!r}")
    return eid, token


def _message(
    topic: str, eid: str, fields: Any, tries: int, token: str, available_at: float
) -> Message:
    f = dict(zip(fields[::2], fields[1::2], strict=False)) if isinstance(fields, list) else fields
    defect = None
    headers, header_defect = decode_headers(f.get("h"))
    body = f.get("b")
    if body is None or "id" not in f:
        defect = "stream entry lacks its id or body field"
        body = body or ""
    defect = defect or header_defect
    try:
        before = int(f.get("a", "0"))
    except ValueError:
        before = 0
        defect = defect or "stream entry has a non-numeric attempts field"
    return Message(
        id=str(f.get("id", eid)), topic=topic, body=body, headers=headers,
        attempts=before + int(tries), created_at=_float(f.get("c")), available_at=available_at,
        receipt=f"{eid}|{token}" if token else "", defect=defect,
    )

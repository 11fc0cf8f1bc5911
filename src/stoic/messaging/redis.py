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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import clock
from .broker import PublishOne, ThreadedAsync, check_claim, check_delay, check_topic, prepare
from .model import DeadLetter, Message, QueueStats, decode_headers, dump_headers, report_requeued

__all__ = ["RedisBroker", "open_client"]

_GROUP = "stoic"

# Lua's unpack() stops near 8,000 values, so long argument lists go to a command in slices.
# (A claim that failed there after XREADGROUP would leave its entries pending without
# leases, never to be taken over.)
_CHUNKED = """
local function chunked(list, call)
  local out = {}
  for i = 1, #list, 1000 do
    local got = call(unpack(list, i, math.min(i + 999, #list)))
    if type(got) == 'table' then
      for _, v in ipairs(got) do out[#out + 1] = v end
    end
  end
  return out
end
"""

# A stream entry has two fields: "m", the metadata "<id>\x1f<created>\x1f<attempts before this
# entry>\x1f<headers JSON>", and "b", the body. Two fields instead of five halve what a claim
# returns and parses. JSON text never holds a raw control character, and ids may not.
_META = """
local function split(m)
  local id, c, a, h = string.match(m or '', '^([^\\31]*)\\31([^\\31]*)\\31([^\\31]*)\\31(.*)$')
  return id, c, a, h
end
local function meta(id, c, a, h)
  return id .. '\\31' .. c .. '\\31' .. a .. '\\31' .. h
end
"""

# KEYS: stream, delayed. ARGV: seen-prefix, window ms, now, headers, at, and the messages as
# one argument, "<id>\\31<body>" each, joined by \\30 (one argument is cheaper for the client
# to send than two per message; ids and JSON text hold no control characters). A batch with
# a body that does hold \\30 (an ``Encoded`` text that is not JSON, such as a damaged outbox
# row) comes instead as an empty ARGV[6] followed by id, body, id, body...: it is queued
# whole, and the consumer dead-letters what it cannot decode.
_PUBLISH = """
local window, at = tonumber(ARGV[2]), tonumber(ARGV[5])
local tail = '\\31' .. ARGV[3] .. '\\31' .. '0' .. '\\31' .. ARGV[4]
local function add(id, body)
  if window <= 0 or redis.call('SET', ARGV[1] .. id, '1', 'NX', 'PX', window) then
    if at > 0 then
      redis.call('ZADD', KEYS[2], at, id .. tail .. '\\30' .. body)
    else
      redis.call('XADD', KEYS[1], '*', 'm', id .. tail, 'b', body)
    end
  end
end
local data = ARGV[6]
if data == '' then
  for i = 7, #ARGV, 2 do add(ARGV[i], ARGV[i + 1]) end
  return 1
end
local pos, size = 1, #data
while pos <= size do
  local cut = string.find(data, '\\31', pos, true)
  local stop = string.find(data, '\\30', cut, true) or size + 1
  add(string.sub(data, pos, cut - 1), string.sub(data, cut + 1, stop - 1))
  pos = stop + 1
end
return 1
"""

# A pending entry's lease is a member "<entry id>|<token>" of the leases set (the receipt a
# claim hands out), scored by lease end: an ack, nack or extension with a receipt that is no
# longer a member does nothing. Its delivery count is the stream's own (XPENDING).
_LEASED = _META + """
local function deliveries(eid)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], eid, eid, 1)
  if #p > 0 then return tonumber(p[1][4]) or 1 end
  return 1
end
"""

# KEYS: stream, leases, delayed, recovered. ARGV: group, consumer, now, until, n, token
_CLAIM = _LEASED + _CHUNKED + """
local now = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(due) do
  local cut = string.find(m, '\\30', 1, true)
  if cut then
    redis.call('XADD', KEYS[1], '*', 'm', string.sub(m, 1, cut - 1), 'b', string.sub(m, cut + 1))
  end
  redis.call('ZREM', KEYS[3], m)
end
local out, receipts = {}, {}
local n, token = tonumber(ARGV[5]), ARGV[6]
-- The reply is one string: a record per message, "<eid>\\31<tries>\\31<meta>\\30<body>" (no
-- \\30 when the body is missing), records separated by \\29. One string is far cheaper for
-- the client to read than XREADGROUP's nested reply or a string per message. Stored fields
-- hold neither separator (meta is control-character free, bodies are JSON text) unless an
-- entry was written by hand or its body is an ``Encoded`` text that is not JSON: such a
-- record goes without the field that cannot be framed (without both, if it is the meta),
-- which the client reports as a defect. The stream entry itself is untouched, so a dead
-- letter keeps what was stored.
local function emit(eid, flat, tries)
  local m, b = '', false
  if flat[1] == 'm' and flat[3] == 'b' then
    m, b = flat[2], flat[4]
  else
    for i = 1, #flat, 2 do
      if flat[i] == 'm' then m = flat[i + 1] elseif flat[i] == 'b' then b = flat[i + 1] end
    end
  end
  local record
  if string.find(m, '\\30', 1, true) or string.find(m, '\\29', 1, true) then
    record = eid .. '\\31' .. tries .. '\\31'
  elseif b and not string.find(b, '\\29', 1, true) then
    record = eid .. '\\31' .. tries .. '\\31' .. m .. '\\30' .. b
  else
    record = eid .. '\\31' .. tries .. '\\31' .. m
  end
  out[#out + 1] = record
  receipts[#receipts + 1] = eid .. '|' .. token
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
for _, lease in ipairs(expired) do
  redis.call('ZREM', KEYS[2], lease)
  local cut = string.find(lease, '|', 1, true)
  local eid = lease
  if cut then eid = string.sub(lease, 1, cut - 1) end
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, eid)
  if #got > 0 and got[1] and got[1][2] then
    emit(eid, got[1][2], deliveries(eid))
    redis.call('INCR', KEYS[4])  -- stalled work that came back: stats().recovered
  end
end
if #out < n then
  local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n - #out,
                         'STREAMS', KEYS[1], '>')
  if res then
    for _, e in ipairs(res[1][2]) do emit(e[1], e[2], 1) end
  end
end
if #receipts > 0 then
  -- A small sorted set is a listpack that ZADD scans from its head for every member, and the
  -- new leases share one score: added in descending order each stops at the one added
  -- before it, where ascending order would walk the whole batch each time (O(n^2)).
  table.sort(receipts)
  local zargs = {}
  for i = #receipts, 1, -1 do
    zargs[#zargs + 1] = ARGV[4]; zargs[#zargs + 1] = receipts[i]
  end
  chunked(zargs, function(...) return redis.call('ZADD', KEYS[2], ...) end)
end
return table.concat(out, '\\29')
"""

# KEYS: stream, leases. ARGV: group, receipts "<eid>|<token>" joined by newlines (one
# argument is cheaper for the client to send than one per receipt)
# Which receipts are still held takes one read of the lease set, never a command per receipt
# (every command pays a key lookup, dear in a keyspace full of de-duplication marks). A set
# not much larger than the batch (the usual case) is read whole: in a small set, a listpack,
# ZMSCORE scans from the head for every receipt, O(n^2) for a batch.
_ACK = _CHUNKED + """
local receipts = {}
for r in string.gmatch(ARGV[2], '[^\\n]+') do receipts[#receipts + 1] = r end
local held = {}
if redis.call('ZCARD', KEYS[2]) <= 2 * #receipts then
  for _, r in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do held[r] = true end
else
  local scores = chunked(receipts, function(...) return redis.call('ZMSCORE', KEYS[2], ...) end)
  for i = 1, #receipts do if scores[i] then held[receipts[i]] = true end end
end
local eids, leases = {}, {}
for _, r in ipairs(receipts) do
  if held[r] then
    held[r] = nil
    eids[#eids + 1] = string.sub(r, 1, string.find(r, '|', 1, true) - 1)
    leases[#leases + 1] = r
  end
end
if #eids == 0 then return 0 end
chunked(leases, function(...) return redis.call('ZREM', KEYS[2], ...) end)
chunked(eids, function(...) return redis.call('XACK', KEYS[1], ARGV[1], ...) end)
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1) > 0 then
  chunked(eids, function(...) return redis.call('XDEL', KEYS[1], ...) end)
  return #eids
end
-- Nothing is pending, so every entry up to the last one delivered has been acked (delivery
-- is in id order, and new entries get higher ids): one trim removes them all, where XDEL
-- would look up each id.
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then
    redis.call('XTRIM', KEYS[1], 'MINID', f['last-delivered-id'])
    redis.call('XDEL', KEYS[1], f['last-delivered-id'])
  end
end
return #eids
"""

_TAKE_BACK = _LEASED + """
local function take_back(eid, receipt)
  local tries = deliveries(eid)
  local e = redis.call('XRANGE', KEYS[1], eid, eid)
  local f = {}
  if #e > 0 then
    local flat = e[1][2]
    for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  end
  redis.call('XACK', KEYS[1], ARGV[1], eid)
  redis.call('XDEL', KEYS[1], eid)
  redis.call('ZREM', KEYS[2], receipt)
  local id, c, a, h = split(f['m'])
  if not id then id, c, a, h = eid, '0', '0', '' end
  local attempts = (tonumber(a) or 0) + tries
  return meta(id, c, tostring(attempts), h), f['b'] or '', #e > 0
end
"""

# KEYS: stream, leases, delayed. ARGV: group, eid, receipt, at, now
_NACK = _TAKE_BACK + """
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end
local m, b, found = take_back(ARGV[2], ARGV[3])
if not found then return 0 end
if tonumber(ARGV[4]) > tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[3], ARGV[4], m .. '\\30' .. b)
else
  redis.call('XADD', KEYS[1], '*', 'm', m, 'b', b)
end
return 1
"""

# KEYS: stream, leases, dead. ARGV: group, eid, receipt, reason, error, now
_DEAD = _TAKE_BACK + """
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end
local m, b, found = take_back(ARGV[2], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'm', m, 'b', b, 'r', ARGV[4], 'e', ARGV[5], 't', ARGV[6])
return 1
"""

# KEYS: stream, leases. ARGV: receipt, until
_EXTEND = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: stream, dead. ARGV: dead entry ids to requeue (all when none given)
_REQUEUE = _META + """
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
  local id, c, a, h = split(f['m'])
  if not id then id, c, h = e[1], '0', '' end
  redis.call('XADD', KEYS[1], '*', 'm', meta(id, c, '0', h), 'b', f['b'] or '')
  redis.call('XDEL', KEYS[2], e[1])
end
return #entries
"""


class RedisBroker(PublishOne, ThreadedAsync):
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

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        msg_ids, bodies, head, delay = prepare(topic, payloads, ids, headers, delay)
        stream = self._stream(topic)
        raw_headers = dump_headers(head) if head else ""
        now = clock.wall()
        at = repr(now + delay) if delay > 0 else "0"
        if not bodies:
            return msg_ids
        data = "\x1e".join(map("\x1f".join, zip(msg_ids, bodies, strict=True)))
        messages = [data]
        if data.count("\x1e") != len(bodies) - 1:  # a body holds the separator: send unframed
            messages = ["", *itertools.chain.from_iterable(zip(msg_ids, bodies, strict=True))]
        self._publish(
            keys=[stream, self._k(topic, "delayed")],
            args=[self._k(topic, "seen:"), int(self.dedupe_window * 1000), repr(now),
                  raw_headers, at, *messages],
        )
        return msg_ids

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
            args=[_GROUP, self._consumer, repr(now), repr(until), max_messages, token],
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
                                  args=[_GROUP, "\n".join(receipts)]))
        return done

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        delay = check_delay(delay)
        eid = _key(message)
        now = clock.wall()
        at = repr(now + delay) if delay > 0 else "0"
        return bool(self._nack(
            keys=self._keys(message.topic, "leases", "delayed"),
            args=[_GROUP, eid, message.receipt, at, repr(now)],
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
            args=[_GROUP, eid, message.receipt, reason, error if error is not None else "",
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
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{who} needs redis: pip install 'stoic[redis]'") from exc
    options: dict[str, Any] = {}
    if url.startswith("redis://"):  # TCP: no reply is waited for past the caller's deadline
        from ..integrations.redis import DeadlineConnection

        options["connection_class"] = DeadlineConnection
    return redis.Redis.from_url(url, decode_responses=True, **options)

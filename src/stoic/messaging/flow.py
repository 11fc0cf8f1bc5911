"""Flow control shared by every worker of a topic: priorities, fairness across keys, a
concurrency limit per key, one global rate, and schedules that fire once per period.

Why it lives beside the brokers and not in them: the same rules must hold on SQLite,
PostgreSQL, Redis, RabbitMQ and NATS, and most of them can neither order by priority nor
count what other consumers hold. So the rules are built from what every broker does:

- **Sub-topics.** ``FlowControl.publish(broker, topic, payload, key=..., priority=...)``
  puts the message on the sub-topic ``<topic>:<priority>:<key>`` and records that
  sub-topic in a registry (a Redis sorted set). A ``Worker(flow=...)`` claims one message
  at a time from the sub-topics in turn: priority levels by *smooth weighted round robin*
  (weights 4:2:1 for three levels, so a flood of high-priority work still leaves low
  priority one turn in seven: never starved), and within a level the keys (tenants) in
  round robin, so a tenant that publishes 100x more gets one turn like every other. The
  plain ``topic`` is always in the rotation too, at the default level.
- **Per-key concurrency** (``key_limit``): before claiming from a key's sub-topic the
  worker takes a permit from a Redis semaphore for that key (a sorted set of permits that
  expire with the lease and are renewed by the worker's heartbeat). A key at its limit is
  skipped, so a message never has to be taken and put back (which would count a delivery).
- **Global rate** (``rate`` per ``per`` seconds): GCRA in Redis with the *server's* clock.
  After claiming a message the worker reserves the next free slot (slots ``per / rate``
  apart, no burst) and starts the handler at that slot, so the starts of all workers
  together follow the rate however many workers there are.
- **Schedules**: ``schedule(topic, name, payload, every=seconds)`` or ``cron="*/5 * * * *"``
  (five fields, UTC) is stored in Redis; every worker looks at the schedules once a second
  and the first to mark a period (an atomic compare-and-set) publishes its message, with
  the id ``schedule:<name>:<period>`` so even a broker-side duplicate is dropped. Periods
  that passed while no worker ran are not fired late. ``publish(..., at=epoch seconds)``
  schedules one message (a delay until then).

A registered sub-topic is removed when a claim finds it empty *and* its counts are all
zero *and* no publish re-registered it since (the registry entry's generation is compared
atomically), so a retry waiting for its backoff is never orphaned.

Needs Redis (``stoic[redis]``) for the shared state; the broker can be any stoic broker.
"""

from __future__ import annotations

import calendar
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import clock
from .broker import Broker, check_topic
from .model import Message
from .redis import open_client

__all__ = ["Cron", "FlowControl", "Permit", "subtopic", "utc"]

_SEP = ":"  # allowed in every broker's names (RabbitMQ queues take [A-Za-z0-9-_.:])
_FIRE_EVERY = 1.0  # seconds between two looks at the schedules, per worker

_REGISTER = """
local g = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], g, ARGV[1])
return g
"""
_UNREGISTER = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
# the server's clock, in seconds: every worker reads the same one
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_RESERVE = _NOW + """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now)
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval),
           'PX', math.ceil((slot + interval - now) * 1000) + 1000)
return string.format('%.6f', slot - now)
"""
_ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 60000)
  return 1
end
return 0
"""
_EXTEND = _NOW + """
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
"""
_FIRE = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > last then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


def subtopic(topic: str, key: str = "", priority: int | None = None, *, default: int = 1) -> str:
    """The broker topic that holds ``topic``'s messages of ``key`` at ``priority``.

    The plain topic for the default priority without a key, so ordinary publishers and
    flow-controlled workers meet on it.
    """
    level = default if priority is None else priority
    if not key and level == default:
        return topic
    return f"{topic}{_SEP}{level}{_SEP}{key}"


@dataclass(frozen=True, slots=True)
class Permit:
    """A place in a key's concurrency limit, held while its message is handled."""

    key: str
    redis_key: str
    id: str


class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week), in UTC.

    Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` or ``a-b/n`` and lists
    ``a,b``; day of week 0-6 from Sunday (7 is Sunday too). As in cron, when both day
    fields are restricted a day matching either one matches.
    """

    __slots__ = ("expr", "fields", "restricted")

    _RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))

    def __init__(self, expr: str) -> None:
        parts = expr.split() if isinstance(expr, str) else []
        if len(parts) != 5:
            raise ValueError(f"cron must have 5 fields (m h dom mon dow), got {expr!r}")
        self.expr = expr
        self.fields = tuple(
            _cron_field(part, low, high, expr) for part, (low, high) in zip(
                parts, self._RANGES, strict=True)
        )
        if 7 in self.fields[4]:
            self.fields = (*self.fields[:4], self.fields[4] | {0})
        self.restricted = (parts[2] != "*", parts[4] != "*")

    def matches(self, epoch: float) -> bool:
        """Whether the minute holding ``epoch`` (UTC) is one of the expression's."""
        t = time.gmtime(epoch)
        minute, hour, dom, month, dow = self.fields
        if t.tm_min not in minute or t.tm_hour not in hour or t.tm_mon not in month:
            return False
        day_ok, week_ok = t.tm_mday in dom, (t.tm_wday + 1) % 7 in dow
        if all(self.restricted):
            return day_ok or week_ok
        return day_ok and week_ok

    def latest(self, now: float, within: float = 8 * 86400.0) -> float | None:
        """Start (epoch seconds) of the latest matching minute at or before ``now``, looking
        back at most ``within`` seconds; None when none matched."""
        minute = int(now // 60) * 60
        for i in range(int(within // 60) + 1):
            if self.matches(minute - 60 * i):
                return float(minute - 60 * i)
        return None

    def __repr__(self) -> str:
        return f"Cron({self.expr!r})"


def _cron_field(part: str, low: int, high: int, expr: str) -> frozenset[int]:
    values: set[int] = set()
    for item in part.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = low, high
            elif "-" in span:
                a, b = span.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = int(span)
                end = high if step_text else start
        except ValueError:
            raise ValueError(f"cron field {part!r} is not valid in {expr!r}") from None
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"cron field {part!r} is out of range {low}-{high} in {expr!r}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


class FlowControl:
    """Shared flow-control rules for the workers of a topic; see the module docstring.

    Args:
        url: the Redis holding the shared state (``redis://host:6379/0``).
        rate, per: at most ``rate`` handler starts per ``per`` seconds across all workers of
            a topic (None: no rate limit).
        key_limit: at most this many messages of one key handled at once across all workers
            (None: no limit).
        levels: priority levels, 0 the highest (default 3: 0 high, 1 normal, 2 low).
        weights: turns per round of each level (default ``2 ** (levels - 1 - level)``:
            4, 2, 1).
        default_priority: the level of messages published without one (default 1).
        prefix: prefix of the Redis keys.
        client: a redis-py client to use instead of ``url``.
    """

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", *, rate: float | None = None,
        per: float = 1.0, key_limit: int | None = None, levels: int = 3,
        weights: Sequence[int] | None = None, default_priority: int = 1,
        prefix: str = "stoic-flow", client: Any = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 or None, got {rate!r}")
        if not per > 0:
            raise ValueError(f"per must be > 0 seconds, got {per!r}")
        if key_limit is not None and (isinstance(key_limit, bool) or not isinstance(
                key_limit, int) or key_limit < 1):
            raise ValueError(f"key_limit must be an int >= 1 or None, got {key_limit!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 10:
            raise ValueError(f"levels must be an int from 1 to 10, got {levels!r}")
        if weights is None:
            weights = [2 ** (levels - 1 - level) for level in range(levels)]
        weights = list(weights)
        if len(weights) != levels or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in weights
        ):
            raise ValueError(f"weights must be {levels} ints >= 1, got {weights!r}")
        if default_priority not in range(levels):
            raise ValueError(
                f"default_priority must be a level from 0 to {levels - 1}, got "
                f"{default_priority!r}"
            )
        client = open_client(url, client, prefix, "FlowControl")
        self.rate, self.per = (None if rate is None else float(rate)), float(per)
        self.key_limit = key_limit
        self.levels, self.weights = levels, tuple(weights)
        self.default_priority = default_priority
        self.prefix = prefix
        self._redis = client
        self._register = client.register_script(_REGISTER)
        self._unregister = client.register_script(_UNREGISTER)
        self._reserve = client.register_script(_RESERVE)
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND)
        self._fire = client.register_script(_FIRE)
        self._lock = threading.Lock()
        self._current = [0] * levels  # smooth weighted round robin state
        self._last: dict[int, str] = {}  # per level, the key served last
        self._next_fire: dict[str, float] = {}

    def __repr__(self) -> str:
        return (f"FlowControl(rate={self.rate}, per={self.per}, key_limit={self.key_limit}, "
                f"levels={self.levels})")

    def _k(self, topic: str, what: str) -> str:
        return f"{self.prefix}:{{{topic}}}:{what}"

    def _check_priority(self, priority: int | None) -> int:
        level = self.default_priority if priority is None else priority
        if isinstance(level, bool) or level not in range(self.levels):
            raise ValueError(f"priority must be a level from 0 to {self.levels - 1}, got "
                             f"{priority!r}")
        return level

    # --- publishing ----------------------------------------------------------------------

    def publish(
        self, broker: Broker, topic: str, payload: Any, *, key: str = "",
        priority: int | None = None, id: str | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
        at: float | None = None,
    ) -> str:
        """Publish ``payload`` for ``key`` at ``priority`` (0 highest); ``at`` (epoch
        seconds, wall clock) holds it back until then. Returns the message id."""
        check_topic(topic)
        level = self._check_priority(priority)
        if not isinstance(key, str) or _SEP in key or any(ord(c) < 32 for c in key):
            raise ValueError(f"key must be a printable string without {_SEP!r}, got {key!r}")
        if at is not None:
            delay = max(0.0, float(at) - clock.wall())
        sub = subtopic(topic, key, level, default=self.default_priority)
        msg_id = broker.publish(sub, payload, id=id, headers=headers, delay=delay)
        if sub != topic:  # after the publish: a worker that saw it empty re-finds it
            self._register(keys=[self._k(topic, "subs"), self._k(topic, "gen")],
                           args=[f"{level}{_SEP}{key}"])
        return msg_id

    def schedule(
        self, topic: str, name: str, payload: Any, *, every: float | None = None,
        cron: str | None = None, key: str = "", priority: int | None = None,
    ) -> None:
        """Store a periodic message: fired once per period (``every`` seconds, aligned to
        the epoch, or each minute ``cron`` matches) by whichever worker sees it first."""
        check_topic(topic)
        self._check_priority(priority)
        if (every is None) == (cron is None):
            raise ValueError("schedule needs exactly one of every= or cron=")
        if every is not None and not every >= 1:
            raise ValueError(f"every must be >= 1 second, got {every!r}")
        if cron is not None:
            Cron(cron)
        from .model import encode_payload

        spec = {"every": every, "cron": cron, "body": encode_payload(payload), "key": key,
                "priority": priority}
        self._redis.hset(self._k(topic, "schedules"), name, json.dumps(spec))

    def unschedule(self, topic: str, name: str) -> bool:
        """Remove a schedule; True if it existed."""
        return bool(self._redis.hdel(self._k(topic, "schedules"), name))

    def fire_due(self, broker: Broker, topic: str, now: float | None = None) -> int:
        """Publish the messages of the schedules whose current period has not fired yet
        (by any worker); returns how many this call published."""
        from .model import Encoded

        now = clock.wall() if now is None else now
        fired = 0
        for name, raw in self._redis.hgetall(self._k(topic, "schedules")).items():
            spec = json.loads(raw)
            if spec.get("cron"):
                period = Cron(spec["cron"]).latest(now)
                if period is None:
                    continue
            else:
                every = float(spec["every"])
                period = (now // every) * every
            mark = f"{period:.0f}"
            if not self._fire(keys=[self._k(topic, "fired")], args=[name, mark]):
                continue
            try:
                self.publish(broker, topic, Encoded(spec["body"]), key=spec.get("key") or "",
                             priority=spec.get("priority"), id=f"schedule:{name}:{mark}")
            except Exception:
                self._redis.hdel(self._k(topic, "fired"), name)  # another worker tries
                raise
            fired += 1
        return fired

    # --- the worker's side ---------------------------------------------------------------

    def claim(self, broker: Broker, topic: str, lease: float) -> tuple[Message, Permit | None] | None:
        """One message of ``topic`` chosen by the rules, with its key's permit, once its
        rate slot has come; None when nothing is claimable now."""
        now = clock.now()
        if now >= self._next_fire.get(topic, 0.0):
            self._next_fire[topic] = now + _FIRE_EVERY
            self.fire_due(broker, topic)
        members = self._redis.zrange(self._k(topic, "subs"), 0, -1, withscores=True)
        for level, key, score in self._order(topic, members):
            permit = self._permit(topic, key, lease) if key and self.key_limit else None
            if key and self.key_limit and permit is None:
                continue  # this key is at its limit: the others go first
            sub = subtopic(topic, key, level, default=self.default_priority)
            got = broker.claim(sub, max_messages=1, lease=lease)
            if got:
                self._served(level, key)
                self._wait_for_slot(topic)
                return got[0], permit
            if permit is not None:
                self.release(permit)
            if score is not None:
                self._forget(broker, topic, sub, level, key, score)
        return None

    def _order(
        self, topic: str, members: list[tuple[str, float]]
    ) -> list[tuple[int, str, float | None]]:
        """Sub-topics in the order to try: the level smooth weighted round robin picks, then
        the other levels by priority; within each, the keys after the one served last."""
        by_level: dict[int, list[tuple[str, float | None]]] = {}
        for member, score in members:
            level_text, _, key = member.partition(_SEP)
            by_level.setdefault(int(level_text), []).append((key, score))
        base = by_level.setdefault(self.default_priority, [])
        if not any(k == "" for k, _ in base):
            base.append(("", None))  # the plain topic is always in the rotation
        present = sorted(level for level in by_level if level < self.levels)
        with self._lock:
            total = sum(self.weights[level] for level in present)
            for level in present:
                self._current[level] += self.weights[level]
            chosen = max(present, key=lambda level: (self._current[level], -level))
            self._current[chosen] -= total
            last = dict(self._last)
        out: list[tuple[int, str, float | None]] = []
        for level in [chosen, *(lv for lv in present if lv != chosen)]:
            keys = sorted(by_level[level], key=lambda item: item[0])
            after = last.get(level)  # round robin: start after the key served last
            start = next((i for i, (k, _) in enumerate(keys) if after is None or k > after), 0)
            out += [(level, k, s) for k, s in keys[start:] + keys[:start]]
        return out

    def _served(self, level: int, key: str) -> None:
        with self._lock:
            self._last[level] = key

    def _permit(self, topic: str, key: str, lease: float) -> Permit | None:
        permit = Permit(key, self._k(topic, f"running:{key}"), uuid.uuid4().hex)
        if self._acquire(keys=[permit.redis_key], args=[self.key_limit, permit.id, lease]):
            return permit
        return None

    def release(self, permit: Permit) -> None:
        """Give a key's place back (the message was handled, retried or dead-lettered)."""
        self._redis.zrem(permit.redis_key, permit.id)

    def extend(self, permit: Permit, lease: float) -> None:
        """Keep a key's place for ``lease`` more seconds (the worker's heartbeat)."""
        self._extend(keys=[permit.redis_key], args=[permit.id, lease])

    def _wait_for_slot(self, topic: str) -> None:
        if self.rate is None:
            return
        wait = float(self._reserve(keys=[self._k(topic, "tat")], args=[self.per / self.rate]))
        if wait > 0:
            clock.sleep(wait)

    def _forget(
        self, broker: Broker, topic: str, sub: str, level: int, key: str, score: float
    ) -> None:
        stats = broker.stats(sub)
        if stats.ready or stats.delayed or stats.in_flight:
            return
        self._unregister(keys=[self._k(topic, "subs")], args=[f"{level}{_SEP}{key}",
                                                               f"{score:.0f}"])

    def pending(self, topic: str) -> bool:
        """Whether any sub-topic of ``topic`` is registered (it may hold messages)."""
        return bool(self._redis.zcard(self._k(topic, "subs")))

    def clear(self, topic: str) -> None:
        """Delete every piece of shared state of ``topic`` (registry, rate, schedules)."""
        pattern = self._k(topic, "*")
        for name in self._redis.scan_iter(match=pattern.replace("{", "\\{").replace("}", "\\}")):
            self._redis.delete(name)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a UTC time (for ``at=`` and tests of cron schedules)."""
    return float(calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0)))

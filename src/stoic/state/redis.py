"""RedisState: breakers and rate limits shared by every process of a fleet, through Redis.

Breakers. Each process keeps its own window and decides to open on its own evidence (a
window in Redis would cost a round trip on every call). What it shares is the verdict:

* an open is written as ``<prefix>:breaker:<name>:open`` with the open period as its expiry
  (Redis ``PX``, so clocks of different machines never matter) and announced on the channel
  ``<prefix>:breaker:events``. Every process runs one listener thread subscribed to it and
  opens its breaker of that name at once, for the time left. **Bound:** pub/sub delivers in
  about a millisecond on a LAN; a process that missed the message (it started later, or its
  subscription was reconnecting) finds the key on its next refresh, every ``poll`` seconds
  (1 s by default). So every process rejects within ``poll`` seconds of the open at worst.
* when the open period ends, the first call in each process asks for the trial lease
  (``SET <prefix>:breaker:<name>:trial NX PX trial_lease``). One process in the fleet gets
  it and runs the half-open trials; the others stay open and ask again a second later. The
  holder's verdict is published like an open (re-open) or as a close, which every process
  follows. A holder that dies loses the lease after ``trial_lease`` seconds.

Publishing happens on a background thread, so a transition never waits for Redis. The only
round trip on a call's path is the lease request, once per open period per process (made
off the event loop in async code).

Rate limits. ``take`` runs one Lua script (GCRA, with Redis's own clock): one round trip per
call, atomic across processes.

Failure. Every Redis operation has a short ``timeout``. When one fails, RedisState emits
``StateStoreDegraded`` once, and runs on local state: breakers decide alone and grant their
own trials, rate limits are enforced per process (so the fleet may admit up to N times the
rate while Redis is away). It tries Redis again every ``retry_interval`` seconds and emits
``StateStoreRecovered`` when it answers. A user's call never fails because Redis did.

Nothing is pickled: keys hold plain strings and messages are JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import threading
import uuid
import weakref
from typing import Any

from .. import clock
from .._validate import non_empty, seconds
from ..events import dispatcher
from .base import BreakerLink, StateStoreDegraded, StateStoreRecovered
from .memory import MemoryState

__all__ = ["RedisState"]

_log = logging.getLogger("stoic")

# GCRA in milliseconds on the server's clock. KEYS[1]: the limit; ARGV: interval, burst, max_wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local wait = tat - (burst - 1) * interval - now
if wait > max_wait + 0.000001 then
  return {0, string.format('%.3f', wait)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
if wait < 0 then wait = 0 end
return {1, string.format('%.3f', wait)}
"""

# Delete a lease only if we hold it. KEYS[1]: the lease; ARGV[1]: our instance id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_STOP = ("stop", "", 0.0)


class RedisState:
    """Share breaker opens, half-open trials and rate limits through Redis (``stoic[redis]``).

    Args:
        url: the Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
        prefix: namespace of every key and channel, so two services never collide.
        timeout: seconds any Redis operation may take before stoic gives up on it (> 0).
        poll: seconds between the listener's refreshes of open keys; the worst-case delay
            before a process follows an open whose message it missed (> 0).
        retry_interval: seconds between attempts to reach Redis again after a failure.
        trial_lease: seconds one process may hold the half-open trial before another may
            take it (it is released as soon as the trials decide).
    """

    shared = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "stoic",
        *,
        timeout: float = 0.25,
        poll: float = 1.0,
        retry_interval: float = 1.0,
        trial_lease: float = 10.0,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"url must be a redis:// URL, got {url!r}")
        non_empty("prefix", prefix)
        for parameter, value in (
            ("timeout", timeout), ("poll", poll), ("retry_interval", retry_interval),
            ("trial_lease", trial_lease),
        ):
            seconds(parameter, value)
        self.url = url
        self.prefix = prefix
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.retry_interval = float(retry_interval)
        self.trial_lease = float(trial_lease)
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._channel = f"{prefix}:breaker:events"
        self._lock = threading.Lock()
        self._breakers: dict[str, BreakerLink] = {}
        self._local = MemoryState()
        self._sync: Any = None
        self._scripts: Any = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._outbox: queue.SimpleQueue[tuple[str, str, float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"RedisState({self.url!r}, prefix={self.prefix!r})"

    @property
    def degraded(self) -> bool:
        """True while Redis is failing and policies run on local state."""
        return self._down_since is not None

    # --- keys -----------------------------------------------------------------------------

    def _open_key(self, name: str) -> str:
        return f"{self.prefix}:breaker:{name}:open"

    def _trial_key(self, name: str) -> str:
        return f"{self.prefix}:breaker:{name}:trial"

    def _limit_key(self, name: str) -> str:
        return f"{self.prefix}:ratelimit:{name}"

    # --- health ---------------------------------------------------------------------------

    def _available(self) -> bool:
        """Whether to try Redis now: always when healthy, once per retry_interval when not."""
        if self._down_since is None:
            return True
        with self._lock:
            now = clock.now()
            if now < self._retry_at:
                return False
            self._retry_at = now + self.retry_interval  # one probe per interval, not a stampede
            return True

    def _failed(self, operation: str, exc: BaseException) -> None:
        with self._lock:
            now = clock.now()
            self._retry_at = now + self.retry_interval
            first = self._down_since is None
            if first:
                self._down_since = now
        if first:
            _log.warning(
                "stoic: Redis state store failed (%s: %s); running on local state",
                operation, exc,
            )
            if dispatcher.sinks:
                dispatcher.emit(
                    StateStoreDegraded(
                        name=self.prefix, operation=operation,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )

    def _ok(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            down_for = clock.now() - since
            _log.warning("stoic: Redis state store is back after %.1fs", down_for)
            if dispatcher.sinks:
                dispatcher.emit(StateStoreRecovered(name=self.prefix, down_for=down_for))

    # --- clients --------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._sync is None:
            import redis

            client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            )
            self._scripts = (client.register_script(_GCRA), client.register_script(_RELEASE))
            self._sync = client
        return self._sync

    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            )
            entry = (client, client.register_script(_GCRA))
            self._async[loop] = entry
        return entry

    # --- breakers -------------------------------------------------------------------------

    def attach(self, breaker: BreakerLink) -> None:
        """Follow the fleet for ``breaker`` (starts the listener on first use)."""
        with self._lock:
            self._breakers[breaker.name] = breaker
            start = not self._threads
            if start:
                self._stop.clear()
                self._threads = [
                    threading.Thread(target=self._listen, name="stoic-redis-listen", daemon=True),
                    threading.Thread(target=self._publish, name="stoic-redis-publish", daemon=True),
                ]
        if start:
            for thread in self._threads:
                thread.start()

    def detach(self, breaker: BreakerLink) -> None:
        with self._lock:
            if self._breakers.get(breaker.name) is breaker:
                del self._breakers[breaker.name]

    def opened(self, breaker: BreakerLink, open_for: float) -> None:
        self._outbox.put(("open", breaker.name, open_for))

    def closed(self, breaker: BreakerLink) -> None:
        self._outbox.put(("closed", breaker.name, 0.0))

    def acquire_trial(self, breaker: BreakerLink) -> bool:
        if not self._available():
            return True
        try:
            got = self._client().set(
                self._trial_key(breaker.name), self.instance, nx=True,
                px=max(1, int(self.trial_lease * 1000)),
            )
        except Exception as exc:
            self._failed("acquire_trial", exc)
            return True
        self._ok()
        return bool(got)

    def _publish(self) -> None:
        """Background: write opens and closes to Redis and announce them, in order."""
        while True:
            op, name, open_for = self._outbox.get()
            if op == "stop":
                return
            if not self._available():
                continue  # dropped: while Redis is away every process decides alone
            try:
                client = self._client()
                release = self._scripts[1]
                pipe = client.pipeline(transaction=False)
                if op == "open":
                    pipe.set(self._open_key(name), self.instance, px=max(1, int(open_for * 1000)))
                else:
                    pipe.delete(self._open_key(name))
                release(keys=[self._trial_key(name)], args=[self.instance], client=pipe)
                message = {"op": op, "name": name, "ttl": open_for, "from": self.instance}
                pipe.publish(self._channel, json.dumps(message))
                pipe.execute()
            except Exception as exc:
                self._failed(f"publish {op}", exc)
            else:
                self._ok()

    def _listen(self) -> None:
        """Background: follow opens and closes of other processes; refresh every ``poll``."""
        pubsub: Any = None
        last_refresh = 0.0
        stop = self._stop
        while not stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self._channel)
                    self._refresh()
                    last_refresh = clock.now()
                    self._ok()
                message = pubsub.get_message(timeout=min(self.poll, 0.2))
                if message is not None:
                    self._on_message(message.get("data"))
                if clock.now() - last_refresh >= self.poll:
                    self._refresh()
                    last_refresh = clock.now()
            except Exception as exc:
                self._failed("subscribe", exc)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
                    pubsub = None
                stop.wait(self.retry_interval)
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    def _on_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            op, name, sender = message["op"], message["name"], message["from"]
            ttl = float(message.get("ttl", 0.0))
        except (TypeError, ValueError, KeyError):
            return  # not ours; a shared channel must not become a way to crash the listener
        if sender == self.instance:
            return
        breaker = self._breakers.get(name)
        if breaker is None:
            return
        if op == "open":
            breaker.follow_open(ttl)
        elif op == "closed":
            breaker.follow_close()

    def _refresh(self) -> None:
        """Read the open keys of every attached breaker (catches missed messages)."""
        with self._lock:
            links = list(self._breakers.values())
        if not links:
            return
        pipe = self._client().pipeline(transaction=False)
        for link in links:
            pipe.pttl(self._open_key(link.name))
        for link, ttl in zip(links, pipe.execute(), strict=True):
            if isinstance(ttl, int) and ttl > 0:
                remaining = link.retry_after
                if remaining is None or abs(remaining - ttl / 1000) > 0.5:
                    link.follow_open(ttl / 1000)

    # --- rate limits ----------------------------------------------------------------------

    # ``take`` and ``atake`` differ only in the client and the ``await``; the script's
    # arguments and the reading of its answer are written once, below them.

    def take(self, key: str, interval: float, burst: int, max_wait: float) -> tuple[bool, float]:
        if self._available():
            try:
                self._client()
                result = self._scripts[0](**self._gcra_call(key, interval, burst, max_wait))
            except Exception as exc:
                self._failed("rate limit", exc)
            else:
                return self._gcra_answer(result)
        return self._local.take(key, interval, burst, max_wait)

    async def atake(
        self, key: str, interval: float, burst: int, max_wait: float
    ) -> tuple[bool, float]:
        if self._available():
            try:
                _client, gcra = self._aclient()
                result = await gcra(**self._gcra_call(key, interval, burst, max_wait))
            except Exception as exc:
                self._failed("rate limit", exc)
            else:
                return self._gcra_answer(result)
        return self._local.take(key, interval, burst, max_wait)

    def _gcra_call(
        self, key: str, interval: float, burst: int, max_wait: float
    ) -> dict[str, list[Any]]:
        """The GCRA script's keys and arguments (milliseconds, as the script counts)."""
        return {
            "keys": [self._limit_key(key)],
            "args": [interval * 1000.0, burst, max_wait * 1000.0],
        }

    def _gcra_answer(self, result: Any) -> tuple[bool, float]:
        """Redis answered: note that it is healthy and read ``(admitted, seconds)``."""
        self._ok()
        return bool(int(result[0])), float(result[1]) / 1000.0

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background threads and close the synchronous connection."""
        with self._lock:
            threads, self._threads = self._threads, []
        if threads:
            self._stop.set()
            self._outbox.put(_STOP)
            for thread in threads:
                thread.join(timeout=self.timeout + self.retry_interval + 1.0)
        if self._sync is not None:
            try:
                self._sync.close()
            except Exception:
                pass
            self._sync = None

    async def aclose(self) -> None:
        """Close the asyncio connection of the running loop, then everything ``close`` does."""
        loop = asyncio.get_running_loop()
        entry = self._async.pop(loop, None)
        if entry is not None:
            try:
                await entry[0].aclose()
            except Exception:
                pass
        self.close()

"""Idempotency records in Redis: every operation is one Lua script, so one round trip.

A record is a hash under ``prefix + key`` with short fields: ``f`` fingerprint, ``s`` state
(``p`` in flight, ``c`` completed), ``t`` owner token, ``l`` lease end and ``e`` expiry
(wall-clock milliseconds), ``r`` the response. Redis also expires the hash itself
(``PEXPIRE``) so nothing needs purging; ``purge_expired`` exists for the contract and
returns 0.

The claim script reads the record, decides whether it is live, and if not writes the new
in-flight record, all inside Redis, so concurrent claims from any number of clients are
serialised by the server. When the key is already completed, the same round trip returns
the stored response: a replay costs one round trip too. A record of the wrong Redis type
or with unreadable fields is treated as absent and reported; scripts use ``redis.pcall`` so
a corrupted key can never make a script fail.

Needs the ``stoic[redis]`` extra (redis-py >= 5); it is imported when the store is made.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .. import clock
from .store import (
    BaseStore,
    Claim,
    ClaimStatus,
    Record,
    RecordState,
    check_key,
    check_seconds,
    decide,
    new_token,
    report_corrupted,
)

__all__ = ["RedisStore"]

# Returns {"claimed", why} or {"found", f, s, t, l, e, r}. ARGV: fp, token, now, lease, ttl (ms)
_CLAIM = """
local key = KEYS[1]
local now = tonumber(ARGV[3])
local rec = redis.pcall('HMGET', key, 'f', 's', 't', 'l', 'e', 'r')
local why = 'absent'
if type(rec) == 'table' and rec.err == nil then
  local f, s, t = rec[1], rec[2], rec[3]
  local l, e = tonumber(rec[4]), tonumber(rec[5])
  if f or s or t or rec[4] or rec[5] then
    if not f or not t or not l or not e or (s ~= 'p' and s ~= 'c') then
      why = 'corrupted'
    elseif e <= now then
      why = 'expired'
    elseif s == 'p' and l <= now then
      why = 'lease_expired'
    else
      return {'found', f, s, t, rec[4], rec[5], rec[6] or false}
    end
  end
elseif redis.call('EXISTS', key) == 1 then
  why = 'corrupted'
end
local lease = tonumber(ARGV[4])
local ttl = math.max(tonumber(ARGV[5]), lease)
redis.call('DEL', key)
redis.call('HSET', key, 'f', ARGV[1], 's', 'p', 't', ARGV[2],
           'l', tostring(now + lease), 'e', tostring(now + ttl))
redis.call('PEXPIRE', key, ttl)
return {'claimed', why}
"""

# ARGV: token, response or '', has_response (1/0), now, ttl (ms)
_COMPLETE = """
local key = KEYS[1]
local rec = redis.pcall('HMGET', key, 's', 't', 'e')
if type(rec) ~= 'table' or rec.err ~= nil then return 0 end
local now = tonumber(ARGV[4])
local e = tonumber(rec[3])
if rec[1] ~= 'p' or rec[2] ~= ARGV[1] or not e or e <= now then return 0 end
local ttl = tonumber(ARGV[5])
redis.call('HSET', key, 's', 'c', 'l', ARGV[4], 'e', tostring(now + ttl))
if ARGV[3] == '1' then redis.call('HSET', key, 'r', ARGV[2]) else redis.call('HDEL', key, 'r') end
redis.call('PEXPIRE', key, ttl)
return 1
"""

# ARGV: token, now (ms)
_RELEASE = """
local rec = redis.pcall('HMGET', KEYS[1], 's', 't', 'e')
if type(rec) ~= 'table' or rec.err ~= nil then return 0 end
local e = tonumber(rec[3])
if rec[1] ~= 'p' or rec[2] ~= ARGV[1] or not e or e <= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# ARGV: token, now, lease (ms)
_EXTEND = """
local key = KEYS[1]
local rec = redis.pcall('HMGET', key, 's', 't', 'e')
if type(rec) ~= 'table' or rec.err ~= nil then return 0 end
local now = tonumber(ARGV[2])
local e = tonumber(rec[3])
if rec[1] ~= 'p' or rec[2] ~= ARGV[1] or not e or e <= now then return 0 end
local until_ = now + tonumber(ARGV[3])
redis.call('HSET', key, 'l', tostring(until_))
if until_ > e then
  redis.call('HSET', key, 'e', tostring(until_))
  redis.call('PEXPIRE', key, until_ - now)
end
return 1
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: Any) -> str | None:
    if value is None or value is False:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisStore(BaseStore):
    """Idempotency records in Redis.

    Args:
        url: ``redis://host:port/db`` (or ``rediss://``); used when ``client`` is not given.
        prefix: put before every key, so several applications can share one database.
        client: an existing ``redis.Redis`` to use for the sync methods.
        aclient: an existing ``redis.asyncio.Redis`` for the async methods.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "stoic:idem:",
        client: Any = None,
        aclient: Any = None,
    ) -> None:
        if client is None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
        try:
            import redis  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisStore needs the redis extra: pip install 'stoic[redis]'"
            ) from exc
        self.url = url
        self.prefix = prefix
        self._client = client
        self._aclient = aclient
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._owns_aclient = aclient is None
        self._lock = threading.Lock()
        self._scripts: dict[str, Any] = {}
        self._ascripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    # -- clients and scripts ---------------------------------------------------------------

    def _sync(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            with self._lock:
                if self._client is None:
                    import redis

                    self._client = redis.Redis.from_url(self.url)
                script = self._client.register_script(_SCRIPTS[name])
                self._scripts[name] = script
        return script

    def _async(self, name: str) -> Any:
        loop = asyncio.get_running_loop()
        if self._owns_aclient and self._aclient is not None and self._aclient_loop is not loop:
            # A client's connections belong to the loop that made them; a new loop needs its own.
            self._aclient = None
            self._ascripts = {}
        script = self._ascripts.get(name)
        if script is None:
            if self._aclient is None:
                import redis.asyncio

                self._aclient = redis.asyncio.Redis.from_url(self.url)
                self._aclient_loop = loop
            script = self._aclient.register_script(_SCRIPTS[name])
            self._ascripts[name] = script
        return script

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._scripts = {}

    async def aclose(self) -> None:
        if self._aclient is not None and self._owns_aclient:
            await self._aclient.aclose()
            self._aclient = None
            self._ascripts = {}
        self.close()

    # -- shared encoding and decoding of script replies ------------------------------------

    def _claim_args(
        self, key: str, fingerprint: str, lease: float, ttl: float
    ) -> tuple[list[str], list[Any], str, int]:
        check_key(key)
        lease, ttl = check_seconds("lease", lease), check_seconds("ttl", ttl)
        token = new_token()
        now = _ms(clock.wall())
        return [self.prefix + key], [fingerprint, token, now, _ms(lease), _ms(ttl)], token, now

    @staticmethod
    def _claim_result(
        key: str, fingerprint: str, token: str, now_ms: int, reply: list[Any]
    ) -> Claim:
        kind = _text(reply[0])
        if kind == "claimed":
            why = _text(reply[1])
            if why == "corrupted":
                report_corrupted("RedisStore", key, "unreadable hash fields or wrong type")
            return Claim(
                ClaimStatus.CLAIMED, key, token=token,
                replaced=None if why == "absent" else why,
            )
        _, f, s, t, lease_until, expires_at, response = reply
        record = Record(
            key=key, fingerprint=_text(f) or "",
            state=RecordState.COMPLETED if _text(s) == "c" else RecordState.IN_FLIGHT,
            token=_text(t) or "", lease_until=float(_text(lease_until) or 0) / 1000,
            expires_at=float(_text(expires_at) or 0) / 1000, response=_text(response),
        )
        return decide(record, fingerprint, now_ms / 1000)

    def _complete_args(
        self, key: str, token: str, response: str | None, ttl: float
    ) -> tuple[list[str], list[Any]]:
        ttl = check_seconds("ttl", ttl)
        return [self.prefix + key], [
            token, response if response is not None else "",
            "1" if response is not None else "0", _ms(clock.wall()), _ms(ttl),
        ]

    def _read_record(self, key: str, raw: Any) -> Record | None:
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            state = fields.get("s")
            if state not in ("p", "c") or fields.get("f") is None or fields.get("t") is None:
                raise ValueError(f"state={state!r}")
            record = Record(
                key=key, fingerprint=fields["f"] or "",
                state=RecordState.COMPLETED if state == "c" else RecordState.IN_FLIGHT,
                token=fields["t"] or "", lease_until=float(fields["l"] or "") / 1000,
                expires_at=float(fields["e"] or "") / 1000, response=fields.get("r"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            report_corrupted("RedisStore", key, exc)
            return None
        if record.expires_at <= clock.wall():
            return None
        return record

    # -- sync ------------------------------------------------------------------------------

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        keys, args, token, now = self._claim_args(key, fingerprint, lease, ttl)
        reply = self._sync("claim")(keys=keys, args=args)
        return self._claim_result(key, fingerprint, token, now, reply)

    def complete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        keys, args = self._complete_args(key, token, response, ttl)
        return bool(self._sync("complete")(keys=keys, args=args))

    def release(self, key: str, token: str) -> bool:
        args = [token, _ms(clock.wall())]
        return bool(self._sync("release")(keys=[self.prefix + key], args=args))

    def extend(self, key: str, token: str, lease: float) -> bool:
        lease = check_seconds("lease", lease)
        args = [token, _ms(clock.wall()), _ms(lease)]
        return bool(self._sync("extend")(keys=[self.prefix + key], args=args))

    def get(self, key: str) -> Record | None:
        check_key(key)
        self._sync("claim")  # makes the client
        try:
            raw = self._client.hgetall(self.prefix + key)
        except Exception as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            report_corrupted("RedisStore", key, exc)
            return None
        return self._read_record(key, raw)

    def delete(self, key: str) -> bool:
        self._sync("claim")
        return bool(self._client.delete(self.prefix + key))

    def purge_expired(self) -> int:
        return 0  # Redis expires records itself (PEXPIRE)

    # -- async -----------------------------------------------------------------------------

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        keys, args, token, now = self._claim_args(key, fingerprint, lease, ttl)
        reply = await self._async("claim")(keys=keys, args=args)
        return self._claim_result(key, fingerprint, token, now, reply)

    async def acomplete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        keys, args = self._complete_args(key, token, response, ttl)
        return bool(await self._async("complete")(keys=keys, args=args))

    async def arelease(self, key: str, token: str) -> bool:
        args = [token, _ms(clock.wall())]
        return bool(await self._async("release")(keys=[self.prefix + key], args=args))

    async def aextend(self, key: str, token: str, lease: float) -> bool:
        lease = check_seconds("lease", lease)
        args = [token, _ms(clock.wall()), _ms(lease)]
        return bool(await self._async("extend")(keys=[self.prefix + key], args=args))

    async def aget(self, key: str) -> Record | None:
        check_key(key)
        self._async("claim")
        try:
            raw = await self._aclient.hgetall(self.prefix + key)
        except Exception as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            report_corrupted("RedisStore", key, exc)
            return None
        return self._read_record(key, raw)

    async def adelete(self, key: str) -> bool:
        self._async("claim")
        return bool(await self._aclient.delete(self.prefix + key))

    async def apurge_expired(self) -> int:
        return 0


_SCRIPTS = {"claim": _CLAIM, "complete": _COMPLETE, "release": _RELEASE, "extend": _EXTEND}

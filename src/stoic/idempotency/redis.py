"""Idempotency records in Redis: one round trip to claim, to complete, and to replay.

A record is one string under ``prefix + key``: a small JSON object with ``s`` state (``p`` in
flight, ``c`` completed), ``f`` fingerprint, ``t`` owner token, ``l`` lease end and ``e``
expiry (wall-clock milliseconds) and ``r`` the response. Redis also expires the key itself
(``PX``), so nothing needs purging; ``purge_expired`` exists for the contract and returns 0.

* **claim** is ``SET key <new record> NX GET PX ttl``: a single atomic command that either
  creates the in-flight record (the key was free: claimed) or leaves the key alone and
  returns the existing record, including a completed record's response (a replay). Only
  when that record is dead (lease run out, expired by our clock, unreadable) does a Lua
  script re-check and replace it atomically. On Redis < 7.0, which cannot combine ``NX``
  with ``GET``, every claim uses the script: still one round trip.
* **complete**, **release** and **extend** are Lua scripts that check the owner's token
  and change the record in one step.

Records are parsed as JSON, never unpickled or evaluated. A value that is not a valid
record, or a key of another Redis type, is reported and treated as absent: the next claim
replaces it. Scripts read with ``redis.pcall`` and ``pcall(cjson.decode, ...)`` so a
corrupted key can never make a script fail.

Under ``stoic.deadline`` no command waits past the time left: the sync client made from a
``redis://`` URL reads replies through ``stoic.integrations.redis.DeadlineConnection``, and
the async methods are cancelled when the time is up; either way the caller gets
``stoic.DeadlineExceeded``. Each operation is one atomic command, so it either happened or
did not; when the deadline ends the wait for its reply, a claim that did happen holds its
key only until its lease ends. A ``client`` you pass in is used as it is.

Needs the ``stoic[redis]`` extra (redis-py >= 5); it is imported when the store is made.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from .. import clock
from .._lazy import require
from ..integrations._deadlines import outside_deadline, within
from .store import (
    BaseStore,
    Claim,
    ClaimStatus,
    Record,
    RecordState,
    check_claim,
    check_key,
    check_seconds,
    decide,
    live_answer,
    new_token,
    report_corrupted,
    unexpired,
)

__all__ = ["RedisStore"]

_READ = """
local function read(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' and raw.err then return nil, 'corrupted' end
  if not raw then return nil, 'absent' end
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or type(rec.f) ~= 'string' or type(rec.t) ~= 'string'
     or type(rec.l) ~= 'number' or type(rec.e) ~= 'number'
     or (rec.s ~= 'p' and rec.s ~= 'c') then
    return nil, 'corrupted'
  end
  return rec, raw
end
"""

# ARGV: fingerprint, token, now, lease, ttl (ms). Returns {'claimed', why} or {'found', raw}.
_CLAIM = _READ + """
local key = KEYS[1]
local now = tonumber(ARGV[3])
local rec, raw = read(key)
local why = raw
if rec then
  if rec.e <= now then why = 'expired'
  elseif rec.s == 'p' and rec.l <= now then why = 'lease_expired'
  else return {'found', raw} end
end
local lease = tonumber(ARGV[4])
local ttl = math.max(tonumber(ARGV[5]), lease)
redis.call('SET', key, cjson.encode({s='p', f=ARGV[1], t=ARGV[2], l=now + lease, e=now + ttl}),
           'PX', ttl)
return {'claimed', why}
"""

# ARGV: token, response, has_response (1/0), now, ttl (ms)
_COMPLETE = _READ + """
local rec = read(KEYS[1])
local now = tonumber(ARGV[4])
if not rec or rec.s ~= 'p' or rec.t ~= ARGV[1] or rec.e <= now then return 0 end
local ttl = tonumber(ARGV[5])
rec.s = 'c'
rec.l = now
rec.e = now + ttl
if ARGV[3] == '1' then rec.r = ARGV[2] else rec.r = nil end
redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', ttl)
return 1
"""

# ARGV: token, now (ms)
_RELEASE = _READ + """
local rec = read(KEYS[1])
if not rec or rec.s ~= 'p' or rec.t ~= ARGV[1] or rec.e <= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# ARGV: token, now, lease (ms)
_EXTEND = _READ + """
local rec = read(KEYS[1])
local now = tonumber(ARGV[2])
if not rec or rec.s ~= 'p' or rec.t ~= ARGV[1] or rec.e <= now then return 0 end
rec.l = now + tonumber(ARGV[3])
if rec.l > rec.e then rec.e = rec.l end
redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', rec.e - now)
return 1
"""

_SCRIPTS = {"claim": _CLAIM, "complete": _COMPLETE, "release": _RELEASE, "extend": _EXTEND}


_WHAT = "a RedisStore command"
# the fast path's reply when SET NX GET was refused and the claim script decides instead
_REFUSED = object()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _parse(key: str, raw: Any) -> Record | None:
    """A stored record, or None (reported) when the value is not one."""
    try:
        data = json.loads(raw)
        state = data["s"]
        fingerprint, token = data["f"], data["t"]
        response = data.get("r")
        if state not in ("p", "c") or not isinstance(fingerprint, str) or not isinstance(
                token, str) or not isinstance(response, (str, type(None))):
            raise ValueError(f"state={state!r}")
        return Record(
            key=key, fingerprint=fingerprint,
            state=RecordState.COMPLETED if state == "c" else RecordState.IN_FLIGHT,
            token=token, lease_until=float(data["l"]) / 1000,
            expires_at=float(data["e"]) / 1000, response=response,
        )
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        report_corrupted("RedisStore", key, exc)
        return None


class _Plan:
    """One claim's arguments, worked out once for the fast path and the script."""

    __slots__ = ("fingerprint", "key", "lease", "name", "now", "record", "token", "ttl")

    def __init__(self, prefix: str, key: str, fingerprint: str, lease: float,
                 ttl: float) -> None:
        lease, ttl = check_claim(key, lease, ttl)
        self.key, self.name, self.fingerprint = key, prefix + key, fingerprint
        self.token = new_token()
        self.now = _ms(clock.wall())
        self.lease, self.ttl = _ms(lease), max(_ms(ttl), _ms(lease))
        self.record = json.dumps(
            {"s": "p", "f": fingerprint, "t": self.token, "l": self.now + self.lease,
             "e": self.now + self.ttl},
            separators=(",", ":"),
        )

    def script_args(self) -> list[Any]:
        return [self.fingerprint, self.token, self.now, self.lease, self.ttl]

    def claimed(self, replaced: str | None = None) -> Claim:
        return Claim(ClaimStatus.CLAIMED, self.key, token=self.token, replaced=replaced)

    def from_fast(self, raw: Any) -> Claim | None:
        """The answer from ``SET NX GET``'s reply, or None when the script must decide."""
        if raw is _REFUSED:
            return None
        if raw is None:
            return self.claimed()
        return live_answer(_parse(self.key, raw), self.fingerprint, self.now / 1000)

    def from_script(self, reply: list[Any]) -> Claim:
        if _text(reply[0]) == "claimed":
            why = _text(reply[1])
            if why == "corrupted":
                report_corrupted("RedisStore", self.key, "not a record (bad JSON or type)")
            return self.claimed(None if why == "absent" else why)
        record = _parse(self.key, reply[1])
        if record is None:  # pragma: no cover - the script only returns readable records
            raise RuntimeError(f"unreadable record for {self.key!r}")
        return decide(record, self.fingerprint, self.now / 1000)


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
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if client is None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
        redis = require("redis", "RedisStore", "redis")
        self.url = url
        self.prefix = prefix
        self._client = client
        self._aclient = aclient
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._owns_aclient = aclient is None
        self._lock = threading.Lock()
        self._scripts: dict[str, Any] = {}
        self._ascripts: dict[str, Any] = {}
        self._set_get = True  # False after a server refused SET NX GET (Redis < 7.0)
        self._response_error: type[Exception] = redis.ResponseError

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    # -- clients and scripts ---------------------------------------------------------------

    def _sync_client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    import redis

                    options: dict[str, Any] = {}
                    if self.url.startswith("redis://"):  # TCP: replies end at the deadline
                        from ..integrations.redis import DeadlineConnection

                        options["connection_class"] = DeadlineConnection
                    self._client = redis.Redis.from_url(self.url, **options)
                client = self._client
        return client

    def _sync(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._sync_client().register_script(_SCRIPTS[name])
            self._scripts[name] = script
        return script

    def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._owns_aclient and self._aclient is not None and self._aclient_loop is not loop:
            # A client's connections belong to the loop that made them; a new loop needs its own.
            self._aclient = None
            self._ascripts = {}
        if self._aclient is None:
            import redis.asyncio

            self._aclient = redis.asyncio.Redis.from_url(self.url)
            self._aclient_loop = loop
        return self._aclient

    def _async(self, name: str) -> Any:
        client = self._async_client()
        script = self._ascripts.get(name)
        if script is None:
            script = client.register_script(_SCRIPTS[name])
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

    # The scripts' arguments, worked out once for the sync and the async method.
    @staticmethod
    def _complete_args(token: str, response: str | None, ttl: float) -> list[Any]:
        ttl = check_seconds("ttl", ttl)
        return [token, response if response is not None else "",
                "1" if response is not None else "0", _ms(clock.wall()), _ms(ttl)]

    @staticmethod
    def _release_args(token: str) -> list[Any]:
        return [token, _ms(clock.wall())]

    @staticmethod
    def _extend_args(token: str, lease: float) -> list[Any]:
        return [token, _ms(clock.wall()), _ms(check_seconds("lease", lease))]

    def _fast_path_refused(self, exc: Exception) -> object:
        """The fast path's reply (``_REFUSED``) when ``SET NX GET`` failed for a reason the
        claim script handles: the key holds another type (corrupted), or the server is older
        than 7.0 (then stop trying). Raises ``exc`` for any other reason."""
        text = str(exc)
        if "WRONGTYPE" in text:
            return _REFUSED
        if "syntax" in text.lower():
            self._set_get = False
            return _REFUSED
        raise exc

    def _get_result(self, key: str, raw: Any) -> Record | None:
        return None if raw is None else unexpired(_parse(key, raw), clock.wall())

    def _get_refused(self, key: str, exc: Exception) -> bool:
        """Whether a GET failed because the key holds another type (reported: corrupted)."""
        if "WRONGTYPE" not in str(exc):
            return False
        report_corrupted("RedisStore", key, exc)
        return True

    # -- sync ------------------------------------------------------------------------------

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        plan = _Plan(self.prefix, key, fingerprint, lease, ttl)
        if self._set_get:
            try:
                raw = self._sync_client().set(plan.name, plan.record, nx=True, get=True,
                                              px=plan.ttl)
            except self._response_error as exc:
                raw = self._fast_path_refused(exc)
            answer = plan.from_fast(raw)
            if answer is not None:
                return answer
        return plan.from_script(self._sync("claim")(keys=[plan.name], args=plan.script_args()))

    def complete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        with outside_deadline():  # records work already done (see _deadlines)
            args = self._complete_args(token, response, ttl)
            return bool(self._sync("complete")(keys=[self.prefix + key], args=args))

    def release(self, key: str, token: str) -> bool:
        with outside_deadline():  # records work already done (see _deadlines)
            args = self._release_args(token)
            return bool(self._sync("release")(keys=[self.prefix + key], args=args))

    def extend(self, key: str, token: str, lease: float) -> bool:
        args = self._extend_args(token, lease)
        return bool(self._sync("extend")(keys=[self.prefix + key], args=args))

    def get(self, key: str) -> Record | None:
        check_key(key)
        try:
            raw = self._sync_client().get(self.prefix + key)
        except self._response_error as exc:
            if not self._get_refused(key, exc):
                raise
            return None
        return self._get_result(key, raw)

    def delete(self, key: str) -> bool:
        return bool(self._sync_client().delete(self.prefix + key))

    def purge_expired(self) -> int:
        return 0  # Redis expires records itself (PX)

    # -- async -----------------------------------------------------------------------------

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        plan = _Plan(self.prefix, key, fingerprint, lease, ttl)
        if self._set_get:
            try:
                raw = await within(self._async_client().set(
                    plan.name, plan.record, nx=True, get=True, px=plan.ttl), _WHAT)
            except self._response_error as exc:
                raw = self._fast_path_refused(exc)
            answer = plan.from_fast(raw)
            if answer is not None:
                return answer
        reply = await within(self._async("claim")(keys=[plan.name], args=plan.script_args()),
                             _WHAT)
        return plan.from_script(reply)

    async def acomplete(self, key: str, token: str, response: str | None, *, ttl: float) -> bool:
        with outside_deadline():  # records work already done (see _deadlines)
            args = self._complete_args(token, response, ttl)
            return bool(await within(self._async("complete")(keys=[self.prefix + key], args=args),
                                     _WHAT))

    async def arelease(self, key: str, token: str) -> bool:
        with outside_deadline():  # records work already done (see _deadlines)
            args = self._release_args(token)
            return bool(await within(self._async("release")(keys=[self.prefix + key], args=args),
                                     _WHAT))

    async def aextend(self, key: str, token: str, lease: float) -> bool:
        args = self._extend_args(token, lease)
        return bool(await within(self._async("extend")(keys=[self.prefix + key], args=args),
                                 _WHAT))

    async def aget(self, key: str) -> Record | None:
        check_key(key)
        try:
            raw = await within(self._async_client().get(self.prefix + key), _WHAT)
        except self._response_error as exc:
            if not self._get_refused(key, exc):
                raise
            return None
        return self._get_result(key, raw)

    async def adelete(self, key: str) -> bool:
        return bool(await within(self._async_client().delete(self.prefix + key), _WHAT))

    async def apurge_expired(self) -> int:
        return 0

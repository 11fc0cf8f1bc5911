"""``@idempotent``: run an operation once per key, and give every repeat the first result.

The first call with a key claims it in the store (an in-flight record with a lease), runs,
stores its outcome as JSON and returns. A repeat after that gets the stored outcome without
running: the same value, or, for a stored failure, ``IdempotencyStoredError`` carrying the
original type name and message. A repeat while the first call is still running raises
``IdempotencyKeyInUseError`` (or waits up to ``wait`` seconds for the result), and a repeat
with different arguments raises ``IdempotencyKeyMismatchError``.

Which outcomes are stored is ``cache=`` (SUCCESS and PERMANENT by default). Any other
failure (TRANSIENT, THROTTLED, UNKNOWN, cancellation) releases the key, so the client's
retry runs the operation again. The result is encoded before anything is marked complete, so
a result the codec cannot encode fails the first call with ``CodecError`` and leaves no record.

While the body runs, its key is in ``stoic.context`` (``using_idempotency_key``): a
``Retry`` inside treats UNKNOWN failures as safe to retry, since the whole operation is
protected. Put ``Retry`` *inside* the idempotent operation (``Pipeline(idempotent(...),
Retry(...))``) so retries reuse the one claim.

Crashes: a process that dies mid-call leaves an in-flight record. Once its ``lease`` runs
out the key can be claimed again and the work runs again: execution is *at least once*
across crashes and *at most once* while leases hold. A call that may run longer than its
lease calls ``stoic.idempotency.extend()`` (or ``await aextend()``) from inside to keep it.

The decision logic (which key, which fingerprint, what a claim means, what an outcome
stores) is written once here as plain functions; the sync and async paths only do I/O.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .. import clock
from ..codec import Codec, default_codec
from ..context import _deadline, using_idempotency_key
from ..errors import (
    CodecError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    IdempotencyStoredError,
)
from ..events import dispatcher
from ..outcome import Outcome, classify
from ..policies.base import AsyncStep, Policy, Step
from .events import (
    IdempotencyKeyRejected,
    IdempotencyLeaseLost,
    IdempotencyLeaseTakenOver,
    IdempotencyRecordCorrupted,
    IdempotentReplayed,
)
from .fingerprint import Binder, digest, fingerprint_arguments
from .store import MAX_KEY_LENGTH, Claim, ClaimStatus, Store, check_seconds

__all__ = ["DEFAULT_CACHE", "Idempotent", "aextend", "extend", "idempotent"]

_log = logging.getLogger("stoic.idempotency")

DEFAULT_CACHE = frozenset({Outcome.SUCCESS, Outcome.PERMANENT})
"""Store results and permanent failures; let everything else be retried."""

_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in a namespace or a scope
_POLL_FIRST, _POLL_MAX = 0.005, 0.1
_CLAIM_TURNS = 5  # a corrupted record is deleted and claimed again, a few times at most


@dataclass(slots=True)
class _Lease:
    store: Store
    key: str
    token: str
    lease: float


_current: ContextVar[_Lease | None] = ContextVar("stoic_idempotency_lease", default=None)


def extend(lease: float | None = None) -> bool:
    """From inside an idempotent call: keep its lease for ``lease`` more seconds.

    Defaults to the operation's own ``lease``. Returns False if the lease was already lost
    (another caller took the key over), which means the work may be running twice.
    """
    current = _current.get()
    if current is None:
        raise RuntimeError("extend() is only meaningful inside an @idempotent call")
    return current.store.extend(current.key, current.token, lease or current.lease)


async def aextend(lease: float | None = None) -> bool:
    """``extend`` for async code."""
    current = _current.get()
    if current is None:
        raise RuntimeError("aextend() is only meaningful inside an @idempotent call")
    return await current.store.aextend(current.key, current.token, lease or current.lease)


@dataclass(frozen=True, slots=True)
class _Target:
    """What the policy needs to know about one decorated function, worked out once."""

    namespace: str
    binder: Binder
    revive: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Call:
    client_key: str
    store_key: str
    fingerprint: str


def _revive_for(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """Rebuild a replayed value into the function's annotated return type, when it is a
    dataclass or a pydantic model (JSON keeps their fields, not their class)."""
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:
        return _identity
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        cls: Any = hint
        return lambda data: cls(**data) if isinstance(data, dict) else data
    validate = getattr(hint, "model_validate", None)
    if isinstance(hint, type) and callable(validate):
        return lambda data: validate(data) if isinstance(data, dict) else data
    return _identity


def _note(exc: BaseException, text: str) -> None:
    add_note = getattr(exc, "add_note", None)  # Python >= 3.11
    if add_note is not None:
        add_note(text)


def _identity(value: Any) -> Any:
    return value


class Idempotent(Policy):
    """Run a call at most once per key while its record lives; replay the outcome after.

    Args:
        store: where records live (``SQLiteStore`` for one machine, ``RedisStore`` or
            ``PostgresStore`` to share between machines, ``MemoryStore`` for tests).
        key: the client's key: a callable taking the call's arguments, or a format string
            over the argument names (``"charge-{order_id}"``). A key of None runs the call
            without idempotency. Longer than 255 characters raises ``ValueError``.
        ttl: seconds a completed record is kept (and replayed).
        lease: seconds an in-flight claim stays exclusive before another caller may take it
            over (the owner died). Keep it above the longest call, or ``extend()``.
        wait: seconds a repeat waits for an in-flight first call to finish before it raises
            ``IdempotencyKeyInUseError``; 0 raises at once.
        fingerprint: a callable on the call's arguments returning what identifies the request
            (hashed); by default the canonical JSON of all arguments.
        scope: a callable on the call's arguments returning the principal (tenant, user):
            keys are separate per scope, so one user's key never replays another's result.
        cache: the outcomes whose result is stored and replayed.
        codec: the JSON codec for stored results (``stoic.codec.default_codec``).
        namespace: separates operations sharing a store; by default the function's
            module and qualified name.
        name: names the operation in events; by default its namespace.
    """

    def __init__(
        self,
        store: Store,
        key: str | Callable[..., str | None],
        *,
        ttl: float = 86400.0,
        lease: float = 60.0,
        wait: float = 0.0,
        fingerprint: Callable[..., Any] | None = None,
        scope: Callable[..., str | None] | None = None,
        cache: Iterable[Outcome] = DEFAULT_CACHE,
        codec: Codec | None = None,
        namespace: str | None = None,
        name: str | None = None,
    ) -> None:
        for method in ("claim", "complete", "release", "aclaim", "acomplete", "arelease"):
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store must implement stoic.idempotency.Store, got {store!r}")
        if not (isinstance(key, str) or callable(key)):
            raise TypeError(f"key must be a format string or a callable, got {key!r}")
        if isinstance(key, str) and "{" not in key:
            raise ValueError(
                f"key must reference the call's arguments (e.g. 'order-{{order_id}}'), got {key!r}"
            )
        self.ttl = check_seconds("ttl", ttl)
        self.lease = check_seconds("lease", lease)
        if not (wait >= 0 and wait != float("inf")):
            raise ValueError(f"wait must be a finite number of seconds >= 0, got {wait!r}")
        if fingerprint is not None and not callable(fingerprint):
            raise TypeError(f"fingerprint must be callable, got {fingerprint!r}")
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be callable, got {scope!r}")
        cache = frozenset(cache)
        for outcome in cache:
            if not isinstance(outcome, Outcome):
                raise ValueError(f"cache must hold stoic.Outcome members, got {outcome!r}")
        if namespace is not None and _SEPARATOR in namespace:
            raise ValueError(f"namespace must not contain \\x1f, got {namespace!r}")
        self.store = store
        self.key = key
        self.wait = float(wait)
        self.fingerprint = fingerprint
        self.scope = scope
        self.cache = cache
        self.codec = codec or default_codec
        self.namespace = namespace
        self.name = name
        self._targets: dict[Callable[..., Any], _Target] = {}
        self._compose()

    def __repr__(self) -> str:
        return (f"Idempotent(store={self.store!r}, key={self.key!r}, ttl={self.ttl}, "
                f"lease={self.lease}, wait={self.wait})")

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        self._target(fn)  # inspect the function once, at decoration time
        return super().__call__(fn)

    # -- decisions (no I/O) ----------------------------------------------------------------

    def _target(self, fn: Callable[..., Any]) -> _Target:
        target = self._targets.get(fn)
        if target is None:
            try:
                signature: inspect.Signature | None = inspect.signature(fn)
            except (TypeError, ValueError):
                signature = None
            namespace = self.namespace
            if namespace is None:
                namespace = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}"
            target = _Target(namespace.replace(_SEPARATOR, ""), Binder(signature),
                             _revive_for(fn))
            if len(self._targets) >= 1024:  # .call() with fresh lambdas or bound methods
                self._targets.clear()
            self._targets[fn] = target
        return target

    def _prepare(
        self, target: _Target, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Call | None:
        key_spec = self.key
        bound = target.binder.bind(args, kwargs) if self.fingerprint is None or isinstance(
            key_spec, str) else None
        if isinstance(key_spec, str):
            if bound is None:
                raise TypeError("a format-string key needs a function with a signature")
            client_key: str | None = key_spec.format(**bound)
        else:
            client_key = key_spec(*args, **kwargs)
        if client_key is None:
            return None
        if not isinstance(client_key, str):
            raise TypeError(f"key must give a str or None, got {type(client_key).__name__}")
        if not client_key:
            raise ValueError("idempotency key must not be empty")
        if len(client_key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"idempotency key is {len(client_key)} characters long; "
                f"at most {MAX_KEY_LENGTH} allowed"
            )
        scope = ""
        if self.scope is not None:
            scope = self.scope(*args, **kwargs) or ""
            if not isinstance(scope, str):
                scope = str(scope)
            if _SEPARATOR in scope:
                raise ValueError("scope must not contain \\x1f")
        store_key = client_key
        if target.namespace or scope:
            store_key = _SEPARATOR.join((target.namespace, scope, client_key))
            if len(store_key) > MAX_KEY_LENGTH:
                store_key = "sha256:" + digest(store_key)
        if self.fingerprint is not None:
            custom = self.fingerprint(*args, **kwargs)
            fingerprint = digest(custom if isinstance(custom, (str, bytes))
                                 else self.codec.canonical(custom))
        else:
            try:
                fingerprint = fingerprint_arguments(bound, args, kwargs, self.codec)
            except CodecError as exc:
                _note(exc, "pass fingerprint= to @idempotent to say what identifies a request")
                raise
        return _Call(client_key, store_key, fingerprint)

    def _label(self, target: _Target) -> str:
        return self.name or target.namespace

    def _refusal(self, target: _Target, call: _Call, claim: Claim) -> Exception:
        label = self._label(target)
        if claim.status is ClaimStatus.MISMATCH:
            if dispatcher.sinks:
                dispatcher.emit(IdempotencyKeyRejected(
                    name=label, key=call.client_key, reason="mismatch"))
            return IdempotencyKeyMismatchError(
                f"idempotency key {call.client_key!r} was used with different arguments",
                key=call.client_key,
            )
        if dispatcher.sinks:
            dispatcher.emit(IdempotencyKeyRejected(
                name=label, key=call.client_key, reason="in_flight",
                retry_after=claim.retry_after))
        return IdempotencyKeyInUseError(
            f"a call with idempotency key {call.client_key!r} is still in flight",
            key=call.client_key, retry_after=claim.retry_after,
        )

    def _replay(self, target: _Target, call: _Call, claim: Claim) -> tuple[bool, Any]:
        """Decode a completed record: (True, value) or raise the stored error.
        (False, None) when the record is unreadable (reported; the caller claims again)."""
        response = claim.record.response if claim.record is not None else None
        label = self._label(target)
        try:
            if response is None:
                raise CodecError("the record has no stored response")
            data = self.codec.decode(response)
            if not isinstance(data, dict) or not ({"result", "error"} & data.keys()):
                raise CodecError("the stored response is not an idempotent outcome")
            if "error" in data:
                error = data["error"]
                type_name, message = str(error["type"]), str(error["message"])
            else:
                value = target.revive(data["result"])
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            _log.warning("idempotency %s: stored result for key %r is unreadable (%s); "
                         "treating it as absent", label, call.client_key, exc)
            if dispatcher.sinks:
                dispatcher.emit(IdempotencyRecordCorrupted(
                    name=label, key=call.client_key, problem=str(exc)))
            return False, None
        if "error" in data:
            if dispatcher.sinks:
                dispatcher.emit(IdempotentReplayed(
                    name=label, key=call.client_key, error_type=type_name))
            raise IdempotencyStoredError(type_name, message, key=call.client_key)
        if dispatcher.sinks:
            dispatcher.emit(IdempotentReplayed(name=label, key=call.client_key))
        return True, value

    def _wait_until(self) -> float:
        end = clock.now() + self.wait
        deadline = _deadline.get()
        return end if deadline is None else min(end, deadline)

    def _claimed(self, target: _Target, call: _Call, claim: Claim) -> None:
        if claim.replaced == "lease_expired" and dispatcher.sinks:
            dispatcher.emit(IdempotencyLeaseTakenOver(
                name=self._label(target), key=call.client_key))

    def _error_record(self, exc: Exception) -> str | None:
        """The stored text for a failure, or None when the failure releases the key."""
        if classify(exc).outcome not in self.cache:
            return None
        try:
            return self.codec.encode({"error": {
                "type": type(exc).__qualname__, "message": str(exc),
            }})
        except CodecError:  # pragma: no cover - two strings always encode
            return None

    def _lost(self, target: _Target, call: _Call) -> None:
        _log.warning("idempotency %s: lease on key %r was lost before the call finished; "
                     "its result was not stored", self._label(target), call.client_key)
        if dispatcher.sinks:
            dispatcher.emit(IdempotencyLeaseLost(name=self._label(target), key=call.client_key))

    # -- sync ------------------------------------------------------------------------------

    def wrap(self, inner: Step) -> Step:
        store, ttl, lease = self.store, self.ttl, self.lease

        def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            target = self._target(fn)
            prepared = self._prepare(target, args, kwargs)
            if prepared is None:
                return inner(fn, args, kwargs)
            wait_until: float | None = None
            poll = _POLL_FIRST
            corrupted = 0
            while True:  # bounded: by wait_until while waiting, by _CLAIM_TURNS otherwise
                claim = store.claim(prepared.store_key, prepared.fingerprint,
                                    lease=lease, ttl=ttl)
                if claim.status is ClaimStatus.CLAIMED:
                    break
                if claim.status is ClaimStatus.COMPLETED:
                    ok, value = self._replay(target, prepared, claim)
                    if ok:
                        return value
                    corrupted += 1
                    if corrupted >= _CLAIM_TURNS:
                        raise CodecError(f"stored result for {prepared.client_key!r} stays "
                                         "unreadable")
                    store.delete(prepared.store_key)
                    continue
                if claim.status is ClaimStatus.IN_FLIGHT and self.wait > 0:
                    if wait_until is None:
                        wait_until = self._wait_until()
                    left = wait_until - clock.now()
                    if left > 0:
                        clock.sleep(min(poll, left))
                        poll = min(poll * 2, _POLL_MAX)
                        continue
                raise self._refusal(target, prepared, claim)
            return self._run(inner, target, prepared, claim, fn, args, kwargs)

        return call

    def _run(self, inner: Step, target: _Target, prepared: _Call, claim: Claim,
             fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        token = claim.token or ""
        self._claimed(target, prepared, claim)
        handle = _current.set(_Lease(self.store, prepared.store_key, token, self.lease))
        try:
            with using_idempotency_key(prepared.client_key):
                result = inner(fn, args, kwargs)
        except Exception as exc:
            _current.reset(handle)
            self._finish(target, prepared, token, self._error_record(exc))
            raise
        except BaseException:
            _current.reset(handle)
            self._finish(target, prepared, token, None)
            raise
        _current.reset(handle)
        try:
            text = self._result_record(target, prepared, token, result)
        except CodecError:
            self._finish(target, prepared, token, None)
            raise
        self._finish(target, prepared, token, text)
        return result

    def _finish(self, target: _Target, prepared: _Call, token: str, text: str | None) -> None:
        """Store the outcome (``text``) or give the key back (None). Never raises: the
        call's own outcome is what the caller must see; a store that fails here leaves an
        in-flight record that the next caller may take over once its lease runs out."""
        store, key = self.store, prepared.store_key
        try:
            if text is None:
                store.release(key, token)
            elif not store.complete(key, token, text, ttl=self.ttl):
                self._lost(target, prepared)
        except Exception:
            self._store_failed(target, prepared, text)

    async def _afinish(self, target: _Target, prepared: _Call, token: str,
                       text: str | None) -> None:
        store, key = self.store, prepared.store_key
        try:
            if text is None:
                await store.arelease(key, token)
            elif not await store.acomplete(key, token, text, ttl=self.ttl):
                self._lost(target, prepared)
        except Exception:
            self._store_failed(target, prepared, text)

    def _store_failed(self, target: _Target, prepared: _Call, text: str | None) -> None:
        _log.warning("idempotency %s: could not %s key %r; it stays in flight until its lease "
                     "runs out", self._label(target),
                     "release" if text is None else "store the outcome of",
                     prepared.client_key, exc_info=True)

    def _result_record(self, target: _Target, prepared: _Call, token: str,
                       result: Any) -> str | None:
        """The stored text for a result, None when results are not cached.

        Encoding happens before anything is marked complete: a result the codec cannot
        encode raises ``CodecError`` here (after the key is released by the caller)."""
        if Outcome.SUCCESS not in self.cache:
            return None
        try:
            return self.codec.encode({"result": result})
        except CodecError as exc:
            _note(exc, f"the result of the idempotent call with key {prepared.client_key!r} "
                       "cannot be stored; register its type with stoic.codec.register")
            raise

    # -- async -----------------------------------------------------------------------------

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        store, ttl, lease = self.store, self.ttl, self.lease

        async def acall(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            target = self._target(fn)
            prepared = self._prepare(target, args, kwargs)
            if prepared is None:
                return await inner(fn, args, kwargs)
            wait_until: float | None = None
            poll = _POLL_FIRST
            corrupted = 0
            while True:  # bounded: by wait_until while waiting, by _CLAIM_TURNS otherwise
                claim = await store.aclaim(prepared.store_key, prepared.fingerprint,
                                           lease=lease, ttl=ttl)
                if claim.status is ClaimStatus.CLAIMED:
                    break
                if claim.status is ClaimStatus.COMPLETED:
                    ok, value = self._replay(target, prepared, claim)
                    if ok:
                        return value
                    corrupted += 1
                    if corrupted >= _CLAIM_TURNS:
                        raise CodecError(f"stored result for {prepared.client_key!r} stays "
                                         "unreadable")
                    await store.adelete(prepared.store_key)
                    continue
                if claim.status is ClaimStatus.IN_FLIGHT and self.wait > 0:
                    if wait_until is None:
                        wait_until = self._wait_until()
                    left = wait_until - clock.now()
                    if left > 0:
                        await clock.asleep(min(poll, left))
                        poll = min(poll * 2, _POLL_MAX)
                        continue
                raise self._refusal(target, prepared, claim)
            return await self._arun(inner, target, prepared, claim, fn, args, kwargs)

        return acall

    async def _arun(self, inner: AsyncStep, target: _Target, prepared: _Call, claim: Claim,
                    fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        token = claim.token or ""
        self._claimed(target, prepared, claim)
        handle = _current.set(_Lease(self.store, prepared.store_key, token, self.lease))
        try:
            async with using_idempotency_key(prepared.client_key):
                result = await inner(fn, args, kwargs)
        except Exception as exc:
            _current.reset(handle)
            await self._afinish(target, prepared, token, self._error_record(exc))
            raise
        except BaseException:
            _current.reset(handle)
            await self._afinish(target, prepared, token, None)
            raise
        _current.reset(handle)
        try:
            text = self._result_record(target, prepared, token, result)
        except CodecError:
            await self._afinish(target, prepared, token, None)
            raise
        await self._afinish(target, prepared, token, text)
        return result


def idempotent(
    store: Store,
    key: str | Callable[..., str | None],
    *,
    ttl: float = 86400.0,
    lease: float = 60.0,
    wait: float = 0.0,
    fingerprint: Callable[..., Any] | None = None,
    scope: Callable[..., str | None] | None = None,
    cache: Iterable[Outcome] = DEFAULT_CACHE,
    codec: Codec | None = None,
    namespace: str | None = None,
    name: str | None = None,
) -> Idempotent:
    """Make a function idempotent per key: ``@stoic.idempotent(store=..., key="order-{id}")``.

    See ``Idempotent`` for the arguments. The returned policy decorates sync and async
    functions and composes in a ``Pipeline`` like any other policy.
    """
    return Idempotent(
        store, key, ttl=ttl, lease=lease, wait=wait, fingerprint=fingerprint, scope=scope,
        cache=cache, codec=codec, namespace=namespace, name=name,
    )

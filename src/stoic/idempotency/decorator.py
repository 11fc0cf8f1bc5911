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

The decision logic (which key, which fingerprint, what an outcome stores) is written once
here as plain functions; the claim loop, the lease and the current-call context are
``stoic.idempotency.claims``, shared with the HTTP middlewares. The sync and async paths
only do I/O.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..codec import Codec, default_codec
from ..errors import (
    CodecError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    IdempotencyStoredError,
)
from ..events import dispatcher
from ..outcome import Outcome, classify
from ..policies.base import AsyncStep, Policy, Step
from .claims import KeyedCall, Lease, Settled, aextend, asettle, extend, holding, settle
from .events import IdempotentReplayed
from .fingerprint import Binder, digest, fingerprint_arguments
from .store import SEPARATOR, Claim, ClaimStatus, Store, check_key, check_seconds, check_store, store_key

__all__ = ["DEFAULT_CACHE", "Idempotent", "aextend", "extend", "idempotent"]

DEFAULT_CACHE = frozenset({Outcome.SUCCESS, Outcome.PERMANENT})
"""Store results and permanent failures; let everything else be retried."""

_STORE_METHODS = ("claim", "complete", "release", "delete", "aclaim", "acomplete", "arelease",
                  "adelete")

_Replay = tuple[Any, "tuple[str, str] | None"]  # a stored value, or a stored error's type, message


@dataclass(frozen=True, slots=True)
class _Target:
    """What the policy needs to know about one decorated function, worked out once."""

    namespace: str
    name: str  # the operation's name in events and logs
    binder: Binder
    revive: Callable[[Any], Any]
    codec: Codec

    def read(self, response: str | None) -> _Replay:
        """A stored outcome: ``(value, None)`` or ``(None, (error type, message))``.
        ``CodecError``, ``KeyError``, ``TypeError`` or ``ValueError`` when unreadable."""
        if response is None:
            raise CodecError("the record has no stored response")
        data = self.codec.decode(response)
        if not isinstance(data, dict) or not ({"result", "error"} & data.keys()):
            raise CodecError("the stored response is not an idempotent outcome")
        if "error" in data:
            error = data["error"]
            return None, (str(error["type"]), str(error["message"]))
        return self.revive(data["result"]), None


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
        check_store(store, _STORE_METHODS)
        if not (isinstance(key, str) or callable(key)):
            raise TypeError(f"key must be a format string or a callable, got {key!r}")
        if isinstance(key, str) and "{" not in key:
            raise ValueError(
                f"key must reference the call's arguments (e.g. 'order-{{order_id}}'), got {key!r}"
            )
        self.ttl = check_seconds("ttl", ttl)
        self.lease = check_seconds("lease", lease)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not (
                wait >= 0 and math.isfinite(wait)):
            raise ValueError(f"wait must be a finite number of seconds >= 0, got {wait!r}")
        if fingerprint is not None and not callable(fingerprint):
            raise TypeError(f"fingerprint must be callable, got {fingerprint!r}")
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be callable, got {scope!r}")
        if isinstance(cache, (Outcome, str)):
            raise TypeError(f"cache must be a collection of stoic.Outcome members, got {cache!r}")
        cache = frozenset(cache)
        for outcome in cache:
            if not isinstance(outcome, Outcome):
                raise ValueError(f"cache must hold stoic.Outcome members, got {outcome!r}")
        if namespace is not None and SEPARATOR in namespace:
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
        # Decided once: a format-string key, and whether calls need their arguments by name
        # (for that key or for the default fingerprint).
        self._key_format = key if isinstance(key, str) else None
        self._binds = fingerprint is None or self._key_format is not None
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
            namespace = namespace.replace(SEPARATOR, "")
            target = _Target(namespace, self.name or namespace, Binder(signature),
                             _revive_for(fn), self.codec)
            if len(self._targets) >= 1024:  # .call() with fresh lambdas or bound methods
                self._targets.clear()
            self._targets[fn] = target
        return target

    def _prepare(
        self, target: _Target, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> KeyedCall | None:
        bound = target.binder.bind(args, kwargs) if self._binds else None
        key_format = self._key_format
        if key_format is not None:
            if bound is None:
                raise TypeError("a format-string key needs a function with a signature")
            client_key: str | None = key_format.format(**bound)
        else:
            client_key = self.key(*args, **kwargs)  # type: ignore[operator]
        if client_key is None:
            return None
        if not isinstance(client_key, str):
            raise TypeError(f"key must give a str or None, got {type(client_key).__name__}")
        check_key(client_key)
        scope = ""
        if self.scope is not None:
            scope = self.scope(*args, **kwargs) or ""
            if not isinstance(scope, str):
                scope = str(scope)
            if SEPARATOR in scope:
                raise ValueError("scope must not contain \\x1f")
        stored_as = client_key
        if target.namespace or scope:
            stored_as = store_key(target.namespace, scope, client_key)
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
        return KeyedCall(target.name, client_key, stored_as, fingerprint)

    def _settled(self, call: KeyedCall, settled: Settled[_Replay]) -> Any:
        """A claim loop that did not win: the replayed outcome, or the refusal raised."""
        claim = settled.claim
        if claim.status is ClaimStatus.COMPLETED and settled.replay is not None:
            value, error = settled.replay
            if dispatcher.sinks:
                dispatcher.emit(IdempotentReplayed(
                    name=call.name, key=call.key, error_type=None if error is None else error[0]))
            if error is not None:
                raise IdempotencyStoredError(*error, key=call.key)
            return value
        raise self._refusal(call, claim)

    @staticmethod
    def _refusal(call: KeyedCall, claim: Claim) -> Exception:
        if claim.status is ClaimStatus.MISMATCH:
            return IdempotencyKeyMismatchError(
                f"idempotency key {call.key!r} was used with different arguments", key=call.key)
        return IdempotencyKeyInUseError(
            f"a call with idempotency key {call.key!r} is still in flight",
            key=call.key, retry_after=claim.retry_after,
        )

    def _error_record(self, exc: BaseException) -> str | None:
        """The stored text for a failure, or None when the failure releases the key (its
        outcome is not in ``cache``, or it is a cancellation or an exit, never stored)."""
        if not isinstance(exc, Exception) or classify(exc).outcome not in self.cache:
            return None
        try:
            return self.codec.encode({"error": {
                "type": type(exc).__qualname__, "message": str(exc),
            }})
        except CodecError:  # pragma: no cover - two strings always encode
            return None

    # -- sync ------------------------------------------------------------------------------

    def wrap(self, inner: Step) -> Step:
        store, ttl, lease, wait = self.store, self.ttl, self.lease, self.wait

        def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            target = self._target(fn)
            prepared = self._prepare(target, args, kwargs)
            if prepared is None:
                return inner(fn, args, kwargs)
            settled = settle(store, prepared, lease=lease, ttl=ttl, read=target.read,
                             wait=wait)
            if settled.lease is None:
                return self._settled(prepared, settled)
            return self._run(inner, settled.lease, fn, args, kwargs)

        return call

    def _run(self, inner: Step, held: Lease, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        try:
            with holding(held):
                result = inner(fn, args, kwargs)
        except BaseException as exc:
            held.finish(self._error_record(exc))
            raise
        text = None  # stays None if the result cannot be encoded: the key is released
        try:
            text = self._result_record(held.call, result)
        finally:
            held.finish(text)
        return result

    def _result_record(self, call: KeyedCall, result: Any) -> str | None:
        """The stored text for a result, None when results are not cached.

        Encoding happens before anything is marked complete: a result the codec cannot
        encode raises ``CodecError`` here (after the key is released by the caller)."""
        if Outcome.SUCCESS not in self.cache:
            return None
        try:
            return self.codec.encode({"result": result})
        except CodecError as exc:
            _note(exc, f"the result of the idempotent call with key {call.key!r} "
                       "cannot be stored; register its type with stoic.codec.register")
            raise

    # -- async -----------------------------------------------------------------------------

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        store, ttl, lease, wait = self.store, self.ttl, self.lease, self.wait

        async def acall(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            target = self._target(fn)
            prepared = self._prepare(target, args, kwargs)
            if prepared is None:
                return await inner(fn, args, kwargs)
            settled = await asettle(store, prepared, lease=lease, ttl=ttl, read=target.read,
                                    wait=wait)
            if settled.lease is None:
                return self._settled(prepared, settled)
            return await self._arun(inner, settled.lease, fn, args, kwargs)

        return acall

    async def _arun(self, inner: AsyncStep, held: Lease, fn: Callable[..., Any],
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            async with holding(held):
                result = await inner(fn, args, kwargs)
        except BaseException as exc:
            await held.afinish(self._error_record(exc))
            raise
        text = None  # stays None if the result cannot be encoded: the key is released
        try:
            text = self._result_record(held.call, result)
        finally:
            await held.afinish(text)
        return result


idempotent = Idempotent
"""``@stoic.idempotent(store=..., key="order-{order_id}")``: the policy class under the name
the decorator reads best with. It decorates sync and async functions and composes in a
``Pipeline`` like any other policy; see ``Idempotent`` for the arguments."""

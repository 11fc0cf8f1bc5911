"""Claims: how one caller becomes the one that runs the work for a key, holds it, lets it go.

The ``@idempotent`` decorator and the HTTP middlewares (``IdempotencyMiddleware`` for ASGI,
and any other adapter) all do the same thing around a store, so it is written once here:

``KeyedCall``
    What is being claimed: the client's key, the key as stored, the request's fingerprint
    and the name that events and logs use.
``Reclaim``
    The decisions between claims, with no I/O: after each answer of ``Store.claim`` it says
    whether the loop is done (``Settled``), must sleep and claim again (a float: seconds,
    while a repeat waits for an in-flight first call), or must delete an unreadable record
    and claim again (None, at most ``CLAIM_TURNS`` times, then ``CodecError``). It emits the
    events (key rejected, record corrupted, lease taken over) so every caller reports alike.
``settle`` / ``asettle``
    The loop itself, a few lines of I/O around ``Reclaim``: claim, then sleep or delete as
    told. It ends with a ``Settled``: ``CLAIMED`` (run the work under ``settled.lease``),
    ``COMPLETED`` (``settled.replay`` holds the decoded stored response), ``IN_FLIGHT`` or
    ``MISMATCH`` (refuse; ``settled.claim.retry_after`` is the lease time left).
``Lease``
    A won claim: ``extend`` (renew) while the work runs, then ``finish`` exactly once: store
    the response, or give the key back with None. ``finish`` never raises: the call's own
    outcome is what its caller must see.
``holding(lease)``, ``current()``, ``extend()``, ``aextend()``
    The current call's lease in a context variable (and its key in
    ``stoic.context.using_idempotency_key``), so code running inside can renew the lease
    without being handed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Generic, TypeVar

from .. import clock
from ..context import deadline_at, using_idempotency_key
from ..errors import CodecError
from ..events import dispatcher
from .events import (
    IdempotencyKeyRejected,
    IdempotencyLeaseLost,
    IdempotencyLeaseTakenOver,
    IdempotencyRecordCorrupted,
)
from .store import Claim, ClaimStatus, Store

__all__ = [
    "CLAIM_TURNS",
    "KeyedCall",
    "Lease",
    "Reclaim",
    "Settled",
    "aextend",
    "asettle",
    "current",
    "extend",
    "holding",
    "settle",
]

T = TypeVar("T")

_log = logging.getLogger("stoic.idempotency")

CLAIM_TURNS = 5
"""How many unreadable records one call deletes and claims past before it gives up."""

_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # seconds between claims while waiting, doubling
_UNREADABLE = (CodecError, KeyError, TypeError, ValueError)  # what a failed ``read`` raises


@dataclass(frozen=True, slots=True)
class KeyedCall:
    """What one call claims. ``key`` is the client's key (in events, logs and errors),
    ``stored_as`` the key in the store (namespaced, scoped), ``name`` the operation's name."""

    name: str
    key: str
    stored_as: str
    fingerprint: str


class Lease:
    """A won claim, held while its work runs. Renew it with ``extend``; end it with ``finish``."""

    __slots__ = ("call", "lease", "store", "token", "ttl")

    def __init__(self, store: Store, call: KeyedCall, token: str, *, lease: float,
                 ttl: float) -> None:
        self.store, self.call, self.token = store, call, token
        self.lease, self.ttl = lease, ttl

    def __repr__(self) -> str:
        return f"Lease(key={self.call.key!r}, lease={self.lease}, ttl={self.ttl})"

    def extend(self, lease: float | None = None) -> bool:
        """Keep the key ``lease`` more seconds (default: the claim's own lease). False when
        the lease was lost (another caller took the key over) or the work is finished."""
        return self.store.extend(self.call.stored_as, self.token,
                                 self.lease if lease is None else lease)

    async def aextend(self, lease: float | None = None) -> bool:
        """``extend`` for async code."""
        return await self.store.aextend(self.call.stored_as, self.token,
                                        self.lease if lease is None else lease)

    def finish(self, response: str | None) -> bool:
        """Store ``response`` for replays, or give the key back (None) so the next claim runs
        the work again. True when it landed. Never raises: a store that fails here leaves
        an in-flight record that the next caller takes over once its lease runs out."""
        try:
            landed = (self.store.release(self.call.stored_as, self.token) or True
                      if response is None else
                      self.store.complete(self.call.stored_as, self.token, response, ttl=self.ttl))
        except Exception:
            return self._failed(response)
        return landed or self._lost()

    async def afinish(self, response: str | None) -> bool:
        """``finish`` for async code."""
        try:
            landed = (await self.store.arelease(self.call.stored_as, self.token) or True
                      if response is None else
                      await self.store.acomplete(self.call.stored_as, self.token, response,
                                                 ttl=self.ttl))
        except Exception:
            return self._failed(response)
        return landed or self._lost()

    def _lost(self) -> bool:
        """Report a lease lost before ``finish``; False, what ``finish`` then returns."""
        call = self.call
        _log.warning("idempotency %s: lease on key %r was lost before the work finished; "
                     "its outcome was not stored", call.name, call.key)
        if dispatcher.sinks:
            dispatcher.emit(IdempotencyLeaseLost(name=call.name, key=call.key))
        return False

    def _failed(self, response: str | None) -> bool:
        """Report a store that failed in ``finish``; False, what ``finish`` then returns."""
        _log.warning("idempotency %s: could not %s key %r; it stays in flight until its lease "
                     "runs out", self.call.name,
                     "release" if response is None else "store the outcome of",
                     self.call.key, exc_info=True)
        return False


class Settled(Generic[T]):
    """How a claim loop ended, by ``claim.status``: ``CLAIMED`` (run under ``lease``, then
    ``lease.finish``), ``COMPLETED`` (``replay`` is what ``read`` made of the stored response),
    ``IN_FLIGHT`` or ``MISMATCH`` (refuse; for in flight ``claim.retry_after`` is the lease
    time left). ``lease`` and ``replay`` are None for the statuses they do not belong to.

    A plain slotted class, not a frozen dataclass: one is built on every idempotent call, and
    a frozen dataclass's ``__init__`` costs about a microsecond more (``benchmarks/
    idempotency.py``, replays through ``@idempotent``). Treat it as read-only."""

    __slots__ = ("claim", "lease", "replay")

    def __init__(self, claim: Claim, lease: Lease | None = None, replay: T | None = None) -> None:
        self.claim, self.lease, self.replay = claim, lease, replay

    def __repr__(self) -> str:
        return f"Settled({self.claim.status.name}, lease={self.lease!r}, replay={self.replay!r})"


class Reclaim(Generic[T]):
    """The decisions of one claim loop, without I/O (``settle`` and ``asettle`` do the I/O).

    Args:
        store: the store claimed in (only handed to the ``Lease`` of a won claim).
        call: what is claimed.
        lease, ttl: the claim's lease and record lifetime, in seconds.
        read: turns a completed record's response text into the replay; raises
            ``CodecError``, ``KeyError``, ``TypeError`` or ``ValueError`` when it cannot
            (the record is then reported, deleted and claimed again).
        wait: seconds a repeat waits for an in-flight first call before it is refused;
            never past the caller's ``stoic.deadline``. 0 refuses at once.
    """

    __slots__ = ("call", "lease", "poll", "read", "store", "ttl", "unreadable", "wait",
                 "wait_until")

    def __init__(self, store: Store, call: KeyedCall, *, lease: float, ttl: float,
                 read: Callable[[str | None], T], wait: float = 0.0) -> None:
        self.store, self.call, self.read = store, call, read
        self.lease, self.ttl, self.wait = lease, ttl, wait
        self.wait_until: float | None = None  # set at the first in-flight answer
        self.poll = _POLL_FIRST
        self.unreadable = 0

    def step(self, claim: Claim) -> Settled[T] | float | None:
        """What follows ``claim``: the end of the loop (``Settled``), seconds to sleep before
        claiming again, or None to delete the unreadable record and claim again.
        Raises ``CodecError`` once ``CLAIM_TURNS`` stored responses were unreadable."""
        status = claim.status
        if status is ClaimStatus.CLAIMED:
            return _won(self.store, self.call, claim, self.lease, self.ttl)
        if status is ClaimStatus.COMPLETED:
            response = claim.record.response if claim.record is not None else None
            try:
                return Settled(claim, replay=self.read(response))
            except _UNREADABLE as exc:
                self._unreadable(exc)
                return None
        if status is ClaimStatus.IN_FLIGHT and self.wait > 0:
            now = clock.now()
            if self.wait_until is None:
                end, deadline = now + self.wait, deadline_at()
                self.wait_until = end if deadline is None else min(end, deadline)
            left = self.wait_until - now
            if left > 0:
                pause = min(self.poll, left)
                self.poll = min(self.poll * 2, _POLL_MAX)
                return pause
        call = self.call
        if dispatcher.sinks:
            dispatcher.emit(IdempotencyKeyRejected(
                name=call.name, key=call.key,
                reason="mismatch" if status is ClaimStatus.MISMATCH else "in_flight",
                retry_after=claim.retry_after))
        return Settled(claim)


    def _unreadable(self, problem: Exception) -> None:
        call = self.call
        _log.warning("idempotency %s: stored response for key %r is unreadable (%s); "
                     "treating it as absent", call.name, call.key, problem)
        if dispatcher.sinks:
            dispatcher.emit(IdempotencyRecordCorrupted(name=call.name, key=call.key,
                                                       problem=str(problem)))
        self.unreadable += 1
        if self.unreadable >= CLAIM_TURNS:
            raise CodecError(f"stored response for {call.key!r} stays unreadable")


def _won(store: Store, call: KeyedCall, claim: Claim, lease: float, ttl: float) -> Settled[T]:
    """The end of a loop whose claim was won: the lease to run under."""
    if claim.replaced == "lease_expired" and dispatcher.sinks:
        dispatcher.emit(IdempotencyLeaseTakenOver(name=call.name, key=call.key))
    return Settled(claim, lease=Lease(store, call, claim.token or "", lease=lease, ttl=ttl))


def _at_once(store: Store, call: KeyedCall, claim: Claim, lease: float, ttl: float,
             read: Callable[[str | None], T]) -> Settled[T] | None:
    """The two common first answers, settled without building a ``Reclaim``: a won claim,
    and a readable replay. None for everything else (``Reclaim`` decides and reports)."""
    if claim.status is ClaimStatus.CLAIMED:
        return _won(store, call, claim, lease, ttl)
    if claim.status is ClaimStatus.COMPLETED and claim.record is not None:
        try:
            return Settled(claim, replay=read(claim.record.response))
        except _UNREADABLE:
            return None  # read again by Reclaim, which reports it and deletes the record
    return None


def settle(store: Store, call: KeyedCall, *, lease: float, ttl: float,
           read: Callable[[str | None], T], wait: float = 0.0) -> Settled[T]:
    """Claim ``call`` until the loop settles (see ``Reclaim`` for the arguments)."""
    claim = store.claim(call.stored_as, call.fingerprint, lease=lease, ttl=ttl)
    if (settled := _at_once(store, call, claim, lease, ttl, read)) is not None:
        return settled
    reclaim = Reclaim(store, call, lease=lease, ttl=ttl, read=read, wait=wait)
    while not isinstance(step := reclaim.step(claim), Settled):  # bounded by Reclaim
        store.delete(call.stored_as) if step is None else clock.sleep(step)
        claim = store.claim(call.stored_as, call.fingerprint, lease=lease, ttl=ttl)
    return step


async def asettle(store: Store, call: KeyedCall, *, lease: float, ttl: float,
                  read: Callable[[str | None], T], wait: float = 0.0) -> Settled[T]:
    """``settle`` for async code: the same ``Reclaim`` decisions, with awaited I/O."""
    claim = await store.aclaim(call.stored_as, call.fingerprint, lease=lease, ttl=ttl)
    if (settled := _at_once(store, call, claim, lease, ttl, read)) is not None:
        return settled
    reclaim = Reclaim(store, call, lease=lease, ttl=ttl, read=read, wait=wait)
    while not isinstance(step := reclaim.step(claim), Settled):  # bounded by Reclaim
        await (store.adelete(call.stored_as) if step is None else clock.asleep(step))
        claim = await store.aclaim(call.stored_as, call.fingerprint, lease=lease, ttl=ttl)
    return step


# -- the current call ------------------------------------------------------------------------

# One variable: the lease of the innermost idempotent call running in this context (task or
# thread), so ``extend()`` works from anywhere inside it without being handed the lease.
_current: ContextVar[Lease | None] = ContextVar("stoic_idempotency_lease", default=None)


def current() -> Lease | None:
    """The lease of the idempotent call running in this context, or None outside one."""
    return _current.get()


class holding:
    """``with holding(lease):`` (or ``async with``): run the block as ``lease``'s work.

    Inside, ``current()`` is ``lease`` (so ``extend()`` renews it) and
    ``stoic.context.idempotency_key()`` is its client key (so a ``Retry`` inside treats
    UNKNOWN failures as safe to retry). Both are restored on the way out.
    """

    __slots__ = ("_key", "_token", "lease")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._key = using_idempotency_key(lease.call.key)
        self._token: Token[Lease | None] | None = None

    def __enter__(self) -> Lease:
        self._token = _current.set(self.lease)
        self._key.__enter__()
        return self.lease

    def __exit__(self, *exc_info: object) -> None:
        self._key.__exit__(*exc_info)
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    async def __aenter__(self) -> Lease:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


def _held(caller: str) -> Lease:
    lease = _current.get()
    if lease is None:
        raise RuntimeError(f"{caller}() is only meaningful inside an idempotent call")
    return lease


def extend(lease: float | None = None) -> bool:
    """From inside an idempotent call: keep its lease for ``lease`` more seconds.

    Defaults to the operation's own ``lease``. Returns False if the lease was already lost
    (another caller took the key over), which means the work may be running twice. A
    ``lease`` that is not a number of seconds > 0 raises ``ValueError``; outside an
    idempotent call, ``RuntimeError``.
    """
    return _held("extend").extend(lease)


async def aextend(lease: float | None = None) -> bool:
    """``extend`` for async code."""
    return await _held("aextend").aextend(lease)

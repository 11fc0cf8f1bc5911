"""The part of ``Worker`` that its sync and async drivers share: its settings, decisions
(no I/O) and bookkeeping, and the consuming loop, the handling of one message and the
heartbeat, written once as coroutines over the driver's steps (``worker_steps.py``).

The sync driver runs those coroutines with ``drive``: its steps never suspend, so a
coroutine runs to its end in the calling thread, in one ``send``, as plain calls would.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from .. import clock
from ..errors import CodecError
from ..events import dispatcher
from ..idempotency.store import Claim, ClaimStatus, Store
from ..outcome import Outcome, classify
from ..policies.backoff import exponential
from ..policies.retry import Retry
from .broker import AckAndClaim, Broker, Waking, check_int, check_topic
from .flow import FlowControl, Permit
from .model import Message, MessageDeadLettered, MessageHandled, MessageRetried
from .worker_model import (
    ACK,
    Action,
    DedupeUse,
    WorkerCounts,
    dedupe_key,
    message_scope,
)

__all__ = ["Steps", "WorkerCore", "drive"]

_log = logging.getLogger("stoic.messaging")

T = TypeVar("T")
Handler = Callable[[Message], Any]
_RETRYABLE = frozenset({Outcome.TRANSIENT, Outcome.THROTTLED, Outcome.UNKNOWN})
_DEFAULT_RETRY = Retry(max_attempts=5, backoff=exponential(1.0, 2.0, 300.0), name="worker")


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend (the sync driver's steps) to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a sync worker step suspended; it must not")


class Steps(Protocol):
    """What the shared coroutines ask of a driver: the I/O, sync or async."""

    async def claim(self, done: list[Message]) -> list[Message]: ...
    async def pause(self, seconds: float) -> None: ...
    async def idle(self, seconds: float) -> None: ...
    async def empty(self) -> bool: ...
    async def handle(self, message: Message) -> None: ...
    async def settle(self, message: Message, action: Action) -> None: ...
    async def ack_many(self, messages: list[Message]) -> None: ...
    async def extend(self, message: Message) -> bool: ...
    async def keep_permits(self) -> None: ...
    async def dedupe_claim(self, message: Message, dedupe: DedupeUse) -> Claim: ...
    async def dedupe_extend(self, message: Message, token: str, dedupe: DedupeUse) -> None: ...
    async def dedupe_release(self, message: Message, token: str, dedupe: DedupeUse) -> None: ...
    async def dedupe_complete(self, message: Message, token: str, dedupe: DedupeUse) -> None: ...


class WorkerCore:
    """Settings, decisions and the shared coroutines of a ``Worker`` (see ``Worker``)."""

    def __init__(
        self,
        broker: Broker,
        topic: str,
        handler: Handler,
        *,
        retry: Retry | None = None,
        concurrency: int = 1,
        lease: float = 30.0,
        dedupe: Store | None = None,
        dedupe_ttl: float = 7 * 86400.0,
        max_attempts: int | None = None,
        accept_versions: Iterable[str | int] | None = None,
        prefetch: int = 10,
        poll_interval: float = 0.2,
        name: str | None = None,
        flow: FlowControl | None = None,
    ) -> None:
        check_topic(topic)
        if not callable(handler):
            raise ValueError(f"handler must be callable, got {handler!r}")
        if retry is None:
            retry = _DEFAULT_RETRY
        elif not isinstance(retry, Retry):
            raise ValueError(f"retry must be a stoic.Retry, got {retry!r}")
        check_int("concurrency", concurrency)
        if not lease > 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
        if not dedupe_ttl > 0:
            raise ValueError(f"dedupe_ttl must be > 0 seconds, got {dedupe_ttl!r}")
        if max_attempts is None:
            max_attempts = retry.max_attempts
        check_int("max_attempts", max_attempts)
        check_int("prefetch", prefetch)
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if flow is not None and not isinstance(flow, FlowControl):
            raise ValueError(f"flow must be a stoic.messaging.flow.FlowControl, got {flow!r}")
        versions: frozenset[str] | None = None
        if accept_versions is not None:
            if isinstance(accept_versions, (str, int)):
                accept_versions = [accept_versions]
            versions = frozenset(str(v) for v in accept_versions)
            if not versions:
                raise ValueError("accept_versions must name at least one version, got none")
        self.broker, self.topic, self.handler, self.retry = broker, topic, handler, retry
        # The decision the worker asks: the caller's Retry, idempotent (module docstring).
        self._decision = retry.replace(idempotent=True, max_attempts=max_attempts)
        self.concurrency, self.lease, self.dedupe = concurrency, float(lease), dedupe
        self.max_attempts, self.accept_versions = max_attempts, versions
        self.prefetch, self.poll_interval = prefetch, float(poll_interval)
        self.name = name or f"worker:{topic}"
        self.counts = WorkerCounts()
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ counts too
        )
        self._dedupe = None if dedupe is None else DedupeUse(dedupe, self.lease, dedupe_ttl)
        self._stop = threading.Event()
        # A broker that announces publishes (LISTEN/NOTIFY) wakes an idle worker at once.
        self._wake = broker.wait if isinstance(broker, Waking) else None
        self._held: dict[str, tuple[Message, str | None]] = {}  # receipt -> (msg, dedupe token)
        self._held_lock = threading.Lock()
        self.flow = flow
        self._permits: dict[str, Permit] = {}  # receipt -> its key's place (flow control)
        # The acks of a batch ride with the next claim (one round trip) where the broker can
        # do both in one call; flow control claims on its own and acks before freeing keys.
        self.acks_with_claim: Callable[..., tuple[int, list[Message]]] | None = (
            broker.ack_and_claim if flow is None and isinstance(broker, AckAndClaim) else None
        )
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Worker({self.broker!r}, {self.topic!r}, concurrency={self.concurrency}, "
            f"lease={self.lease}, max_attempts={self.max_attempts})"
        )

    # --- decisions (no I/O) -------------------------------------------------------------

    def _check(self, message: Message) -> Action | None:
        """A message that must not reach the handler, and where it goes instead."""
        if message.defect is not None:
            return Action("dead", reason="malformed", error=message.defect)
        if self.accept_versions is not None and message.version not in self.accept_versions:
            accepted = ", ".join(sorted(self.accept_versions))
            return Action(
                "dead", reason="incompatible version",
                error=f"schema version {message.version!r} is not one of: {accepted}",
            )
        try:
            message.payload  # noqa: B018 - decoding is the check
        except CodecError as exc:
            return Action("dead", reason="malformed", error=f"CodecError: {exc}")
        return None

    def _failed(self, message: Message, exc: Exception) -> Action:
        """Retry later or dead-letter: Retry's own decision, for this delivery."""
        error = f"{type(exc).__name__}: {exc}"
        error_type = type(exc).__name__
        verdict = classify(exc)
        outcome = verdict.outcome.value
        attempt = max(1, message.attempts)
        elapsed = clock.wall() - message.created_at if message.created_at > 0 else 0.0
        delay = self._decision.next_delay(attempt, exc, elapsed=max(0.0, elapsed))
        if delay is not None:
            return Action("retry", delay=delay, error=error, outcome=outcome,
                          error_type=error_type)
        return Action("dead", reason=self._why_dead(exc, verdict.outcome, attempt),
                      error=error, outcome=outcome, error_type=error_type)

    def _why_dead(self, exc: Exception, outcome: Outcome, attempt: int) -> str:
        """The dead letter's category once Retry gave up (a label only: Retry decided)."""
        chosen = self.retry.on_matches(exc)
        if chosen is False or (chosen is None and outcome not in _RETRYABLE):
            return "permanent failure"
        if attempt >= self.max_attempts:
            return f"attempts exhausted ({attempt} of {self.max_attempts})"
        return "retry gave up (max_time, deadline, retry budget or Retry-After; see the error)"

    # --- the shared coroutines -------------------------------------------------------

    async def _consume(self, steps: Steps, stop_when_empty: bool) -> None:
        """Claim, handle, settle and ack until stopped (or, asked, until the queue is empty)."""
        idle = self.poll_interval
        errors = 0
        done: list[Message] = []  # handled: acked with the next claim (``acks_with_claim``)
        try:
            while not self._stop.is_set():
                try:
                    batch = await steps.claim(done)
                except Exception:  # the acks, if any, go again with the next claim
                    errors += 1
                    _log.exception("%s: claim failed; retrying", self.name)
                    await steps.pause(min(idle * errors, 5.0))
                    continue
                errors = 0
                done = []
                if batch:
                    await self._work(steps, batch, done)
                elif stop_when_empty and await steps.empty():
                    return
                else:
                    await steps.idle(idle)
        finally:
            if done:  # stopping: ack what was handled now
                await self._ack(steps, done)

    async def _work(self, steps: Steps, batch: list[Message], done: list[Message]) -> None:
        """Handle a claimed batch; the acks of its handled messages go in one broker call
        (added to ``done`` for the next claim, or sent now)."""
        self._hold(batch)
        acks: list[Message] = []
        try:
            for message in batch:
                action = await self._handle(steps, message)
                if action.kind == "ack":
                    acks.append(message)
                else:
                    await self._settle(steps, message, action)
                    self._release(message)
        finally:
            if acks:
                self._release(*acks)  # the heartbeat must not extend what is being acked
                if self.acks_with_claim is not None:
                    done.extend(acks)
                else:
                    await self._ack(steps, acks)
            self._release(*batch)
            self._free(batch)

    async def _ack(self, steps: Steps, acks: list[Message]) -> None:
        try:
            await steps.ack_many(acks)
        except Exception:  # the leases run out: redelivered, not lost
            _log.exception("%s: ack failed; the messages will be redelivered", self.name)

    async def _handle(self, steps: Steps, message: Message) -> Action:
        bad = self._check(message)
        if bad is not None:
            return bad
        token: str | None = None
        dedupe = self._dedupe
        if dedupe is not None:
            try:
                claim = await steps.dedupe_claim(message, dedupe)
            except Exception:
                return self._claim_failed(message)
            early, token = self._claimed(message, claim)
            if early is not None:
                return early
        started = clock.now()
        try:
            with message_scope(message):
                await steps.handle(message)
        except Exception as exc:
            if token is not None and dedupe is not None:
                await self._quietly(steps.dedupe_release(message, token, dedupe))
            return self._failed(message, exc)
        if token is not None and dedupe is not None:
            await self._quietly(steps.dedupe_complete(message, token, dedupe))
        self._done(message, started)
        return ACK

    async def _settle(self, steps: Steps, message: Message, action: Action) -> None:
        """Carry out a retry, wait or dead-letter decision on the broker."""
        try:
            await steps.settle(message, action)
        except Exception:
            _log.exception("%s: could not %s message %s; its lease will run out",
                           self.name, action.kind, message.id)
            return
        self._report(message, action)

    async def _beat(self, steps: Steps) -> None:
        """One heartbeat: extend the lease (and dedupe lease) of every message held."""
        await steps.keep_permits()
        with self._held_lock:
            held = list(self._held.values())
        for message, token in held:
            try:
                if not await steps.extend(message):
                    _log.warning("%s: lease on message %s was lost", self.name, message.id)
                if token is not None and self._dedupe is not None:
                    await steps.dedupe_extend(message, token, self._dedupe)
            except Exception:
                _log.exception("%s: extending the lease of %s failed", self.name, message.id)

    async def _quietly(self, call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        except Exception:
            _log.exception("%s: a dedupe store call failed", self.name)

    def _try(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            _log.exception("%s: flow control call %s failed", self.name,
                           getattr(fn, "__name__", fn))

    # --- bookkeeping --------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; ``run``/``arun`` return once the held messages are finished."""
        self._stop.set()

    def _claim(self) -> list[Message]:
        """The next batch: ``prefetch`` messages, or one chosen by the flow rules."""
        flow = self.flow
        if flow is None:
            return self.broker.claim(self.topic, max_messages=self.prefetch, lease=self.lease)
        got = flow.claim(self.broker, self.topic, self.lease)
        if got is None:
            return []
        message, permit = got
        if permit is not None:
            with self._held_lock:
                self._permits[message.receipt] = permit
        return [message]

    def ack_and_claim(self, done: list[Message]) -> list[Message]:
        """Ack ``done`` and claim the next batch in one broker call (``acks_with_claim``)."""
        assert self.acks_with_claim is not None  # ``done`` is kept only when it is set
        return self.acks_with_claim(done, self.topic, max_messages=self.prefetch,
                                    lease=self.lease)[1]

    def _free(self, batch: list[Message]) -> None:
        """Give back the key permits of a finished batch (flow control)."""
        flow = self.flow
        if flow is None:
            return
        with self._held_lock:
            permits = [p for p in (self._permits.pop(m.receipt, None) for m in batch) if p]
        for permit in permits:
            self._try(flow.release, permit)

    def _keep_permits(self) -> None:
        flow = self.flow
        if flow is None:
            return
        with self._held_lock:
            permits = list(self._permits.values())
        for permit in permits:
            self._try(flow.extend, permit, self.lease)

    def _idle(self, seconds: float) -> None:
        """Wait for work: until a publish on a waking broker, else a plain (stoppable) pause."""
        wake = self._wake
        if wake is None:
            self._stop.wait(seconds)
            return
        end = clock.now() + seconds
        try:  # in slices of at most 0.25 s, so stop() and SIGTERM are not kept waiting
            while not self._stop.is_set():
                left = end - clock.now()
                if left <= 0 or wake(self.topic, min(left, 0.25)):
                    return
        except Exception:
            _log.exception("%s: waiting for a publish failed; polling instead", self.name)
            self._stop.wait(seconds)

    def _empty(self) -> bool:
        """Nothing ready, delayed (a retry waiting for its backoff) or held by anyone.

        A broker whose counts can miss a message in transit between two queues (RabbitMQ: a
        retry moving from its delay queue back to its queue) says for how long, as
        ``stats_settle``; the queue must then look empty twice, that long apart.
        """
        if not self._counted_empty():
            return False
        settle = float(getattr(self.broker, "stats_settle", 0.0))
        if settle <= 0:
            return True
        self._stop.wait(settle)
        return self._counted_empty()

    def _counted_empty(self) -> bool:
        try:
            stats = self.broker.stats(self.topic)
            if self.flow is not None and self.flow.pending(self.topic):
                return False
        except Exception:
            _log.exception("%s: stats failed; not stopping yet", self.name)
            return False
        return stats.ready == 0 and stats.delayed == 0 and stats.in_flight == 0

    def _hold(self, batch: list[Message]) -> None:
        with self._held_lock:
            for m in batch:
                self._held[m.receipt] = (m, None)

    def _release(self, *messages: Message) -> None:
        with self._held_lock:
            for m in messages:
                self._held.pop(m.receipt, None)

    def _set_token(self, message: Message, token: str | None) -> None:
        with self._held_lock:
            if message.receipt in self._held:
                self._held[message.receipt] = (message, token)

    def _claim_failed(self, message: Message) -> Action:
        _log.exception("%s: dedupe store claim failed; message %s comes back later",
                       self.name, message.id)
        return Action("wait", delay=self.poll_interval)

    def _claimed(self, message: Message, claim: Claim) -> tuple[Action | None, str | None]:
        """What the dedupe claim means: an action instead of the handler, or the token that
        the heartbeat extends and completion marks."""
        early = self._claim_action(message, claim)
        if early is not None:
            return early, None
        self._set_token(message, claim.token)
        return None, claim.token

    def _claim_action(self, message: Message, claim: Claim) -> Action | None:
        status = claim.status
        if status is ClaimStatus.CLAIMED:
            return None
        if status is ClaimStatus.COMPLETED:
            with self._count_lock:
                self.counts.duplicates += 1
            if dispatcher.sinks:
                dispatcher.emit(MessageHandled(
                    name=self.name, topic=message.topic, message_id=message.id,
                    attempts=message.attempts, duration=0.0, duplicate=True,
                ))
            return ACK
        if status is ClaimStatus.IN_FLIGHT:
            wait = claim.retry_after if claim.retry_after is not None else self.lease
            return Action("wait", delay=min(max(wait, 0.05), self.lease))
        return Action("dead", reason="dedupe key in use",
                      error=f"idempotency store answered {status.value!r}"
                            f" for {dedupe_key(message)!r}")

    def _done(self, message: Message, started: float) -> None:
        with self._count_lock:
            self.counts.handled += 1
        if dispatcher.sinks:
            dispatcher.emit(MessageHandled(
                name=self.name, topic=message.topic, message_id=message.id,
                attempts=message.attempts, duration=clock.now() - started,
            ))

    def _report(self, message: Message, action: Action) -> None:
        if action.kind == "dead":
            with self._count_lock:
                self.counts.dead_lettered += 1
            _log.warning("%s: message %s dead-lettered after %d attempt(s): %s (%s)",
                         self.name, message.id, message.attempts, action.reason, action.error)
            if dispatcher.sinks:
                dispatcher.emit(MessageDeadLettered(
                    name=self.name, topic=message.topic, message_id=message.id,
                    attempts=message.attempts, reason=action.reason,
                    error_type=action.error_type,
                ))
        elif action.kind == "retry":
            with self._count_lock:
                self.counts.retried += 1
            if dispatcher.sinks:
                dispatcher.emit(MessageRetried(
                    name=self.name, topic=message.topic, message_id=message.id,
                    attempts=message.attempts, delay=action.delay, outcome=action.outcome,
                    error_type=action.error_type or "",
                ))

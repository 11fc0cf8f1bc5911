"""A consumer that acks only finished work, retries what may succeed later, and parks the rest.

For each message a ``Worker`` claims (under a lease) it:

1. dead-letters it as ``"malformed"`` if the broker could not read it or its payload does not
   decode, and as ``"incompatible version"`` if its schema version is not one the worker
   accepts: such a message is never half-processed, and never crashes the worker;
2. with ``dedupe=<idempotency store>``, claims the key ``stoic-message:<topic>:<id>``: a
   message whose handling already completed is acked without running the handler again;
3. runs the handler with the message's request id bound (``stoic.context``) and, when
   OpenTelemetry is instrumented, inside a consumer span linked to the producer's;
4. on success marks the dedupe key completed and acks (acks of one claimed batch go in one
   broker call: a crash before it means a redelivery, never a loss);
5. on failure asks the retry policy (``Retry.next_delay``, the decision a call through that
   Retry makes) whether and when to try again: the message comes back after that delay, or
   is dead-lettered with the error's type, text and the attempt count when Retry gives up
   (PERMANENT failure, ``max_attempts`` deliveries made, ``max_time`` since the message was
   first published, an empty retry budget).

The worker's one rule of its own, said through Retry's parameters: it asks
``retry.replace(idempotent=True)``. Delivery is at-least-once on every broker, so a handler
already runs twice whenever a worker dies after its side effect and before its ack; an
UNKNOWN failure ("it may have taken effect") therefore adds no risk that the queue does not
already impose, and it is retried. Make the effect safe to repeat with ``dedupe=`` or an
``Inbox``. ``max_attempts``, when given, is ``retry.replace(max_attempts=max_attempts)``.

While a handler runs, a heartbeat extends the lease of every message the worker holds (and
the dedupe lease), so a slow handler does not lose its message to another worker. On SIGTERM
or SIGINT (or ``stop()``) the worker claims nothing more, finishes the messages it holds,
acks them and returns.

What "exactly once" means here: the broker delivers at least once. ``dedupe`` suppresses
every redelivery of a message whose handling completed. A process killed after the
handler's side effect and before the dedupe record is marked completed leaves a window in
which the effect can run twice; to close it, record the effect and the message id in one
transaction of the handler's own database (``stoic.messaging.Inbox``). docs/messaging.md
explains both.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .. import clock, context
from ..errors import CodecError
from ..events import dispatcher
from ..idempotency.store import Claim, ClaimStatus, Store
from ..outcome import Outcome, classify
from ..policies.backoff import exponential
from ..policies.retry import Retry
from .broker import Broker, Waking, check_topic
from .flow import FlowControl, Permit
from .model import (
    REQUEST_ID_HEADER,
    Message,
    MessageDeadLettered,
    MessageHandled,
    MessageRetried,
)

__all__ = ["Action", "Worker", "WorkerCounts"]

_log = logging.getLogger("stoic.messaging")

Handler = Callable[[Message], Any]
_RETRYABLE = frozenset({Outcome.TRANSIENT, Outcome.THROTTLED, Outcome.UNKNOWN})
_DEFAULT_RETRY = Retry(max_attempts=5, backoff=exponential(1.0, 2.0, 300.0), name="worker")


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with a message after an attempt: ``ack``, ``retry`` after ``delay``
    seconds, ``dead`` with a ``reason`` and ``error``, or ``wait`` (another worker is
    handling it right now: give it back after ``delay``)."""

    kind: Literal["ack", "retry", "dead", "wait"]
    delay: float = 0.0
    reason: str = ""
    error: str | None = None
    outcome: str = ""
    error_type: str | None = None


_ACK = Action("ack")


@dataclass(slots=True)
class WorkerCounts:
    """What a worker did since it started (read it after ``run`` returns)."""

    handled: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0


class _Dedupe:
    """The worker's side of the idempotency ``Store`` protocol."""

    __slots__ = ("lease", "store", "ttl")

    def __init__(self, store: Store, lease: float, ttl: float) -> None:
        if not isinstance(store, Store):
            raise ValueError(
                f"dedupe must be an idempotency store (stoic.idempotency.Store), got {store!r}"
            )
        self.store, self.lease, self.ttl = store, lease, ttl


def _key(message: Message) -> str:
    return f"stoic-message:{message.topic}:{message.id}"


class Worker:
    """Consume ``topic`` from ``broker`` with ``handler``; see the module docstring.

    Args:
        broker: any stoic broker.
        topic: the topic (queue, stream) to consume.
        handler: ``handler(message)``, sync or async; ``message.payload`` is the decoded
            payload. Its return value is ignored; raising means "not done".
        retry: decides each redelivery (``Retry.next_delay``): backoff, ``on=``,
            ``max_time`` (counted from the message's first publish), budget, Retry-After,
            and the default ``max_attempts`` (its ``attempts``). The worker uses it as
            ``retry.replace(idempotent=True)`` (see the module docstring). By default 5
            attempts with exponential backoff from 1 s, doubling, capped at 300 s, full jitter.
        concurrency: messages handled at once (threads for ``run``, tasks for ``arun``).
        lease: seconds a claimed message stays invisible to other workers; the heartbeat
            renews it every ``lease / 3`` while the worker holds it.
        dedupe: an idempotency store; a message whose handling completed is not handled again.
        dedupe_ttl: seconds a completed message id is remembered (default a week).
        max_attempts: deliveries before a retryable failure is dead-lettered.
        accept_versions: schema versions this worker understands (``message.version``, the
            ``schema-version`` header, "1" when absent); others are dead-lettered with reason
            "incompatible version". None accepts every version.
        prefetch: messages claimed per broker call (more means fewer round trips; each is
            leased, and renewed, until handled).
        poll_interval: seconds to wait when the queue is empty before claiming again.
        name: names the worker in events and logs (default ``worker:<topic>``).
        flow: shared flow-control rules (``stoic.messaging.flow.FlowControl``): priorities,
            fairness across keys, a per-key concurrency limit, a global rate, schedules.
            The worker then claims one message at a time, in the order the rules give.
    """

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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not lease > 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
        if not dedupe_ttl > 0:
            raise ValueError(f"dedupe_ttl must be > 0 seconds, got {dedupe_ttl!r}")
        if max_attempts is None:
            max_attempts = retry.max_attempts
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
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
        self.broker = broker
        self.topic = topic
        self.handler = handler
        self.retry = retry
        # The decision the worker asks: the caller's Retry, idempotent (module docstring).
        self._decision = retry.replace(idempotent=True, max_attempts=max_attempts)
        self.concurrency = concurrency
        self.lease = float(lease)
        self.dedupe = dedupe
        self.max_attempts = max_attempts
        self.accept_versions = versions
        self.prefetch = prefetch
        self.poll_interval = float(poll_interval)
        self.name = name or f"worker:{topic}"
        self.counts = WorkerCounts()
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ counts too
        )
        self._dedupe = None if dedupe is None else _Dedupe(dedupe, self.lease, dedupe_ttl)
        self._stop = threading.Event()
        # A broker that announces publishes (LISTEN/NOTIFY) wakes an idle worker at once.
        self._wake = broker.wait if isinstance(broker, Waking) else None
        self._held: dict[str, tuple[Message, str | None]] = {}  # receipt -> (msg, dedupe token)
        self._held_lock = threading.Lock()
        self.flow = flow
        self._permits: dict[str, Permit] = {}  # receipt -> its key's place (flow control)
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

    # --- sync driver --------------------------------------------------------------------

    def run(self, *, stop_when_empty: bool = False, handle_signals: bool = True) -> WorkerCounts:
        """Consume until ``stop()``, SIGTERM/SIGINT, or (``stop_when_empty``) an empty queue.

        With ``concurrency=1`` a sync handler runs in the calling thread, otherwise in
        ``concurrency`` threads; an async handler makes this run
        ``arun`` in a new event loop. Returns the counts of what was done.
        """
        if self._is_async:
            return asyncio.run(
                self.arun(stop_when_empty=stop_when_empty, handle_signals=handle_signals)
            )
        self._stop.clear()
        with self._signals(handle_signals):
            beat_stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(beat_stop,),
                                    name=f"{self.name}-lease", daemon=True)
            beat.start()
            try:
                if self.concurrency == 1:
                    # In the caller's thread: a handler may use objects (a sqlite3
                    # connection) that belong to the thread that created them.
                    self._loop(stop_when_empty)
                else:
                    self._threads(stop_when_empty)
            finally:
                self._stop.set()
                beat_stop.set()
                beat.join()
        return self.counts

    def _threads(self, stop_when_empty: bool) -> None:
        threads = [
            threading.Thread(
                target=self._loop, args=(stop_when_empty,), name=f"{self.name}-{i}",
                daemon=True,
            )
            for i in range(self.concurrency)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():  # join in slices, so signals reach the main thread
                    t.join(0.2)
        finally:
            self._stop.set()

    def stop(self) -> None:
        """Stop claiming; ``run``/``arun`` return once the held messages are finished."""
        self._stop.set()

    @contextlib.contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _heartbeat(self, stop: threading.Event) -> None:
        interval = self.lease / 3
        while not stop.wait(interval):
            self._keep_permits()
            with self._held_lock:
                held = list(self._held.values())
            for message, token in held:
                try:
                    if not self.broker.extend_lease(message, self.lease):
                        _log.warning("%s: lease on message %s was lost", self.name, message.id)
                    if token is not None and self._dedupe is not None:
                        self._dedupe.store.extend(_key(message), token, self.lease)
                except Exception:
                    _log.exception("%s: extending the lease of %s failed", self.name, message.id)

    def _loop(self, stop_when_empty: bool) -> None:
        broker, idle = self.broker, self.poll_interval
        errors = 0
        while not self._stop.is_set():
            try:
                batch = self._claim()
            except Exception:
                errors += 1
                _log.exception("%s: claim failed; retrying", self.name)
                self._stop.wait(min(idle * errors, 5.0))
                continue
            errors = 0
            if not batch:
                if stop_when_empty and self._empty():
                    return
                self._idle(idle)
                continue
            self._hold(batch)
            acks: list[Message] = []
            try:
                for message in batch:
                    action = self._handle(message)
                    if action.kind == "ack":
                        acks.append(message)
                    else:
                        self._settle(message, action)
                        self._release(message)
            finally:
                if acks:
                    self._release(*acks)  # the heartbeat must not extend what is being acked
                    try:
                        broker.ack_many(acks)
                    except Exception:  # the leases run out: redelivered, not lost
                        _log.exception("%s: ack failed; the messages will be redelivered",
                                       self.name)
                self._release(*batch)
                self._free(batch)

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

    def _free(self, batch: list[Message]) -> None:
        """Give back the key permits of a finished batch (flow control)."""
        flow = self.flow
        if flow is None:
            return
        with self._held_lock:
            permits = [p for p in (self._permits.pop(m.receipt, None) for m in batch) if p]
        for permit in permits:
            self._quietly(flow.release, permit)

    def _keep_permits(self) -> None:
        flow = self.flow
        if flow is None:
            return
        with self._held_lock:
            permits = list(self._permits.values())
        for permit in permits:
            self._quietly(flow.extend, permit, self.lease)

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

    def _handle(self, message: Message) -> Action:
        bad = self._check(message)
        if bad is not None:
            return bad
        token: str | None = None
        dedupe = self._dedupe
        if dedupe is not None:
            try:
                claim = dedupe.store.claim(_key(message), message.topic, lease=dedupe.lease,
                                           ttl=dedupe.ttl)
            except Exception:
                return self._claim_failed(message)
            early, token = self._claimed(message, claim)
            if early is not None:
                return early
        started = clock.now()
        try:
            with self._scope(message):
                self.handler(message)
        except Exception as exc:
            if token is not None and dedupe is not None:
                self._quietly(dedupe.store.release, _key(message), token)
            return self._failed(message, exc)
        if token is not None and dedupe is not None:
            self._quietly(dedupe.store.complete, _key(message), token, None, ttl=dedupe.ttl)
        self._done(message, started)
        return _ACK

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
            return _ACK
        if status is ClaimStatus.IN_FLIGHT:
            wait = claim.retry_after if claim.retry_after is not None else self.lease
            return Action("wait", delay=min(max(wait, 0.05), self.lease))
        return Action("dead", reason="dedupe key in use",
                      error=f"idempotency store answered {status.value!r} for {_key(message)!r}")

    def _done(self, message: Message, started: float) -> None:
        with self._count_lock:
            self.counts.handled += 1
        if dispatcher.sinks:
            dispatcher.emit(MessageHandled(
                name=self.name, topic=message.topic, message_id=message.id,
                attempts=message.attempts, duration=clock.now() - started,
            ))

    def _quietly(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            _log.exception("%s: dedupe store call %s failed", self.name,
                           getattr(fn, "__name__", fn))

    def _settle(self, message: Message, action: Action) -> None:
        """Carry out a retry, wait or dead-letter decision on the broker (sync)."""
        try:
            if action.kind == "dead":
                self.broker.dead_letter(message, action.reason, action.error)
            else:
                self.broker.nack(message, action.delay)
        except Exception:
            _log.exception("%s: could not %s message %s; its lease will run out",
                           self.name, action.kind, message.id)
            return
        self._report(message, action)

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

    def _scope(self, message: Message) -> contextlib.AbstractContextManager[Any]:
        """Request id and trace context of the message around the handler."""
        request_id = message.headers.get(REQUEST_ID_HEADER)
        if request_id is None:  # no context to bind: just the span, or nothing
            span = _process_span(message)
            return _NO_SCOPE if span is None else span
        return _bound_scope(message, request_id)

    # --- async driver -------------------------------------------------------------------

    async def arun(
        self, *, stop_when_empty: bool = False, handle_signals: bool = True
    ) -> WorkerCounts:
        """``run`` for asyncio: ``concurrency`` tasks; sync handlers run in threads."""
        self._stop.clear()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._stop.set)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        beat = asyncio.create_task(self._aheartbeat())
        try:
            await asyncio.gather(*(self._aloop(stop_when_empty) for _ in range(self.concurrency)))
        finally:
            self._stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.counts

    async def _aheartbeat(self) -> None:
        while True:
            await clock.asleep(self.lease / 3)
            if self.flow is not None:
                await asyncio.to_thread(self._keep_permits)
            with self._held_lock:
                held = list(self._held.values())
            for message, token in held:
                try:
                    if not await self.broker.aextend_lease(message, self.lease):
                        _log.warning("%s: lease on message %s was lost", self.name, message.id)
                    if token is not None and self._dedupe is not None:
                        await self._dedupe.store.aextend(_key(message), token, self.lease)
                except Exception:
                    _log.exception("%s: extending the lease of %s failed", self.name, message.id)

    async def _await_stop(self, seconds: float) -> None:
        end = clock.now() + seconds
        while not self._stop.is_set():
            left = end - clock.now()
            if left <= 0:
                return
            await clock.asleep(min(left, 0.05))

    async def _aloop(self, stop_when_empty: bool) -> None:
        broker, idle = self.broker, self.poll_interval
        errors = 0
        while not self._stop.is_set():
            try:
                if self.flow is None:
                    batch = await broker.aclaim(
                        self.topic, max_messages=self.prefetch, lease=self.lease
                    )
                else:
                    batch = await asyncio.to_thread(self._claim)
            except Exception:
                errors += 1
                _log.exception("%s: claim failed; retrying", self.name)
                await self._await_stop(min(idle * errors, 5.0))
                continue
            errors = 0
            if not batch:
                if stop_when_empty and await asyncio.to_thread(self._empty):
                    return
                if self._wake is None:
                    await self._await_stop(idle)
                else:
                    await asyncio.to_thread(self._idle, idle)
                continue
            self._hold(batch)
            acks: list[Message] = []
            try:
                for message in batch:
                    action = await self._ahandle(message)
                    if action.kind == "ack":
                        acks.append(message)
                    else:
                        await self._asettle(message, action)
                        self._release(message)
            finally:
                if acks:
                    self._release(*acks)
                    try:
                        await broker.aack_many(acks)
                    except Exception:
                        _log.exception("%s: ack failed; the messages will be redelivered",
                                       self.name)
                self._release(*batch)
                self._free(batch)

    async def _ahandle(self, message: Message) -> Action:
        bad = self._check(message)
        if bad is not None:
            return bad
        token: str | None = None
        dedupe = self._dedupe
        if dedupe is not None:
            try:
                claim = await dedupe.store.aclaim(_key(message), message.topic,
                                                  lease=dedupe.lease, ttl=dedupe.ttl)
            except Exception:
                return self._claim_failed(message)
            early, token = self._claimed(message, claim)
            if early is not None:
                return early
        started = clock.now()
        try:
            with self._scope(message):
                if self._is_async:
                    await _as_awaitable(self.handler(message))
                else:
                    await asyncio.to_thread(self.handler, message)
        except Exception as exc:
            if token is not None and dedupe is not None:
                try:
                    await dedupe.store.arelease(_key(message), token)
                except Exception:
                    _log.exception("%s: dedupe release failed", self.name)
            return self._failed(message, exc)
        if token is not None and dedupe is not None:
            try:
                await dedupe.store.acomplete(_key(message), token, None, ttl=dedupe.ttl)
            except Exception:
                _log.exception("%s: dedupe complete failed", self.name)
        self._done(message, started)
        return _ACK

    async def _asettle(self, message: Message, action: Action) -> None:
        try:
            if action.kind == "dead":
                await self.broker.adead_letter(message, action.reason, action.error)
            else:
                await self.broker.anack(message, action.delay)
        except Exception:
            _log.exception("%s: could not %s message %s; its lease will run out",
                           self.name, action.kind, message.id)
            return
        self._report(message, action)


_NO_SCOPE = contextlib.nullcontext()


@contextlib.contextmanager
def _bound_scope(message: Message, request_id: str) -> Iterator[None]:
    with context.bind(request_id=request_id):
        span = _process_span(message)  # created with the request id bound
        if span is None:
            yield
        else:
            with span:
                yield


async def _as_awaitable(value: Awaitable[Any] | Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


_process_span_fn: Any = None


def _process_span(message: Message) -> Any:
    """A consumer span from stoic.observability.otel, or None when it is unavailable."""
    global _process_span_fn
    if _process_span_fn is None:
        try:
            from ..observability.otel import process_span
        except ImportError:
            _process_span_fn = False
        else:
            _process_span_fn = process_span
    if _process_span_fn is False:
        return None
    try:
        return _process_span_fn(message.topic, dict(message.headers), message_id=message.id)
    except Exception:
        return None

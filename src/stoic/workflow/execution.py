"""One pass of a workflow run: its history, the checkpoint being built, and the fence.

``Execution`` is the engine's per-pass state, shared by the sync and async contexts (see
``stoic.workflow.context``), which only differ in how they call functions. Each ``ctx``
operation takes the next position in the run's history: a recorded outcome is replayed, a new
operation commits its intent first (``prepare``) and its outcome with the next boundary.

``Suspend``, ``Park`` and ``Stop`` end a pass (``BaseException``s, never swallowed by a
workflow's ``except Exception``); ``ending()`` turns them into the run's stored state.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from .. import clock
from ..codec import Codec
from ..context import bind, deadline, using_idempotency_key
from ..events import dispatcher
from ..messaging.outbox import Outbox
from ..outcome import Outcome, classify
from ..policies.base import Policy
from ..policies.retry import Retry, add_note
from .errors import CompensationOutcome, WorkflowDiverged, replayed_error
from .events import CompensationRan, StepCompleted, StepFailed
from .store import FOREVER, Claimed, Commit, RunUpdate, StepRecord, Store
from .tracing import tracer

__all__ = [
    "Attempt",
    "Execution",
    "Park",
    "Ready",
    "StepCall",
    "Stop",
    "Suspend",
    "describe_error",
]


class Suspend(BaseException):
    """Ends a pass: the run waits (``status``) until ``due_at``. Not an ``Exception``, so a
    workflow's ``except Exception`` never swallows it."""

    def __init__(self, status: str, due_at: float, wake_on_signal: str | None = None) -> None:
        super().__init__(status, due_at)
        self.status = status
        self.due_at = due_at
        self.wake_on_signal = wake_on_signal


class Park(BaseException):
    """Ends a pass: the run is parked as ``needs_attention`` for ``reason``."""

    def __init__(self, reason: str, error_type: str = "WorkflowNeedsAttention") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


class Stop(BaseException):
    """The run must end (cancelled, or past its deadline): compensations run, no new step."""

    def __init__(self, status: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What is recorded of an exception: its class, message and (if JSON-able) arguments."""
    if isinstance(exc, Stop):
        return {"type": exc.error_type, "message": exc.message}
    kind = type(exc)
    info: dict[str, Any] = {"type": kind.__qualname__, "module": kind.__module__,
                            "message": str(exc)}
    try:
        json.dumps(exc.args)
        info["args"] = list(exc.args)
    except (TypeError, ValueError):
        pass
    return info


@dataclass(frozen=True, slots=True)
class StepCall:
    """What ``ctx.step`` was asked to run (a compensation is one too, of kind ``compensate``)."""

    name: str
    kind: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    policy: Policy | None
    once: bool = False
    compensate: Callable[..., Any] | None = None

    def compensation(self) -> StepCall | None:
        """The call that undoes this one, if it has a ``compensate`` function."""
        if self.compensate is None:
            return None
        return StepCall(f"compensate:{self.name}", "compensate", self.compensate, self.args,
                        self.kwargs, self.policy)


@dataclass(frozen=True, slots=True)
class Ready:
    """A step about to run: its place in history and its key."""

    seq: int
    name: str
    kind: str
    key: str
    attempt: int
    first_started: float
    once: bool
    began: float


class Execution:
    """One pass of a claimed run: its history, the checkpoint being built, the fence."""

    def __init__(
        self, store: Store, claimed: Claimed, *, codec: Codec, retry: Retry, lease: float,
        code_version: int,
    ) -> None:
        self.store = store
        self.run = claimed.run
        self.fence = claimed.fence
        self.codec = codec
        self.retry = retry
        self.lease = lease
        self.code_version = code_version
        self.history = {s.seq: s for s in claimed.steps}
        self.seq = 0
        self.occurrences: dict[str, int] = {}
        self.pending = Commit()
        self.compensations: list[StepCall] = []
        self.compensating = False
        self.cancel_requested = claimed.run.cancel_requested
        self.diverged: WorkflowDiverged | None = None
        self.key: str | None = None
        self.final: RunUpdate | None = None   # the run-level update this pass committed

    # --- bookkeeping ----------------------------------------------------------------------

    def begin(self, name: str, kind: str) -> tuple[int, str, StepRecord | None]:
        seq = self.seq
        self.seq = seq + 1
        occurrence = self.occurrences.get(name, 0)
        self.occurrences[name] = occurrence + 1
        record = self.history.get(seq)
        if record is not None and (record.name != name or record.kind != kind):
            self.diverge(seq, record.name, name)
        return seq, f"{self.run.id}/{name}/{occurrence}", record

    def diverge(self, seq: int, recorded: str | None, requested: str | None) -> NoReturn:
        self.diverged = WorkflowDiverged(
            self.run.name, position=seq, recorded=recorded, requested=requested,
            recorded_version=self.run.version, code_version=self.code_version,
        )
        raise self.diverged

    def flush(self) -> None:
        """Commit what is pending (one transaction, under the fence)."""
        if self.pending:
            pending, self.pending = self.pending, Commit()
            self.cancel_requested = self.store.commit(self.fence, pending, clock.wall(),
                                                      self.lease)
            if pending.run is not None:
                self.final = pending.run

    def check_stop(self) -> None:
        if self.compensating:
            return
        if self.cancel_requested:
            raise Stop("cancelled", "WorkflowCancelled", "cancelled by request")
        at = self.run.deadline_at
        if at is not None and clock.wall() >= at:
            raise Stop("failed", "DeadlineExceeded", "the workflow's deadline passed")

    def bounds(self, stack: contextlib.ExitStack, ready: Ready, now: float) -> None:
        """Bind the step's key (unless ``once``) and the workflow's deadline in ``stack``."""
        if not ready.once:
            stack.enter_context(using_idempotency_key(ready.key))
        at = self.run.deadline_at
        if at is not None and not self.compensating:
            stack.enter_context(deadline(at - now))

    @contextlib.contextmanager
    def scope(self, ready: Ready) -> Iterator[None]:
        """What a running step sees: its key, the workflow's deadline, log fields."""
        self.key = ready.key
        with contextlib.ExitStack() as stack:
            self.bounds(stack, ready, clock.wall())
            stack.enter_context(bind(workflow_id=self.run.id, step=ready.name))
            hook = tracer()
            if hook is not None:
                stack.enter_context(hook.step_attempt(self.run, ready.name, ready.kind,
                                                      ready.key, ready.attempt))
            try:
                yield
            finally:
                self.key = None

    # --- steps ----------------------------------------------------------------------------

    def prepare(self, name: str, kind: str, once: bool) -> Ready | StepRecord:
        """The recorded outcome (a completed record) or a step ready to run, intent committed."""
        seq, key, record = self.begin(name, kind)
        now = clock.wall()
        if record is not None:
            if record.status == "completed":
                return record
            if record.status == "failed":
                raise replayed_error(name, record.error)
            if record.status == "started" and once:
                raise Park(
                    f"step {name!r} (key {key}) is once=True and was in flight when its worker "
                    f"stopped, so its effect is unknown; settle it with `stoic workflow resolve "
                    f"{self.run.id} {name} --done` or `--failed`"
                )
            if record.status == "retrying" and (record.due_at or 0.0) > now:
                raise Suspend("pending", record.due_at or now)
        self.check_stop()
        attempt = record.attempts + 1 if record is not None else 1
        first = record.started_at if record is not None else now
        self.pending.steps.append(StepRecord(seq, name, kind, key, "started", attempt, first,
                                             once=once))
        self.flush()
        return Ready(seq, name, kind, key, attempt, first, once, clock.now())

    def replayed(self, record: StepRecord) -> Any:
        return self.codec.decode(record.result or "null")

    def succeeded(self, ready: Ready, value: Any) -> Any:
        try:
            text = self.codec.encode(value)
        except Exception as exc:  # an unencodable result fails the step
            add_note(exc, f"stoic.workflow: the result of step {ready.name!r} cannot be stored")
            self.failed(ready, exc)
        now = clock.wall()
        self.pending.steps.append(StepRecord(
            ready.seq, ready.name, ready.kind, ready.key, "completed", ready.attempt,
            ready.first_started, result=text, finished_at=now, once=ready.once,
        ))
        if ready.once:
            self.flush()   # a once step's outcome must never be in doubt after it returned
        if dispatcher.sinks:
            dispatcher.emit(StepCompleted(
                name=self.run.name, workflow_id=self.run.id, step=ready.name,
                attempt=ready.attempt, duration=clock.now() - ready.began,
            ))
        return value

    def failed(self, ready: Ready, exc: BaseException) -> NoReturn:
        """Record a failure: retried later (durable backoff, Retry's decision), or final."""
        verdict = classify(exc)
        outcome = verdict.outcome
        if ready.once and outcome is Outcome.UNKNOWN:
            raise Park(
                f"step {ready.name!r} (key {ready.key}) is once=True and failed with an "
                f"unknown outcome ({type(exc).__qualname__}: {exc}); settle it with `stoic "
                f"workflow resolve {self.run.id} {ready.name} --done` or `--failed`"
            ) from exc
        now = clock.wall()
        with contextlib.ExitStack() as stack:
            self.bounds(stack, ready, now)
            wait = self.next_delay(ready, exc, verdict.retry_after,
                                   max(0.0, now - ready.first_started))
        error = json.dumps(describe_error(exc))
        if dispatcher.sinks:
            dispatcher.emit(StepFailed(
                name=self.run.name, workflow_id=self.run.id, step=ready.name,
                attempt=ready.attempt, outcome=outcome.value, error_type=type(exc).__qualname__,
                retry_in=wait, duration=clock.now() - ready.began,
            ))
        if wait is not None:
            self.pending.steps.append(StepRecord(
                ready.seq, ready.name, ready.kind, ready.key, "retrying", ready.attempt,
                ready.first_started, error=error, due_at=now + wait, once=ready.once,
            ))
            raise Suspend("pending", now + wait) from exc
        self.pending.steps.append(StepRecord(
            ready.seq, ready.name, ready.kind, ready.key, "failed", ready.attempt,
            ready.first_started, error=error, finished_at=now, once=ready.once,
        ))
        self.flush()
        raise exc

    def next_delay(self, ready: Ready, exc: BaseException, retry_after: float | None,
                   elapsed: float) -> float | None:
        """The durable retry's wait before the step runs again, or None to fail it.

        ``Retry`` decides, but a Retry-After longer than the backoff's maximum (where a call's
        Retry gives up) is waited out, durably and within ``max_time``: the run is due then.
        """
        config = self.retry.config
        if (retry_after is None or not config.respect_retry_after
                or retry_after <= config.backoff.max
                or (config.max_time is not None and elapsed + retry_after > config.max_time)):
            return self.retry.next_delay(ready.attempt, exc, elapsed=elapsed)
        patient = self.retry.replace(respect_retry_after=False)
        wait = patient.next_delay(ready.attempt, exc, elapsed=elapsed)
        return None if wait is None else max(wait, retry_after)

    def remember(self, call: StepCall) -> None:
        undo = call.compensation()
        if undo is not None and not self.compensating:
            self.compensations.append(undo)

    def attempt(self, call: StepCall) -> Attempt:
        """Begin ``call``: its recorded result, or an attempt to run it (intent committed)."""
        ready = self.prepare(call.name, call.kind, call.once)
        if isinstance(ready, StepRecord):
            self.remember(call)
            return Attempt(self, call, None, self.replayed(ready))
        return Attempt(self, call, ready, None)

    # --- time, signals, messages ----------------------------------------------------------

    def sleep(self, seconds: float, name: str) -> None:
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        seq, key, record = self.begin(name, "sleep")
        now = clock.wall()
        if record is not None and record.status == "completed":
            return
        wake = record.due_at if record is not None and record.due_at is not None else now + seconds
        if wake <= now:
            self.pending.steps.append(StepRecord(seq, name, "sleep", key, "completed", 1,
                                                 record.started_at if record else now,
                                                 due_at=wake, finished_at=now))
            return
        self.check_stop()
        if record is None:
            self.pending.steps.append(StepRecord(seq, name, "sleep", key, "started", 1, now,
                                                 due_at=wake))
        raise Suspend("sleeping", wake)

    def wait_for(self, event: str, timeout: float | None) -> Any:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        name = f"wait:{event}"
        seq, key, record = self.begin(name, "wait")
        if record is not None and record.status == "completed":
            return self.replayed(record)
        if record is not None and record.status == "failed":
            raise TimeoutError(f"no signal {event!r} arrived within the timeout")
        now = clock.wall()
        started = record.started_at if record is not None else now
        until = record.due_at if record is not None else (
            now + timeout if timeout is not None else None)
        if self.pending.signals_taken:
            self.flush()  # the store must see the signals this pass already took
        found = self.store.next_signal(self.run.id, event)
        if found is not None:
            signal_seq, payload = found
            self.pending.steps.append(StepRecord(seq, name, "wait", key, "completed", 1,
                                                 started, result=payload, due_at=until,
                                                 finished_at=now))
            self.pending.signals_taken.append(signal_seq)
            return self.codec.decode(payload)
        if until is not None and now >= until:
            self.pending.steps.append(StepRecord(seq, name, "wait", key, "failed", 1, started,
                                                 error='{"type":"TimeoutError"}', due_at=until,
                                                 finished_at=now))
            raise TimeoutError(f"no signal {event!r} arrived within {timeout} s")
        self.check_stop()
        if record is None:
            self.pending.steps.append(StepRecord(seq, name, "wait", key, "started", 1, now,
                                                 due_at=until))
        raise Suspend("waiting", until if until is not None else FOREVER, wake_on_signal=event)

    def publish(self, target: Any, topic: str, payload: Any) -> str:
        name = f"publish:{topic}"
        seq, key, record = self.begin(name, "publish")
        if record is not None and record.status == "completed":
            return str(self.replayed(record))
        self.codec.encode(payload)  # fail here, not inside the checkpoint commit
        now = clock.wall()
        if isinstance(target, Outbox):
            self.pending.outbox.append((target, topic, payload, key))
        else:  # a broker: its de-duplication by id absorbs the repeat after a crash
            target.publish(topic, payload, id=key)
        self.pending.steps.append(StepRecord(seq, name, "publish", key, "completed", 1, now,
                                             result=self.codec.encode(key), finished_at=now))
        return key

    # --- ends of a pass -------------------------------------------------------------------

    def complete(self, value: Any) -> None:
        if self.diverged is not None:
            raise self.diverged
        later = [seq for seq in self.history if seq >= self.seq]
        if later:
            first = min(later)
            self.diverge(first, self.history[first].name, None)
        self.pending.run = RunUpdate("completed", result=self.codec.encode(value))
        self.flush()

    def suspend(self, signal: Suspend) -> None:
        due = signal.due_at
        at = self.run.deadline_at
        if at is not None and not self.compensating:
            due = min(due, at)
        self.pending.run = RunUpdate(signal.status, due_at=due,
                                     wake_on_signal=signal.wake_on_signal)
        self.flush()

    def park(self, reason: str, error_type: str) -> None:
        self.pending.run = RunUpdate(
            "needs_attention", error=json.dumps({"type": error_type, "message": reason}))
        self.flush()

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """Turns the signals that end a pass into the run's stored state."""
        try:
            yield
        except Suspend as suspended:
            self.suspend(suspended)
        except Park as parked:
            self.park(parked.reason, parked.error_type)
        except WorkflowDiverged as diverged:
            self.park(str(diverged), "WorkflowDiverged")

    def check_failure(self, exc: BaseException) -> None:
        """Re-raise what is not a failure of the workflow (a pass ending, a divergence, the
        process being interrupted); return for an error that must be compensated."""
        if self.diverged is not None:
            raise self.diverged from None
        if isinstance(exc, (Suspend, Park)) or not isinstance(exc, (Exception, Stop)):
            raise exc

    def begin_compensation(self) -> list[StepCall]:
        self.compensating = True
        return list(reversed(self.compensations))

    def compensated(self, call: StepCall, error: BaseException | None) -> CompensationOutcome:
        name = call.name.removeprefix("compensate:")
        outcome = CompensationOutcome(name, "completed" if error is None else "failed",
                                      None if error is None else f"{type(error).__qualname__}: "
                                      f"{error}")
        if dispatcher.sinks:
            dispatcher.emit(CompensationRan(name=self.run.name, workflow_id=self.run.id,
                                            step=name, outcome=outcome.outcome))
        return outcome

    def fail(self, exc: BaseException, outcomes: list[CompensationOutcome]) -> None:
        info = describe_error(exc)
        info["compensations"] = [[o.step, o.outcome, o.error] for o in outcomes]
        status = exc.status if isinstance(exc, Stop) else "failed"
        self.pending.run = RunUpdate(status, error=json.dumps(info))
        self.flush()


class Attempt:
    """One run of a step's function: ``with attempt: attempt.value = fn(...)``.

    Inside the block the step's key, deadline and log fields are bound; leaving it records
    the result (or the failure: retried later, or raised). ``done`` when the result was
    replayed from the record and nothing must run.
    """

    __slots__ = ("_stack", "call", "ex", "ready", "value")

    def __init__(self, ex: Execution, call: StepCall, ready: Ready | None, value: Any) -> None:
        self.ex = ex
        self.call = call
        self.ready = ready
        self.value = value
        self._stack = contextlib.ExitStack()

    @property
    def done(self) -> bool:
        return self.ready is None

    def __enter__(self) -> Attempt:
        assert self.ready is not None
        self._stack.enter_context(self.ex.scope(self.ready))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        self._stack.__exit__(kind, exc, tb)  # the step's span sees how it ended
        ready = self.ready
        assert ready is not None
        if exc is not None:
            if isinstance(exc, Exception):  # recorded, then raised or retried later
                self.ex.failed(ready, exc)
            return
        self.ex.remember(self.call)
        self.ex.succeeded(ready, self.value)

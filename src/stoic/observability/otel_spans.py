"""The spans ``stoic.observability.otel`` makes for attempts and durable workflow passes and steps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from ..outcome import classify
from ..workflow.store import RunRecord

__all__ = ["AttemptSpan", "WorkflowSpans", "error_type", "is_http"]


def error_type(exc: BaseException) -> str:
    """The ``error.type`` attribute: the class's qualified name (bare for builtins)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class AttemptSpan:
    """One attempt as a span, current for the code inside it; the outcome is set on exit."""

    __slots__ = ("_ctx", "_error", "_set", "_span", "_token", "attempt", "name", "policy",
                 "tracer")

    def __init__(
        self, tracer: Any, policy: str, name: str, attempt: int, ctx: Any, set_span: Any,
        error: Any,
    ) -> None:
        self.tracer, self.policy, self.name, self.attempt = tracer, policy, name, attempt
        self._ctx, self._set, self._error = ctx, set_span, error
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> Any:
        span = self.tracer.start_span(
            f"{self.policy} {self.name}",
            attributes={
                "stoic.policy": self.policy, "stoic.name": self.name,
                "stoic.attempt": self.attempt,
            },
        )
        self._span = span
        self._token = self._ctx.attach(self._set(span))
        return span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if exc is None:
                span.set_attribute("stoic.outcome", "success")
            else:
                cancelled = not isinstance(exc, Exception)
                outcome = "cancelled" if cancelled else classify(exc).outcome.value  # type: ignore[arg-type]
                span.set_attribute("stoic.outcome", outcome)
                span.set_attribute("error.type", error_type(exc))
                span.set_status(self._error, f"{type(exc).__name__}: {exc}"[:200])
            if self.attempt > 1 and (self.policy == "http" or is_http(span)):
                span.set_attribute("http.request.resend_count", self.attempt - 1)
        finally:
            span.end()
            self._ctx.detach(self._token)


def is_http(span: Any) -> bool:
    """Whether an HTTP integration marked ``span`` (it carries an ``http.*`` attribute)."""
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return False
    return any(key.startswith("http.") for key in attributes)


# --- workflows -----------------------------------------------------------------------------

#: Outcomes of a workflow pass that mark its span as an error.
_PASS_ERRORS = frozenset({"failed", "error"})


class WorkflowSpans:
    """The workflow engine's tracer (``stoic.workflow.tracing.WorkflowTracer``).

    A pass of a run is a span ``workflow <name>`` whose parent is the span that started the
    run (its ``traceparent`` is stored with the run), so every pass of a run, in any process
    and after any recovery, lands in the starter's trace. Each step attempt is a child span
    ``step <name>`` of its pass; attempts of an inner policy (``Retry``) are its children.
    """

    __slots__ = ("_ctx", "_error", "_trace", "_tracer")

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace

        self._tracer, self._trace, self._ctx = tracer, trace, context
        self._error = trace.StatusCode.ERROR

    def traceparent(self) -> str | None:
        span_context = self._trace.get_current_span().get_span_context()
        if not span_context.is_valid:
            return None
        return (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                f"{int(span_context.trace_flags):02x}")

    def _parent(self, traceparent: str | None) -> Any:
        if not traceparent:
            return None
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        return parent if self._trace.get_current_span(parent).get_span_context().is_valid \
            else None

    @contextlib.contextmanager
    def run_pass(self, run: RunRecord, recovered: bool) -> Iterator[Callable[[str], None]]:
        parent = self._parent(run.trace)
        links = []
        if parent is not None and recovered:  # also as a link: the starter, seen on recovery
            links.append(self._trace.Link(self._trace.get_current_span(parent).get_span_context(),
                                          {"stoic.workflow.link": "starter"}))
        span = self._tracer.start_span(
            f"workflow {run.name}", context=parent, links=links,
            attributes={
                "stoic.workflow.id": run.id, "stoic.workflow.name": run.name,
                "stoic.workflow.version": run.version, "stoic.workflow.token": run.token,
                "stoic.workflow.recovered": recovered,
            },
        )
        outcome: list[str] = []
        try:
            with self._scope(span):
                yield outcome.append
            if outcome:
                span.set_attribute("stoic.outcome", outcome[-1])
                if outcome[-1] in _PASS_ERRORS:
                    span.set_status(self._error, f"workflow pass ended {outcome[-1]}")
        finally:
            span.end()

    @contextlib.contextmanager
    def step_attempt(
        self, run: RunRecord, step: str, kind: str, key: str, attempt: int
    ) -> Iterator[object]:
        span = self._tracer.start_span(
            f"{kind} {step}",
            attributes={
                "stoic.workflow.id": run.id, "stoic.workflow.name": run.name,
                "stoic.workflow.version": run.version, "stoic.workflow.step": step,
                "stoic.workflow.step.kind": kind, "stoic.idempotency_key": key,
                "stoic.attempt": attempt,
            },
        )
        try:
            with self._scope(span):
                yield span
            span.set_attribute("stoic.outcome", "success")
        finally:
            span.end()

    @contextlib.contextmanager
    def _scope(self, span: Any) -> Iterator[None]:
        """``span`` current inside the block; what leaves the block is recorded on it."""
        token = self._ctx.attach(self._trace.set_span_in_context(span))
        try:
            yield
        except BaseException as exc:
            cancelled = not isinstance(exc, Exception)
            outcome = "cancelled" if cancelled else classify(exc).outcome.value  # type: ignore[arg-type]
            span.set_attribute("stoic.outcome", outcome)
            span.set_attribute("error.type", error_type(exc))
            span.set_status(self._error, f"{type(exc).__name__}: {exc}"[:200])
            raise
        finally:
            self._ctx.detach(token)


"""OpenTelemetry for stoic: a span per attempt, metrics from events, context in headers.

``instrument()`` decides once whether telemetry is on. Tracing is on when a real tracer
provider is given or configured globally (the API's default no-op/proxy provider means
off); metrics likewise with the meter provider. When it is off, or ``instrument`` was never
called, nothing is installed: policies see no sink and no attempt hook, ``inject`` and
``extract`` return at once, and no per-call check of OpenTelemetry's state ever happens.
Configure the SDK first, then call ``instrument()``.

Traces: each attempt a policy makes (``Retry`` wraps every attempt in
``dispatcher.attempt_scope``) becomes a child span of the caller's span, as HTTP clients
make one span per resend. Attributes: ``stoic.policy``, ``stoic.name``, ``stoic.attempt``
(1-based), ``stoic.outcome`` (the classified outcome of the exception that left the attempt,
or ``success``), ``error.type`` on failure, and ``http.request.resend_count`` (attempt - 1)
on retried attempts of a span that an HTTP integration marked by setting an ``http.*``
attribute on it. Messaging integrations use ``publish_span`` and ``process_span``, which
carry the W3C trace context in the message headers so that producer and consumer share a
trace. Durable workflows (``stoic.workflow``): ``start()`` stores the starter's
``traceparent`` with the run; each pass is a span ``workflow <name>``, a child of the starter
in any process and after any recovery (a recovered pass also links to it), and each step
attempt a child span ``<kind> <step>`` (see ``stoic.workflow.tracing``).

Metrics (meter ``stoic``), all low-cardinality: ``stoic.calls`` {stoic.name, stoic.outcome},
``stoic.attempts`` {stoic.name}, ``stoic.retries`` {stoic.name}, ``stoic.rejections``
{stoic.name, stoic.reason}, ``stoic.messages`` {messaging.destination.name, stoic.result},
``stoic.idempotent_replays`` {stoic.name}, histogram ``stoic.call.duration`` (s)
{stoic.name}, observable gauges ``stoic.circuit_breaker.state`` {stoic.name, stoic.state}
and ``stoic.adaptive_limit`` {stoic.name}; a request a ``LoadShedder`` refused counts in
``stoic.rejections`` with ``stoic.reason`` ``shed_<priority>``.
Durable workflows: counters ``stoic.workflow.started``, ``.completed``, ``.recovered``,
``.lease_lost`` {stoic.workflow} and ``.failed``, ``.compensated``, ``.parked``
{stoic.workflow, stoic.outcome}; histogram ``stoic.workflow.step.duration`` (s)
{stoic.workflow, stoic.step, stoic.outcome}.

The spans are built in ``otel_spans``, the metric instruments in ``otel_metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

from ..events import dispatcher
from ..workflow.tracing import set_tracer as set_workflow_tracer
from ._events import connect
from .otel_metrics import DURATION_BUCKETS, MetricRecorder
from .otel_spans import AttemptSpan, WorkflowSpans, error_type

__all__ = [
    "DURATION_BUCKETS",
    "annotate_http",
    "extract",
    "inject",
    "instrument",
    "is_instrumented",
    "process_span",
    "publish_span",
    "uninstrument",
]


_NULL: AbstractContextManager[None] = contextlib.nullcontext()


class _Tracing:
    """Tracing switched on: the tracer, and the OpenTelemetry modules the helpers use.

    The modules are looked up here, once, so ``inject``, ``extract`` and ``annotate_http``
    (called per message or per attempt) never run an import statement.
    """

    __slots__ = ("propagate", "trace", "tracer")

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import propagate, trace

        self.tracer, self.trace, self.propagate = tracer, trace, propagate


class _Instrumentation:
    """What ``instrument`` decided: tracing (or None), and how to undo the installation."""

    def __init__(self, tracing: _Tracing | None, unsubscribe: Callable[[], None] | None) -> None:
        self.tracing = tracing
        self.unsubscribe = unsubscribe


_installed: _Instrumentation | None = None
#: Set while tracing is instrumented, None otherwise: the one check the helpers make.
_tracing: _Tracing | None = None


def _version() -> str:
    from .. import __version__

    return __version__


def _is_noop(provider: Any) -> bool:
    name = type(provider).__name__
    return "NoOp" in name or "Proxy" in name


def instrument(tracer_provider: Any = None, meter_provider: Any = None) -> bool:
    """Send stoic's attempts to OpenTelemetry traces and its events to OpenTelemetry metrics.

    Uses the given providers, or the global ones. Returns whether anything was switched on
    (False when neither a tracer nor a meter provider is configured). Calling it again
    replaces the previous instrumentation. Needs ``opentelemetry-api`` (``stoic[otel]``).
    """
    global _installed, _tracing
    uninstrument()
    from opentelemetry import metrics, trace

    tracer = None
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if not _is_noop(provider):
        tracer = provider.get_tracer("stoic", _version())
    unsubscribe = None
    mprovider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    if not _is_noop(mprovider):
        recorder = MetricRecorder(mprovider.get_meter("stoic", _version()))
        unsubscribe = connect(recorder)
    if tracer is None and unsubscribe is None:
        return False
    _tracing = _Tracing(tracer) if tracer is not None else None
    _installed = _Instrumentation(_tracing, unsubscribe)
    if tracer is not None:
        status_error = trace.StatusCode.ERROR
        set_span_in_context = trace.set_span_in_context
        from opentelemetry import context as otel_context

        def attempt_scope(policy: str, name: str, attempt: int) -> AttemptSpan:
            return AttemptSpan(
                tracer, policy, name, attempt, otel_context, set_span_in_context, status_error
            )

        dispatcher.set_attempt_scope(attempt_scope)
        set_workflow_tracer(WorkflowSpans(tracer))
    return True


def uninstrument() -> None:
    """Undo ``instrument``: remove the attempt hook and the metrics sink."""
    global _installed, _tracing
    installed, _installed, _tracing = _installed, None, None
    if installed is None:
        return
    if installed.unsubscribe is not None:
        installed.unsubscribe()
    if installed.tracing is not None:
        dispatcher.set_attempt_scope(None)
        set_workflow_tracer(None)


def is_instrumented() -> bool:
    """Whether ``instrument`` switched tracing or metrics on."""
    return _installed is not None


# --- propagation ---------------------------------------------------------------------------


class _Setter:
    def set(self, carrier: Any, key: str, value: str) -> None:
        if isinstance(carrier, list):
            as_bytes = any(isinstance(pair[0], bytes) for pair in carrier)
            lowered = key.lower()
            carrier[:] = [
                pair for pair in carrier if _text(pair[0]).lower() != lowered
            ]
            if as_bytes:
                carrier.append((key.encode("latin-1"), value.encode("latin-1")))
            else:
                carrier.append((key, value))
        else:
            carrier[key] = value


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


class _Getter:
    def get(self, carrier: Any, key: str) -> list[str] | None:
        lowered = key.lower()
        if isinstance(carrier, list | tuple):
            found = [_text(v) for k, v in carrier if _text(k).lower() == lowered]
            return found or None
        value = carrier.get(key)
        if value is None:
            for name, candidate in carrier.items():
                if _text(name).lower() == lowered:
                    value = candidate
                    break
        if value is None:
            return None
        if isinstance(value, list | tuple):
            return [_text(v) for v in value]
        return [_text(value)]

    def keys(self, carrier: Any) -> list[str]:
        if isinstance(carrier, list | tuple):
            return [_text(k) for k, _ in carrier]
        return [_text(k) for k in carrier]


_SETTER = _Setter()
_GETTER = _Getter()

Carrier = MutableMapping[str, Any] | list[tuple[Any, Any]]
_C = TypeVar("_C", bound=Carrier)


def inject(carrier: _C) -> _C:
    """Write the current trace context into ``carrier`` and return it.

    ``carrier`` is a dict of headers or a list of ``(name, value)`` pairs (``str`` or, as in
    ASGI, ``bytes``; an existing header of the same name is replaced). Does nothing unless
    tracing was switched on with ``instrument``.
    """
    tracing = _tracing
    if tracing is None:
        return carrier
    tracing.propagate.inject(carrier, setter=_SETTER)
    return carrier


def annotate_http(method: str, url: str) -> None:
    """Mark the current attempt span as an HTTP client request (method and URL).

    HTTP integrations call this per attempt, which is what makes the attempt scope record
    ``http.request.resend_count`` on retries. Does nothing unless tracing is on.
    """
    tracing = _tracing
    if tracing is None:
        return
    span = tracing.trace.get_current_span()
    if span.is_recording():
        span.set_attribute("http.request.method", method)
        span.set_attribute("url.full", url)


def extract(carrier: Any) -> Any:
    """The OpenTelemetry ``Context`` carried in ``carrier`` (headers as for ``inject``).

    Returns None, at once, unless tracing was switched on with ``instrument``. Header names
    match case-insensitively.
    """
    tracing = _tracing
    if tracing is None or carrier is None:
        return None
    return tracing.propagate.extract(carrier, getter=_GETTER)


class _MessageSpan:
    """A PRODUCER (``publish``) or CONSUMER (``process``) span, current inside the block."""

    __slots__ = ("_carrier", "_destination", "_kind", "_message_id", "_span", "_stack",
                 "_system", "_tracing")

    def __init__(
        self, tracing: _Tracing, kind: str, destination: str, carrier: Any, system: str,
        message_id: str | None,
    ) -> None:
        self._tracing, self._kind, self._destination = tracing, kind, destination
        self._carrier, self._system, self._message_id = carrier, system, message_id
        self._stack = contextlib.ExitStack()
        self._span: Any = None

    def __enter__(self) -> Any:
        trace = self._tracing.trace
        operation = "send" if self._kind == "publish" else "process"
        attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.destination.name": self._destination,
            "messaging.operation.type": operation,
            "messaging.operation.name": self._kind,
        }
        if self._message_id is not None:
            attributes["messaging.message.id"] = self._message_id
        if self._kind == "publish":
            span = self._tracing.tracer.start_span(
                f"publish {self._destination}", kind=trace.SpanKind.PRODUCER,
                attributes=attributes,
            )
        else:
            parent = extract(self._carrier)
            links = []
            producer = trace.get_current_span(parent).get_span_context() if parent else None
            if producer is not None and producer.is_valid:
                links.append(trace.Link(producer))
            span = self._tracing.tracer.start_span(
                f"process {self._destination}", context=parent,
                kind=trace.SpanKind.CONSUMER, attributes=attributes, links=links,
            )
        self._stack.enter_context(trace.use_span(span, end_on_exit=True, record_exception=False,
                                                 set_status_on_exception=False))
        if self._kind == "publish":
            inject(self._carrier)  # the context of the span just made current
        self._span = span
        return span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._span is not None:
            self._span.set_attribute("error.type", error_type(exc))
            self._span.set_status(self._tracing.trace.StatusCode.ERROR,
                                  f"{type(exc).__name__}: {exc}"[:200])
        self._stack.close()


def publish_span(
    destination: str, headers: Carrier, *, system: str = "stoic", message_id: str | None = None
) -> AbstractContextManager[Any]:
    """A PRODUCER span around publishing to ``destination``; writes its context into ``headers``.

    Call it before the message's headers are serialised. A no-op context manager (yielding
    None) unless tracing is instrumented.
    """
    tracing = _tracing
    if tracing is None:
        return _NULL
    return _MessageSpan(tracing, "publish", destination, headers, system, message_id)


def process_span(
    destination: str, headers: Any, *, system: str = "stoic", message_id: str | None = None
) -> AbstractContextManager[Any]:
    """A CONSUMER span around handling a message, a child of (and linked to) its producer.

    A no-op context manager (yielding None) unless tracing is instrumented.
    """
    tracing = _tracing
    if tracing is None:
        return _NULL
    return _MessageSpan(tracing, "process", destination, headers, system, message_id)

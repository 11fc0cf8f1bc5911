"""Structured logs: one JSON object per line, for stoic's records and the application's alike.

stoic itself logs through the standard library (logger ``stoic``): a retry at DEBUG, a
give-up and a breaker transition at WARNING, never a line per successful call. Nothing is
configured at import; ``configure`` installs one handler on the root logger whose formatter
is structlog's, so ``logging.getLogger(...)`` records and ``structlog.get_logger()`` events
come out the same way, each with:

``timestamp`` (ISO 8601, UTC), ``level``, ``event`` (the message), ``logger``,
``trace_id`` and ``span_id`` (hex, from the active OpenTelemetry span, when one is recording
or was propagated), every field bound with ``stoic.context.bind`` (``request_id``,
``user_id``, ...; a durable workflow's pass binds ``workflow_id`` and ``workflow``, its steps
also ``step``), ``service``, ``version``, ``env`` (when given), the event's own fields
(structlog key-values, or ``extra=`` of a stdlib call), and ``exception`` when there is one.
Absent values are left out rather than written as null.

Needs ``structlog`` (``stoic[logs]``). The OpenTelemetry lookup is chosen once, in
``configure``: without ``opentelemetry-api`` installed there is no per-line cost for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import IO, Any

from .. import context
from .._validate import non_empty

__all__ = ["ECS_FIELDS", "OTEL_FIELDS", "configure", "get_logger", "unconfigure"]

#: How each field maps to the Elastic Common Schema.
ECS_FIELDS: dict[str, str] = {
    "timestamp": "@timestamp",
    "level": "log.level",
    "event": "message",
    "logger": "log.logger",
    "trace_id": "trace.id",
    "span_id": "span.id",
    "request_id": "http.request.id",
    "user_id": "user.id",
    "service": "service.name",
    "version": "service.version",
    "env": "service.environment",
    "exception": "error.stack_trace",
}

#: How each field maps to the OpenTelemetry log data model (and resource attributes).
OTEL_FIELDS: dict[str, str] = {
    "timestamp": "Timestamp",
    "level": "SeverityText",
    "event": "Body",
    "logger": "InstrumentationScope.Name",
    "trace_id": "TraceId",
    "span_id": "SpanId",
    "request_id": "Attributes[http.request.id]",
    "user_id": "Attributes[user.id]",
    "service": "Resource[service.name]",
    "version": "Resource[service.version]",
    "env": "Resource[deployment.environment.name]",
    "exception": "Attributes[exception.stacktrace]",
}

_handler: logging.Handler | None = None

EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], EventDict]


def _level(level: str | int) -> int:
    if isinstance(level, bool):
        raise ValueError(f"level must be a logging level name or number, got {level!r}")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if isinstance(number, int):
            return number
    raise ValueError(
        f"level must be a logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL) "
        f"or number, got {level!r}"
    )


def _trace_processor() -> Processor | None:
    """Adds trace_id/span_id from the current span; None when OpenTelemetry is absent."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    get_current_span = trace.get_current_span

    def add_trace(logger: Any, method: str, event: EventDict) -> EventDict:
        ctx = get_current_span().get_span_context()
        if ctx.is_valid:
            event.setdefault("trace_id", format(ctx.trace_id, "032x"))
            event.setdefault("span_id", format(ctx.span_id, "016x"))
        return event

    return add_trace


def _static_processor(service: str, version: str, env: str | None) -> Processor:
    static = {"service": service, "version": version}
    if env is not None:
        static["env"] = env
    current = context.current

    def add_fields(logger: Any, method: str, event: EventDict) -> EventDict:
        for key, value in current().items():
            event.setdefault(key, value)
        for key, value in static.items():
            event.setdefault(key, value)
        return event

    return add_fields


def _lowercase_level(logger: Any, method: str, event: EventDict) -> EventDict:
    level = event.get("level")
    if isinstance(level, str):
        event["level"] = level.lower()
    return event


def configure(
    service: str,
    version: str,
    env: str | None = None,
    level: str | int = "INFO",
    json: bool = True,
    *,
    stream: IO[str] | None = None,
) -> None:
    """Log JSON lines (or readable console lines with ``json=False``) to ``stream``.

    Replaces the handler a previous ``configure`` installed, and sets the root logger's
    level. ``stream`` defaults to standard error. Raises ValueError for an empty ``service``
    or ``version``, or an unknown ``level``.
    """
    global _handler
    non_empty("service", service)
    non_empty("version", version)
    if env is not None and not isinstance(env, str):
        raise ValueError(f"env must be a string or None, got {env!r}")
    number = _level(level)
    import structlog

    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        _lowercase_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    trace_processor = _trace_processor()
    if trace_processor is not None:
        shared.append(trace_processor)
    shared.append(_static_processor(service, version, env))
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared, structlog.stdlib.ExtraAdder(),
            structlog.stdlib.PositionalArgumentsFormatter(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(number)
    _handler = handler


def unconfigure() -> None:
    """Remove the handler ``configure`` installed and restore structlog's defaults."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    try:
        import structlog
    except ImportError:
        return
    structlog.reset_defaults()


def get_logger(name: str | None = None) -> Any:
    """A structlog logger routed through the standard library (``configure`` first)."""
    import structlog

    return structlog.stdlib.get_logger(name)

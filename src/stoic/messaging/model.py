"""What travels through a queue: ``Message``, its headers, dead letters, queue statistics.

A message's payload is stored as JSON text (``body``) made by ``stoic.codec``; it is decoded
only when the consumer reads ``message.payload``. Decoding late is deliberate: a corrupted or
foreign row must reach the worker as a message it can dead-letter, not crash the broker
while it is claiming a batch.

Headers are a flat ``str -> str`` mapping. stoic fills three of them on publish:
``request-id`` (from ``stoic.context``), ``traceparent`` (W3C trace context, when
OpenTelemetry is configured) and, if the publisher sets one, ``schema-version``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import codec, context
from ..events import Event, dispatcher

__all__ = [
    "DEFAULT_VERSION",
    "REQUEST_ID_HEADER",
    "TRACEPARENT_HEADER",
    "VERSION_HEADER",
    "DeadLetter",
    "DeadLettersRequeued",
    "Message",
    "MessageDeadLettered",
    "MessageHandled",
    "MessageRetried",
    "QueueStats",
    "decode_headers",
    "dump_headers",
    "encode_payload",
    "message_from_row",
    "message_ids",
    "new_id",
    "outgoing_headers",
    "report_requeued",
    "split_receipt",
]

VERSION_HEADER = "schema-version"
REQUEST_ID_HEADER = "request-id"
TRACEPARENT_HEADER = "traceparent"
DEFAULT_VERSION = "1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One delivery of a message.

    Attributes:
        id: the message id; publishing the same id again within the broker's de-duplication
            window is a no-op, and consumers de-duplicate on it.
        topic: the queue (SQLite), stream (Redis) or queue (RabbitMQ) it was published to.
        body: the payload as JSON text; ``payload`` decodes it.
        headers: string headers (request id, trace context, schema version, your own).
        attempts: deliveries so far, this one included (1 on the first delivery).
        created_at: wall-clock seconds when it was first published.
        available_at: wall-clock seconds from which it could be delivered (delays, backoff).
        receipt: the broker's handle for this delivery; ``ack``/``nack`` need it. A receipt
            from an expired lease no longer acks: the message has been handed to someone else.
        defect: why the broker could not read the stored entry (corrupt headers, missing
            fields), or None. A worker dead-letters such a message instead of handling it.
    """

    id: str
    topic: str
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0
    created_at: float = 0.0
    available_at: float = 0.0
    receipt: str = ""
    defect: str | None = None

    @property
    def payload(self) -> Any:
        """The decoded payload. Raises ``stoic.CodecError`` when the body is not valid."""
        return codec.decode(self.body)

    @property
    def version(self) -> str:
        """The schema version the publisher declared (``"1"`` when it declared none)."""
        return self.headers.get(VERSION_HEADER, DEFAULT_VERSION)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A message that will not be retried again, and why.

    ``reason`` is the category ("permanent failure", "attempts exhausted", "incompatible
    version", "malformed", or what the caller passed); ``error`` is the exception's type and
    text when an exception caused it.
    """

    message: Message
    reason: str
    error: str | None
    dead_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one topic at one moment.

    ``ready``: deliverable now; ``delayed``: waiting for their ``available_at`` (retry backoff
    or a publish delay); ``in_flight``: leased to a consumer and not yet acked; ``dead``: in
    the dead-letter queue. A broker that cannot tell delayed from ready (RabbitMQ) reports
    what it can and leaves the rest at 0. ``recovered``: deliveries so far that took a
    message back from a consumer whose lease ran out (it died, hung or lost its connection)
    -- stalled work that came back by itself. RabbitMQ counts only leases that ran out in
    the same broker object (it cannot tell a dead consumer's messages from others it gave
    back). It is a running total, not a count of what is queued, so it takes no part in
    comparing two ``QueueStats``.
    """

    topic: str
    ready: int
    delayed: int
    in_flight: int
    dead: int
    recovered: int = field(default=0, compare=False)


# --- events (for metrics and logs) -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageHandled(Event):
    """A worker's handler succeeded on a message (``name`` is the worker's name)."""

    topic: str
    message_id: str
    attempts: int
    duration: float
    duplicate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRetried(Event):
    """A handler failed with a retryable outcome; the message comes back after ``delay``."""

    topic: str
    message_id: str
    attempts: int
    delay: float
    outcome: str
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDeadLettered(Event):
    """A message went to the dead-letter queue: ``reason`` says why, ``error_type`` what."""

    topic: str
    message_id: str
    attempts: int
    reason: str
    error_type: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLettersRequeued(Event):
    """Dead letters were put back on their queue (``count`` of them)."""

    topic: str
    count: int


# --- helpers shared by the brokers -------------------------------------------------------


_RANDOM_BITS = 72
# This process's last id (microseconds, random part). A forked child starts from its parent's:
# its ids still differ, as each step up is random and a fork takes far more than a microsecond.
_last_id = [0, 0]
_id_lock = threading.Lock()


def new_id() -> str:
    """A fresh message id: 32 hex digits, microseconds since the epoch then 72 random bits.

    Unique without coordination between processes, and increasing within a process: an id
    made in the same microsecond as the one before (or after the clock stepped back) takes
    that one's time and a random part a random step above it. So ids land at the end of a
    database index instead of at random pages (fewer pages written per commit), and ids
    sorted are publish order (a broker that orders ties by id keeps a batch's order).
    """
    now = time.time_ns() // 1000
    fresh = int.from_bytes(os.urandom(9), "big")
    with _id_lock:
        last_time, last_random = _last_id
        if now <= last_time:
            now, fresh = last_time, last_random + 1 + (fresh >> 40)  # up a random 32-bit step
            if fresh >> _RANDOM_BITS:  # past the random part's range: the next microsecond
                now, fresh = last_time + 1, fresh & ((1 << _RANDOM_BITS) - 1)
        _last_id[0], _last_id[1] = now, fresh
    return f"{now:014x}{fresh:018x}"


class Encoded:
    """A payload already encoded by ``stoic.codec`` (its JSON text), published as it is.

    ``OutboxRelay`` passes stored bodies on this way: a relay need not understand a payload
    to forward it, so a type that only the producing service registered with the codec, or a
    body that no longer decodes, never stops it. A consumer that cannot decode a body
    dead-letters that one message as malformed, and goes on.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str of encoded JSON, got {type(text).__name__}")
        self.text = text

    def __repr__(self) -> str:
        return f"Encoded({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def encode_payload(payload: Any) -> str:
    """Encode before anything is written, so an unencodable payload fails the publish whole."""
    if type(payload) is Encoded:
        return payload.text
    return codec.encode(payload)


def outgoing_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's headers plus the request id and trace context of the current context.

    Values the caller set win. Trace context comes from ``stoic.observability.otel.inject``
    when that module is importable (it needs the otel extra).
    """
    out: dict[str, str] = {}
    request_id = context.get("request_id")
    if request_id is not None:
        out[REQUEST_ID_HEADER] = str(request_id)
    _inject_trace(out)
    if headers:
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(
                    f"headers must map str to str, got {key!r}: {value!r}"
                )
            out[key] = value
    return out


_inject: Any = None


def _inject_trace(headers: dict[str, str]) -> None:
    global _inject
    if _inject is None:  # looked up once per process: a failed import is not retried per call
        try:
            from ..observability.otel import inject
        except ImportError:
            _inject = False
        else:
            _inject = inject
    if _inject is False:
        return
    try:
        _inject(headers)
    except Exception:  # tracing must never break publishing
        return


def decode_headers(raw: str | bytes | None) -> tuple[dict[str, str], str | None]:
    """Headers stored as JSON text, and a defect description when they cannot be read."""
    if raw is None or raw == "" or raw == b"":
        return {}, None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return {}, f"headers are not valid JSON: {exc}"
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return {}, "headers are not a JSON object of strings"
    return value, None


def dump_headers(headers: Mapping[str, str]) -> str:
    """Headers as compact JSON text, the form the SQLite and Redis brokers store."""
    return json.dumps(dict(headers), separators=(",", ":"), ensure_ascii=False)


def message_ids(ids: Sequence[str] | None, n: int) -> list[str]:
    """Caller ids (validated) or fresh ones, one per payload."""
    if ids is None:
        return [new_id() for _ in range(n)]
    if isinstance(ids, str):
        raise ValueError(f"ids must be a sequence of strings, not a string: {ids!r}")
    out = list(ids)
    if len(out) != n:
        raise ValueError(f"ids must have one id per payload: {len(out)} ids for {n} payloads")
    for i in out:
        if not isinstance(i, str) or not i or len(i) > 255 or any(ord(c) < 32 for c in i):
            raise ValueError(
                f"every id must be a non-empty printable string of at most 255 characters,"
                f" got {i!r}"
            )
    return out


def report_requeued(broker: object, topic: str, count: int) -> int:
    """Emit ``DeadLettersRequeued`` for a requeue that moved ``count`` messages; returns it."""
    if count and dispatcher.sinks:
        dispatcher.emit(DeadLettersRequeued(name=type(broker).__name__, topic=topic,
                                            count=count))
    return count


def split_receipt(message: Message, broker: str) -> tuple[int, str]:
    """``(seq, token)`` of a receipt ``"seq:token"`` made by an SQL broker's claim."""
    seq, _, token = message.receipt.partition(":")
    try:
        return int(seq), token
    except ValueError:
        raise ValueError(f"not a receipt from {broker}.claim: {message.receipt!r}") from None


def message_from_row(
    topic: str, row: Sequence[Any], token: str, available_at: float
) -> Message:
    """A ``Message`` from an SQL broker's row ``(seq, id, body, headers, attempts,
    created_at)``; a row that cannot be read becomes a message with a ``defect``."""
    seq, msg_id, body, raw_headers, attempts, created_at = row
    headers, defect = decode_headers(raw_headers)
    if not isinstance(body, str):
        defect = defect or f"body is not text (got {type(body).__name__})"
        body = "" if body is None else str(body)
    return Message(
        id=str(msg_id), topic=topic, body=body, headers=headers,
        attempts=int(attempts) if isinstance(attempts, int) else 0,
        created_at=float(created_at), available_at=float(available_at),
        receipt=f"{seq}:{token}" if token else "", defect=defect,
    )

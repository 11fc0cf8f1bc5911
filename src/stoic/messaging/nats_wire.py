"""What ``NatsBroker`` keeps and reads in JetStream: names, headers, streams, messages.

Stream and subject names of a topic (``Names``), the headers stoic writes, a held delivery
(``Held``), creating streams and consumers that another process may create at the same
moment, browsing a stream without consuming it, and turning stored messages back into
``Message`` and ``DeadLetter``. nats-py's errors are imported where they are needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from .broker import check_topic
from .model import DeadLetter, Message, decode_headers

__all__ = [
    "AT",
    "CREATED",
    "DEAD",
    "DURABLE",
    "HEADERS",
    "ID",
    "STOIC_ID",
    "TOKEN",
    "Held",
    "Names",
    "as_float",
    "browse",
    "ensure_consumer",
    "ensure_stream",
    "is_status",
    "pull",
    "to_bytes",
    "to_dead_letter",
    "to_message",
]

TOKEN = re.compile(r"[A-Za-z0-9-]{1,64}\Z")
DURABLE = "stoic"

# headers stoic writes (NATS header values are single-line text: JSON where needed)
ID, CREATED, AT, HEADERS, DEAD = (
    "Nats-Msg-Id", "Stoic-Created", "Stoic-At", "Stoic-Headers", "Stoic-Dead",
)
STOIC_ID = "Stoic-Id"  # the message id when Nats-Msg-Id had to differ (a requeue)


@dataclass(frozen=True, slots=True)
class Names:
    """Stream and subject names of one topic (its queue, its delays, its dead letters)."""

    stream: str
    subject: str
    delay_stream: str
    delay_subject: str
    dead_stream: str
    dead_subject: str

    @classmethod
    def of(cls, prefix: str, topic: str) -> Names:
        """``topic``'s names: the topic itself when letters, digits and dashes, else a hash."""
        check_topic(topic)
        t = topic if TOKEN.match(topic) else "h" + hashlib.sha256(
            topic.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        p = prefix
        return cls(f"{p}_{t}", f"{p}.q.{t}", f"{p}_{t}_delay", f"{p}.delay.{t}",
                   f"{p}_{t}_dead", f"{p}.dead.{t}")


class Held:
    """A claimed delivery: its lease end and when ``in_progress`` was last sent."""

    __slots__ = ("msg", "progressed", "topic", "until")

    def __init__(self, msg: Any, topic: str, until: float, progressed: float) -> None:
        self.msg, self.topic, self.until, self.progressed = msg, topic, until, progressed


async def ensure_stream(js: Any, config: Any) -> None:
    """Create the stream of ``config`` unless it exists (another process may race us)."""
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        await js.stream_info(config.name)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(config)
    except BadRequestError:  # created by another process in between
        await js.stream_info(config.name)


async def ensure_consumer(js: Any, stream: str, config: Any) -> None:
    """Create the durable consumer of ``config`` on ``stream`` unless it exists."""
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        await js.consumer_info(stream, DURABLE)
        return
    except NotFoundError:
        pass
    try:
        await js.add_consumer(stream, config)
    except BadRequestError:  # created by another process in between
        await js.consumer_info(stream, DURABLE)


async def browse(js: Any, stream: str, subject: str, limit: int) -> list[Any]:
    """Up to ``limit`` stored messages of ``stream``, oldest first, without consuming."""
    from nats.js.errors import NotFoundError

    out: list[Any] = []
    seq = 1
    while len(out) < limit:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        out.append(raw)
        seq = int(raw.seq or seq) + 1
    return out


async def pull(nc: Any, sub: Any, stream: str, n: int) -> list[Any]:
    """Up to ``n`` ready messages of ``stream``'s durable consumer: those left over on
    ``sub`` (the stream's reply subscription) from an earlier pull, then one no-wait pull
    request answered on ``sub``."""
    got: list[Any] = []
    while len(got) < n and sub.pending_msgs:  # left over from an earlier pull
        msg = await sub.next_msg(timeout=1.0)
        if not is_status(msg):
            got.append(msg)
    if len(got) >= n:
        return got
    await nc.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{DURABLE}",
        json.dumps({"batch": n - len(got), "no_wait": True}).encode(), reply=sub.subject,
    )
    while len(got) < n:
        try:
            msg = await sub.next_msg(timeout=5.0)
        except asyncio.TimeoutError:
            break
        if is_status(msg):  # 404/408: nothing more now
            break
        got.append(msg)
    return got


def is_status(msg: Any) -> bool:
    """A JetStream status reply (no messages, request timeout), not a message."""
    return bool(msg.headers and msg.headers.get("Status"))


def to_bytes(body: str) -> bytes:
    return body.encode("utf-8", "surrogatepass")


def as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def to_message(topic: str, msg: Any, receipt: str, available_at: float) -> Message:
    """A ``Message`` from a delivery or a stored message; unreadable parts become a defect."""
    headers = msg.headers or {}
    user, defect = decode_headers(headers.get(HEADERS))
    attempts = msg.metadata.num_delivered if receipt else 0
    try:
        body = (msg.data or b"").decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        body, defect = "", defect or f"body is not UTF-8 text: {exc}"
    return Message(
        id=headers.get(STOIC_ID) or headers.get(ID) or "", topic=topic, body=body,
        headers=user, attempts=attempts, created_at=as_float(headers.get(CREATED)),
        available_at=available_at, receipt=receipt, defect=defect,
    )


def to_dead_letter(topic: str, raw: Any) -> DeadLetter:
    """A ``DeadLetter`` from a stored message of the dead-letter stream."""
    try:
        record = json.loads((raw.headers or {}).get(DEAD) or "{}")
    except ValueError:
        record = {}
    headers = record.get("headers") if isinstance(record.get("headers"), dict) else {}
    message = Message(
        id=str(record.get("id", "")), topic=topic,
        body=(raw.data or b"").decode("utf-8", "surrogatepass"),
        headers={str(k): str(v) for k, v in headers.items()},
        attempts=int(record.get("attempts") or 0), created_at=as_float(record.get("created_at")),
        available_at=as_float(record.get("dead_at")),
    )
    return DeadLetter(message=message, reason=str(record.get("reason", "")),
                      error=record.get("error"), dead_at=as_float(record.get("dead_at")))

"""Toxics: the faults the proxy puts on a connection, with Toxiproxy 2.x units and semantics.

A ``Toxic`` is configuration (name, type, stream, toxicity, attributes) shared by every
connection of a proxy. Each connection that the toxic applies to gets its own small state
object (a ``Stage``) made by ``make_stage``; the stage holds what must be per connection:
whether the toxicity roll hit, bytes counted so far, a bandwidth schedule, a pending timer.

Units follow Toxiproxy so its clients and docs carry over unchanged:

==============  ==========================================  =====================================
type            attributes (defaults 0)                     effect
==============  ==========================================  =====================================
latency         latency (ms), jitter (ms)                   delay each chunk by latency +- jitter
bandwidth       rate (KB/s, 1 KB = 1000 bytes; 0 = no cap)  cap the throughput
slow_close      delay (ms)                                  delay the close after end of stream
timeout         timeout (ms; 0 = hold forever)              drop all data, close after timeout
reset_peer      timeout (ms)                                on first data, wait, then TCP RST
slicer          average_size, size_variation (bytes),       cut chunks into small pieces with a
                delay (microseconds)                        delay between them
limit_data      bytes                                       close after that many bytes
==============  ==========================================  =====================================

Every attribute is an integer from 0 to ``ATTRIBUTE_MAX`` (2**31 - 1); anything else is refused
with a ``ToxicError`` naming the attribute. Zero is the "off" or "unlimited" value: no delay
(latency, slow_close, slicer's delay), no cap (bandwidth ``rate``), no slicing (slicer
``average_size``), hold forever (timeout ``timeout``), reset at once (reset_peer ``timeout``).
limit_data's ``bytes`` has no unlimited value: 0 closes the connection at its first data.

``stream`` is ``"downstream"`` (server to client, the default) or ``"upstream"`` (client to
server); ``toxicity`` is the probability, rolled once per connection, that the toxic applies.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ATTRIBUTE_MAX",
    "STREAMS",
    "TOXIC_TYPES",
    "Link",
    "Stage",
    "Toxic",
    "ToxicError",
    "make_stage",
]

STREAMS = ("upstream", "downstream")

# type -> attribute defaults; every attribute is a non-negative integer in Toxiproxy's unit
TOXIC_TYPES: dict[str, dict[str, int]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}

#: the largest value of any attribute (2**31 - 1, Go's int32 limit): 24.8 days in ms, about
#: 2 TB/s as a bandwidth. Larger values are refused with 400 rather than overflowing a timer
#: inside the data path.
ATTRIBUTE_MAX = 2**31 - 1

# Above this many bytes per 100 ms, bandwidth sends in 100 ms slices (smooth, like Toxiproxy).
_BANDWIDTH_SLICE_SECONDS = 0.1


class ToxicError(ValueError):
    """A toxic definition was refused; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Toxic:
    """One toxic's configuration. Frozen: an update replaces it, which re-rolls toxicity and
    restarts per-connection state, so a connection never sees half of an update."""

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape Toxiproxy answers with."""
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Toxic:
        """Validate a create request. ``null`` (or absent) fields take their defaults."""
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in TOXIC_TYPES:
            known = ", ".join(sorted(TOXIC_TYPES))
            raise ToxicError(f"invalid toxic type: {kind!r} (known types: {known})")
        stream = _stream(data.get("stream"))
        name = data.get("name")
        if name is None or name == "":
            name = f"{kind}_{stream}"
        if not isinstance(name, str):
            raise ToxicError(f"toxic name must be a string, got {name!r}")
        toxicity = _toxicity(data.get("toxicity"))
        attributes = _attributes(kind, data.get("attributes"), dict(TOXIC_TYPES[kind]))
        return cls(name=name, type=kind, stream=stream, toxicity=toxicity, attributes=attributes)

    def updated(self, data: Mapping[str, Any]) -> Toxic:
        """Apply a partial update (POST or PATCH): toxicity and attributes may change."""
        for key, current in (("name", self.name), ("type", self.type), ("stream", self.stream)):
            value = data.get(key)
            if value is not None and value != current:
                raise ToxicError(
                    f"a toxic's {key} cannot be changed (is {current!r}, got {value!r})"
                )
        toxicity = self.toxicity if data.get("toxicity") is None else _toxicity(data["toxicity"])
        attributes = _attributes(self.type, data.get("attributes"), dict(self.attributes))
        return Toxic(self.name, self.type, self.stream, toxicity, attributes)


def _stream(value: Any) -> str:
    if value is None or value == "":
        return "downstream"
    if value not in STREAMS:
        raise ToxicError(
            f"stream was invalid, can be either upstream or downstream (got {value!r})"
        )
    return str(value)


def _toxicity(value: Any) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ToxicError(f"toxicity must be a number between 0 and 1, got {value!r}")
    return float(value)


def _attributes(kind: str, value: Any, base: dict[str, int]) -> dict[str, int]:
    if value is None:
        return base
    if not isinstance(value, Mapping):
        raise ToxicError(f"attributes must be an object, got {value!r}")
    allowed = TOXIC_TYPES[kind]
    for key, raw in value.items():
        if key not in allowed:
            names = ", ".join(allowed)
            raise ToxicError(f"unknown attribute {key!r} for toxic type {kind} (known: {names})")
        if raw is None:
            base[key] = allowed[key]
            continue
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ToxicError(f"attribute {key} of {kind} must be an integer, got {raw!r}")
        if raw < 0:
            raise ToxicError(f"attribute {key} of {kind} must be >= 0, got {raw!r}")
        if raw > ATTRIBUTE_MAX:
            raise ToxicError(
                f"attribute {key} of {kind} must be <= {ATTRIBUTE_MAX}, got {_short(raw)}"
            )
        base[key] = raw
    return base


def _short(number: int) -> str:
    """A huge number shown by its first digits and length, so an error message stays a line."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


# ---------------------------------------------------------------------------------------------
# per-connection stages

Next = Callable[[bytes, float], Awaitable[None]]


class Link(Protocol):
    """What a stage may do to its connection (implemented by the proxy's connection)."""

    loop: asyncio.AbstractEventLoop

    def close(self) -> None:
        """Flush what was written, then close both sides."""

    def reset(self) -> None:
        """Abort both sides with a TCP RST."""


class Stage:
    """Per-connection state of one toxic on one stream. The base passes data through."""

    __slots__ = ("link", "rng", "toxic")

    def __init__(self, toxic: Toxic, link: Link, rng: random.Random) -> None:
        self.toxic = toxic
        self.link = link
        self.rng = rng
        self.start()

    def start(self) -> None:
        """Called once, when the stage is made: set up per-connection state; stages whose
        effect needs no data (timers) start here."""

    def attr(self, key: str) -> int:
        return self.toxic.attributes.get(key, 0)

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        await next_(data, arrived)

    async def before_eof(self) -> None:
        """Called when the source ended, before the end is passed on."""

    def cancel(self) -> None:
        """The toxic was removed or the connection closed: drop timers."""


class _Latency(Stage):
    __slots__ = ()

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        delay: float = self.attr("latency")
        jitter = self.attr("jitter")
        if jitter:
            delay += self.rng.uniform(-jitter, jitter)
        due = arrived + max(0.0, delay) / 1000.0
        wait = due - self.link.loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await next_(data, due)


class _Bandwidth(Stage):
    __slots__ = ("next_free",)

    def start(self) -> None:
        self.next_free = 0.0

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        rate = self.attr("rate") * 1000  # bytes per second
        if rate <= 0:
            await next_(data, arrived)
            return
        loop = self.link.loop
        step = max(1, int(rate * _BANDWIDTH_SLICE_SECONDS))
        view = memoryview(data)
        self.next_free = max(self.next_free, loop.time())
        for start in range(0, len(data), step):
            piece = bytes(view[start : start + step])
            self.next_free += len(piece) / rate
            wait = self.next_free - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await next_(piece, arrived)


class _SlowClose(Stage):
    __slots__ = ()

    async def before_eof(self) -> None:
        delay = self.attr("delay")
        if delay:
            await asyncio.sleep(delay / 1000.0)


class _Timeout(Stage):
    __slots__ = ("released", "timer")

    def start(self) -> None:
        timeout = self.attr("timeout")
        self.timer: asyncio.TimerHandle | None = None
        self.released = asyncio.Event()
        if timeout > 0:
            self.timer = self.link.loop.call_later(timeout / 1000.0, self.link.close)

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        return  # the data is dropped: the peer sees a connection that went silent

    async def before_eof(self) -> None:
        # A silent stream does not pass its end on either, until the toxic is removed.
        await self.released.wait()

    def cancel(self) -> None:
        self.released.set()
        if self.timer is not None:
            self.timer.cancel()


class _ResetPeer(Stage):
    __slots__ = ("timer",)

    def start(self) -> None:
        self.timer: asyncio.TimerHandle | None = None

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        if self.timer is None:
            timeout = self.attr("timeout")
            if timeout <= 0:
                self.link.reset()
            else:
                self.timer = self.link.loop.call_later(timeout / 1000.0, self.link.reset)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


class _Slicer(Stage):
    __slots__ = ()

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        average = self.attr("average_size")
        if average <= 0:
            await next_(data, arrived)
            return
        variation = min(self.attr("size_variation"), average - 1)
        delay = self.attr("delay") / 1_000_000.0
        view = memoryview(data)
        start = 0
        while start < len(data):
            size = average + (self.rng.randint(-variation, variation) if variation else 0)
            piece = bytes(view[start : start + max(1, size)])
            start += len(piece)
            await next_(piece, arrived)
            if delay and start < len(data):
                await asyncio.sleep(delay)


class _LimitData(Stage):
    __slots__ = ("sent",)

    def start(self) -> None:
        self.sent = 0

    async def pipe(self, data: bytes, arrived: float, next_: Next) -> None:
        limit = self.attr("bytes")
        room = limit - self.sent
        if room > 0:
            piece = data if len(data) <= room else data[:room]
            self.sent += len(piece)
            await next_(piece, arrived)
        if self.sent >= limit:
            self.link.close()


_STAGES: dict[str, type[Stage]] = {
    "latency": _Latency,
    "bandwidth": _Bandwidth,
    "slow_close": _SlowClose,
    "timeout": _Timeout,
    "reset_peer": _ResetPeer,
    "slicer": _Slicer,
    "limit_data": _LimitData,
}


def make_stage(toxic: Toxic, link: Link, rng: random.Random) -> Stage | None:
    """Roll the toxicity for one connection: a stage when the toxic applies, else None."""
    if toxic.toxicity < 1.0 and not rng.random() < toxic.toxicity:
        return None
    return _STAGES[toxic.type](toxic, link, rng)

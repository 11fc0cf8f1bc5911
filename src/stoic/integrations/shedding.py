"""LoadShedder: an adaptive concurrency limit in front of an ASGI app, shedding by priority.

    app = LoadShedder(app)                                   # vegas, priorities from X-Priority
    app = StoicMiddleware(app, service="orders", version="1")  # outermost: deadlines, ids

A server that accepts every request when it is overloaded answers all of them late, so all
of them fail. ``LoadShedder`` admits at most ``limit.limit`` requests at once, a limit that
an ``AdaptiveLimit`` moves with the measured latency, and refuses the rest quickly, so the
requests it admits still finish in time. Which ones it refuses depends on their priority:

- ``critical``: waits longest for a slot (``max_wait``) and is served first;
- ``default``: waits a little;
- ``sheddable``: never waits: it runs only on a slot that is free when it arrives (and,
  with ``reserve``, leaves that many slots free for the others).

A refused request gets ``503`` with ``Retry-After``. A request whose deadline (the time left
that ``StoicMiddleware`` bound, or the ``X-Request-Timeout-Ms`` header) is shorter than the
recent latency cannot finish in time and gets ``504`` without running; so does a queued
request whose deadline passes while it waits. With ``codel=True`` the wait shrinks to
``codel_target`` once the queue has stayed non-empty for ``codel_interval`` (a standing
queue is pure added latency), as in CoDel.

A ``503`` or ``429`` answered by the app itself counts as a dropped call for the limit.
Plain ASGI; scopes other than ``http`` pass straight through.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import clock
from .._asgi import ASGIApp, Message, Receive, Scope, Send
from .._validate import count, header_name, seconds
from ..context import remaining
from ..errors import DeadlineExceeded, Rejected
from ..events import Event, dispatcher
from ..policies.limit import AdaptiveLimit, Vegas

__all__ = ["PRIORITIES", "LoadShedder", "RequestShed"]

PriorityHook = Callable[[Scope], "str | None"]

#: Priority names, most important first; the number is the queue order.
PRIORITIES: Mapping[str, int] = {"critical": 0, "default": 1, "sheddable": 2}
_DEFAULT_WAIT: Mapping[str, float] = {"critical": 1.0, "default": 0.2, "sheddable": 0.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestShed(Event):
    """A request was refused before running: ``status`` 503 (over the limit) or 504 (its
    deadline could not be met), with its ``priority`` and the ``reason``."""

    priority: str
    status: int
    reason: str


class LoadShedder:
    """Admit requests up to an adaptive limit; refuse the least important ones first.

    Args:
        app: the ASGI application to protect.
        limit: the ``AdaptiveLimit`` to use. By default Vegas keeping half to one request
            queued inside the app (``Vegas(alpha=0.5, beta=1.0)``): a server wants its
            queue here, at the door, where priority decides who waits, not inside the app.
        priority: ``scope -> "critical" | "default" | "sheddable" | None``; when None (or
            when it returns None) the ``priority_header`` decides, and then ``"default"``.
        priority_header: the request header naming the priority.
        max_wait: seconds a request may wait for a slot, per priority name (missing names
            keep their defaults: critical 1.0, default 0.2, sheddable 0), or one number for
            all. Never longer than the request's deadline.
        codel: shrink every wait to ``codel_target`` while the queue has stayed non-empty
            for more than ``codel_interval`` seconds.
        reserve: slots a sheddable request must leave free (never the last one), so a
            critical or default request arriving finds one instead of queueing for it. It
            costs throughput when the others do not use it (benchmarks/overload.py: 88%
            goodput with 1, 94% with 0), so it is off by default.
        deadline_header: the header with the caller's time left in milliseconds, read when
            no ``StoicMiddleware`` outside has bound a deadline.
        stale_after: seconds after which the measured latency is too old to refuse a
            request on (504) because it could not finish in time; requests then run and
            measure it again.
        name: names the shedder in events.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: AdaptiveLimit | None = None,
        *,
        priority: PriorityHook | None = None,
        priority_header: str = "X-Priority",
        max_wait: float | Mapping[str, float] | None = None,
        codel: bool = False,
        codel_target: float = 0.005,
        codel_interval: float = 0.1,
        reserve: int = 0,
        deadline_header: str = "X-Request-Timeout-Ms",
        stale_after: float = 1.0,
        name: str = "load_shedder",
    ) -> None:
        if not callable(app):
            raise ValueError(f"app must be an ASGI application, got {app!r}")
        if limit is None:
            limit = AdaptiveLimit(Vegas(alpha=0.5, beta=1.0), name=name)
        elif not isinstance(limit, AdaptiveLimit):
            raise ValueError(f"limit must be a stoic.AdaptiveLimit or None, got {limit!r}")
        if priority is not None and not callable(priority):
            raise ValueError(f"priority must be a callable taking the scope, got {priority!r}")
        header_name("priority_header", priority_header)
        header_name("deadline_header", deadline_header)
        waits = dict(_DEFAULT_WAIT)
        if isinstance(max_wait, Mapping):
            unknown = set(max_wait) - set(PRIORITIES)
            if unknown:
                raise ValueError(
                    f"max_wait names unknown priorities {sorted(unknown)}; "
                    f"known: {list(PRIORITIES)}"
                )
            waits.update(max_wait)
        elif max_wait is not None:
            waits = dict.fromkeys(PRIORITIES, max_wait)
        for key, wait in waits.items():
            seconds(f"max_wait[{key!r}]", wait, zero=True, finite=True)
        count("reserve", reserve, minimum=0)
        seconds("codel_target", codel_target, finite=True)
        seconds("codel_interval", codel_interval, finite=True)
        self.stale_after = seconds("stale_after", stale_after, finite=True)
        self.app = app
        self.limit = limit
        self.priority = priority
        self.priority_header = priority_header
        self.max_wait: Mapping[str, float] = {k: float(v) for k, v in waits.items()}
        self.codel = bool(codel)
        self.codel_target = float(codel_target)
        self.codel_interval = float(codel_interval)
        self.deadline_header = deadline_header
        self.name = name
        self._priority_key = priority_header.lower().encode("latin-1")
        self._deadline_key = deadline_header.lower().encode("latin-1")
        self._queued_since: float | None = None
        self.reserve = reserve
        self._headroom = {"critical": 0, "default": 0, "sheddable": reserve}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        priority = self._priority(scope)
        left = self._time_left(scope)
        limit = self.limit
        if left is not None and (left <= 0 or (left < limit.rtt and self._fresh(limit))):
            await self._refuse(send, priority, 504, "deadline")
            return
        headroom = self._headroom[priority]
        start = limit.try_acquire(headroom)
        if start is None:
            try:
                start = await limit.aacquire(
                    PRIORITIES[priority], self._wait(priority, left), headroom
                )
            except DeadlineExceeded:
                await self._refuse(send, priority, 504, "deadline")
                return
            except Rejected:
                await self._refuse(send, priority, 503, "over_limit")
                return
            finally:
                if not limit.waiting:
                    self._queued_since = None
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            limit.release(start, ignore=True)
            raise
        limit.release(start, dropped=status in (429, 503))

    def _fresh(self, limit: AdaptiveLimit) -> bool:
        """Whether the limit's latency is recent enough to refuse a request on.

        Refusing every request whose time left is under the latency closes no more windows,
        so a latency measured while a queue stood would refuse work forever. Past
        ``stale_after`` seconds without a new measurement requests run again (as the limit
        admits them) and measure it anew."""
        return limit.rtt_age < self.stale_after

    def _priority(self, scope: Scope) -> str:
        name: str | None = None
        if self.priority is not None:
            name = self.priority(scope)
        if name is None:
            key = self._priority_key
            for header, value in scope.get("headers") or ():
                if header == key:
                    name = value.decode("latin-1").strip().lower()
                    break
        return name if name is not None and name in PRIORITIES else "default"

    def _time_left(self, scope: Scope) -> float | None:
        left = remaining()
        if left is not None:
            return left
        key = self._deadline_key
        for header, value in scope.get("headers") or ():
            if header == key:
                try:
                    millis = float(value.decode("latin-1"))
                except ValueError:
                    return None
                return millis / 1000.0 if math.isfinite(millis) and millis >= 0 else None
        return None

    def _wait(self, priority: str, left: float | None) -> float:
        wait = self.max_wait[priority]
        if self.codel:
            since = self._queued_since
            if since is None:
                self._queued_since = clock.now()
            elif clock.now() - since > self.codel_interval:
                wait = min(wait, self.codel_target)
        if left is not None and left < wait:
            wait = left
        return wait

    async def _refuse(self, send: Send, priority: str, status: int, reason: str) -> None:
        if dispatcher.sinks:
            dispatcher.emit(
                RequestShed(name=self.name, priority=priority, status=status, reason=reason)
            )
        if status == 503:
            body = b"overloaded, try again later"
            rtt = self.limit.rtt
            headers = [(b"retry-after", str(max(1, math.ceil(rtt))).encode("ascii"))]
        else:
            body = b"deadline cannot be met; the request was not handled"
            headers = []
        headers += [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

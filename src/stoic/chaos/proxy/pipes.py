"""The TCP data path: one client connection, its upstream, and a pipe per direction.

Data takes a fast path while a stream has no toxic: the bytes go from one socket's
``data_received`` straight to the other's ``write``. With toxics, a stream's chunks go through a
per-stream queue and task, which is what lets latency keep ordering and bandwidth pace the
stream. Adding or removing a toxic changes live connections too, as in Toxiproxy.

Nothing a toxic does can escape into the event loop: a stage that raises resets its connection
(logged), and the proxy keeps serving every other connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Protocol

from ..toxics import Stage, Toxic, make_stage

__all__ = ["Connection", "Route", "client_side"]

_log = logging.getLogger("stoic.chaos.proxy")

_QUEUE_HIGH = 1 << 20  # bytes queued on a toxic stream before the source is paused
_QUEUE_LOW = 1 << 18


class Route(Protocol):
    """What a connection needs from its proxy (``Proxy`` in ``model``): read on the loop only."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def upstream_address(self) -> tuple[str, int]: ...

    @property
    def toxics(self) -> Mapping[str, Toxic]: ...

    @property
    def connections(self) -> set[Connection]: ...


def client_side(route: Route) -> asyncio.Protocol:
    """The protocol for one accepted client socket (``loop.create_server``'s factory)."""
    return _Side(Connection(route), is_client=True)


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (client side or upstream side)."""

    __slots__ = ("conn", "is_client", "out", "transport")

    def __init__(self, conn: Connection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.out: _Pipe | None = None  # the pipe this side's bytes go into

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.is_client:
            self.conn.client_made(self)

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.feed(data)

    def eof_received(self) -> bool:
        if self.out is not None:
            self.out.feed_eof()
        return True  # keep our write side open (half-close) until the other stream ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        self.conn.writing_paused(self, True)

    def resume_writing(self) -> None:
        self.conn.writing_paused(self, False)


class _Pipe:
    """One direction of a connection: bytes from ``source`` to ``dest`` through the toxics."""

    __slots__ = (
        "chain", "conn", "dest", "drained", "ended", "queue", "queued", "source", "stages",
        "stream", "task",
    )

    def __init__(self, conn: Connection, stream: str, source: _Side, dest: _Side) -> None:
        self.conn = conn
        self.stream = stream
        self.source = source
        self.dest = dest
        self.stages: dict[int, tuple[Toxic, Stage | None]] = {}  # id(toxic) -> rolled stage
        self.chain: list[Stage] = []
        self.queue: deque[tuple[bytes | None, float]] = deque()  # (None, t) ends the stream
        self.queued = 0
        self.task: asyncio.Task[None] | None = None
        self.drained: asyncio.Event | None = None
        self.ended = False

    # -- input, from the source socket -------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not self.chain and self.task is None:
            transport = self.dest.transport
            if transport is not None:
                transport.write(data)  # the fast path: no toxic on this stream
            return
        self.queue.append((data, self.conn.loop.time()))
        self.queued += len(data)
        if self.queued > _QUEUE_HIGH and self.source.transport is not None:
            self.source.transport.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        if not self.chain and self.task is None:
            self.finish()
            return
        self.queue.append((None, 0.0))
        self._wake()

    def finish(self) -> None:
        """The source ended and everything before the end was passed on."""
        self.ended = True
        transport = self.dest.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        self.conn.pipe_ended()

    # -- toxics ------------------------------------------------------------------------------
    def sync(self, toxics: Iterable[Toxic]) -> None:
        """Make this stream's chain follow the proxy's toxics: roll new ones, drop removed."""
        wanted = [t for t in toxics if t.stream == self.stream]
        keep = {id(t) for t in wanted}
        for key in list(self.stages):
            if key not in keep:
                _toxic, stage = self.stages.pop(key)
                if stage is not None:
                    stage.cancel()
        for toxic in wanted:
            if id(toxic) not in self.stages:
                self.stages[id(toxic)] = (toxic, make_stage(toxic, self.conn, self.conn.rng))
        self.chain = [s for t in wanted if (s := self.stages[id(t)][1]) is not None]
        if self.chain or self.queue:
            self._wake()

    def cancel(self) -> None:
        for _toxic, stage in self.stages.values():
            if stage is not None:
                stage.cancel()
        self.stages.clear()
        self.chain = []
        if self.task is not None:
            self.task.cancel()
            self.task = None

    # -- the toxic path ----------------------------------------------------------------------
    def _wake(self) -> None:
        if self.task is None and not self.conn.closed:
            self.task = self.conn.loop.create_task(self._run())
        elif self.drained is not None:
            self.drained.set()

    async def _run(self) -> None:
        try:
            await self._drain()
        except asyncio.CancelledError:
            pass
        except Exception:  # a toxic never breaks the loop: this connection is reset instead
            _log.exception("stoic proxy: a toxic failed on the %s stream; connection reset",
                           self.stream)
            self.conn.reset()
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    async def _drain(self) -> None:
        while True:
            if not self.queue:
                if not self.chain:
                    return  # back to the fast path
                self.drained = asyncio.Event()
                await self.drained.wait()
                self.drained = None
                continue
            data, arrived = self.queue.popleft()
            if data is None:
                for stage in list(self.chain):
                    await stage.before_eof()
                self.finish()
                return
            self.queued -= len(data)
            if self.queued < _QUEUE_LOW and self.source.transport is not None:
                self.source.transport.resume_reading()
            await self._through(list(self.chain), 0, data, arrived)

    async def _through(self, chain: list[Stage], index: int, data: bytes, arrived: float) -> None:
        if self.conn.closed:
            return
        if index == len(chain):
            await self._write(data)
            return

        async def next_(piece: bytes, at: float) -> None:
            await self._through(chain, index + 1, piece, at)

        await chain[index].pipe(data, arrived, next_)

    async def _write(self, data: bytes) -> None:
        transport = self.dest.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        waiter = self.conn.write_waiters.get(self.dest)
        if waiter is not None:
            await waiter


class Connection:
    """A client connection and its upstream: two sides, two pipes, one toxic state each.

    It is the ``Link`` its toxics act on (``close``, ``reset``, ``loop``).
    """

    def __init__(self, route: Route) -> None:
        self.route = route
        self.loop = route.loop
        self.rng = route.rng
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.pipes: list[_Pipe] = []
        self.write_waiters: dict[_Side, asyncio.Future[None]] = {}
        self.closed = False

    # the Link protocol, used by toxics
    def close(self) -> None:
        """Flush what is written, then close both sides (a toxic ended the connection)."""
        self._end(abort=False)

    def reset(self) -> None:
        """Abort both sides with SO_LINGER 0, so the peers get ECONNRESET."""
        if self.closed:
            return
        for transport in self._transports():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._end(abort=True)

    def abort(self) -> None:
        """Drop the connection at once (the proxy was disabled or deleted)."""
        self._end(abort=True)

    def _transports(self) -> list[asyncio.Transport]:
        return [
            side.transport for side in (self.client, self.upstream)
            if side is not None and side.transport is not None
        ]

    def _end(self, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in self.pipes:
            pipe.cancel()
        for transport in self._transports():
            if abort:
                transport.abort()
            else:
                transport.close()
        for waiter in self.write_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.route.connections.discard(self)

    # events from the sides
    def client_made(self, side: _Side) -> None:
        self.client = side
        assert side.transport is not None
        side.transport.pause_reading()
        self.route.connections.add(self)
        self.loop.create_task(self._dial())

    async def _dial(self) -> None:
        host, port = self.route.upstream_address
        try:
            _transport, upstream = await self.loop.create_connection(
                lambda: _Side(self, is_client=False), host, port
            )
        except Exception:  # OSError mostly; whatever it is, the client must not hang
            self.abort()  # like Toxiproxy: an unreachable upstream closes the client
            return
        if self.closed:
            if upstream.transport is not None:
                upstream.transport.abort()
            return
        assert self.client is not None
        self.upstream = upstream
        up = _Pipe(self, "upstream", self.client, upstream)
        down = _Pipe(self, "downstream", upstream, self.client)
        self.client.out, upstream.out = up, down
        self.pipes = [up, down]
        self.sync()
        if self.client.transport is not None and not self.closed:
            self.client.transport.resume_reading()

    def sync(self) -> None:
        """Follow the proxy's current toxics (called when they change, and once on connect)."""
        toxics = list(self.route.toxics.values())
        try:
            for pipe in self.pipes:
                pipe.sync(toxics)
        except Exception:  # never raised into the API request that changed the toxics
            _log.exception("stoic proxy: a toxic could not start; connection reset")
            self.reset()

    def side_lost(self, side: _Side) -> None:
        # the other side flushes what it was sent, then ends; closing the lost one is a no-op
        self._end(abort=False)

    def pipe_ended(self) -> None:
        if self.pipes and all(p.ended for p in self.pipes):
            self.close()

    def writing_paused(self, side: _Side, paused: bool) -> None:
        # Backpressure: while a socket's send buffer is full, stop reading what feeds it.
        feeder = self.upstream if side is self.client else self.client
        if paused:
            self.write_waiters[side] = self.loop.create_future()
            if feeder is not None and feeder.transport is not None:
                feeder.transport.pause_reading()
        else:
            waiter = self.write_waiters.pop(side, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if feeder is not None and feeder.transport is not None and not self.closed:
                pipe = feeder.out
                if pipe is None or pipe.queued < _QUEUE_HIGH:
                    feeder.transport.resume_reading()

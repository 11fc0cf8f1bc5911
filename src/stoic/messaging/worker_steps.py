"""The I/O of a ``Worker``'s two drivers, as the steps its shared coroutines await.

``SyncSteps`` calls the broker, the handler and the idempotency store directly (in the
calling thread; none of its steps suspends, so ``drive`` runs the coroutines without an
event loop). ``AsyncSteps`` awaits the async twins, and runs a sync handler and the
blocking waits in threads.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .. import clock
from ..idempotency.store import Claim
from .model import Message
from .worker_model import Action, DedupeUse, as_awaitable, dedupe_key

if TYPE_CHECKING:
    from .worker_core import WorkerCore

__all__ = ["AsyncSteps", "SyncSteps"]


class _Steps:
    """A driver's steps, bound to their worker."""

    __slots__ = ("w",)

    def __init__(self, worker: WorkerCore) -> None:
        self.w = worker


class SyncSteps(_Steps):
    """Steps that block the calling thread (``Worker.run``)."""

    __slots__ = ()

    async def claim(self, done: list[Message]) -> list[Message]:
        return self.w.ack_and_claim(done) if done else self.w._claim()

    async def pause(self, seconds: float) -> None:
        self.w._stop.wait(seconds)

    async def idle(self, seconds: float) -> None:
        self.w._idle(seconds)

    async def empty(self) -> bool:
        return self.w._empty()

    async def handle(self, message: Message) -> None:
        self.w.handler(message)

    async def settle(self, message: Message, action: Action) -> None:
        if action.kind == "dead":
            self.w.broker.dead_letter(message, action.reason, action.error)
        else:
            self.w.broker.nack(message, action.delay)

    async def ack_many(self, messages: list[Message]) -> None:
        self.w.broker.ack_many(messages)

    async def extend(self, message: Message) -> bool:
        return self.w.broker.extend_lease(message, self.w.lease)

    async def keep_permits(self) -> None:
        self.w._keep_permits()

    async def dedupe_claim(self, message: Message, dedupe: DedupeUse) -> Claim:
        return dedupe.store.claim(dedupe_key(message), message.topic, lease=dedupe.lease,
                                  ttl=dedupe.ttl)

    async def dedupe_extend(self, message: Message, token: str, dedupe: DedupeUse) -> None:
        dedupe.store.extend(dedupe_key(message), token, dedupe.lease)

    async def dedupe_release(self, message: Message, token: str, dedupe: DedupeUse) -> None:
        dedupe.store.release(dedupe_key(message), token)

    async def dedupe_complete(self, message: Message, token: str, dedupe: DedupeUse) -> None:
        dedupe.store.complete(dedupe_key(message), token, None, ttl=dedupe.ttl)


class AsyncSteps(_Steps):
    """Steps awaited on the caller's event loop (``Worker.arun``)."""

    __slots__ = ()

    async def claim(self, done: list[Message]) -> list[Message]:
        w = self.w
        if done:
            return await asyncio.to_thread(w.ack_and_claim, done)
        if w.flow is None:
            return await w.broker.aclaim(w.topic, max_messages=w.prefetch, lease=w.lease)
        return await asyncio.to_thread(w._claim)

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the worker is stopped."""
        end = clock.now() + seconds
        while not self.w._stop.is_set():
            left = end - clock.now()
            if left <= 0:
                return
            await clock.asleep(min(left, 0.05))

    async def idle(self, seconds: float) -> None:
        if self.w._wake is None:
            await self.pause(seconds)
        else:
            await asyncio.to_thread(self.w._idle, seconds)

    async def empty(self) -> bool:
        return await asyncio.to_thread(self.w._empty)

    async def handle(self, message: Message) -> None:
        if self.w._is_async:
            await as_awaitable(self.w.handler(message))
        else:
            await asyncio.to_thread(self.w.handler, message)

    async def settle(self, message: Message, action: Action) -> None:
        if action.kind == "dead":
            await self.w.broker.adead_letter(message, action.reason, action.error)
        else:
            await self.w.broker.anack(message, action.delay)

    async def ack_many(self, messages: list[Message]) -> None:
        await self.w.broker.aack_many(messages)

    async def extend(self, message: Message) -> bool:
        return await self.w.broker.aextend_lease(message, self.w.lease)

    async def keep_permits(self) -> None:
        if self.w.flow is not None:
            await asyncio.to_thread(self.w._keep_permits)

    async def dedupe_claim(self, message: Message, dedupe: DedupeUse) -> Claim:
        return await dedupe.store.aclaim(dedupe_key(message), message.topic,
                                         lease=dedupe.lease, ttl=dedupe.ttl)

    async def dedupe_extend(self, message: Message, token: str, dedupe: DedupeUse) -> None:
        await dedupe.store.aextend(dedupe_key(message), token, dedupe.lease)

    async def dedupe_release(self, message: Message, token: str, dedupe: DedupeUse) -> None:
        await dedupe.store.arelease(dedupe_key(message), token)

    async def dedupe_complete(self, message: Message, token: str, dedupe: DedupeUse) -> None:
        await dedupe.store.acomplete(dedupe_key(message), token, None, ttl=dedupe.ttl)

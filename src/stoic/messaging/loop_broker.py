"""The sync and async faces of a broker whose client library is asyncio-only.

``LoopBroker`` gives NatsBroker and RabbitBroker every ``Broker`` method: each runs the
broker's own coroutine (``_claim``, ``_ack_many``, ``_nack`` ...) on the broker's
``LoopThread``, from a sync caller (``LoopThread.call``) or from any event loop
(``LoopThread.acall``), within the caller's ``stoic.deadline``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .broker import PublishOne, check_claim, check_delay, prepare
from .loop import LoopThread
from .model import DeadLetter, Message, QueueStats, report_requeued

__all__ = ["LoopBroker"]


class LoopBroker(PublishOne):
    """Every ``Broker`` method, run on ``self._loop``; subclasses write the coroutines."""

    _loop: LoopThread
    _what: str = "a broker operation"  # names the work in DeadlineExceeded
    _closed: bool = False

    # --- the coroutines a subclass writes -------------------------------------------------

    async def _publish(
        self, topic: str, msg_ids: list[str], bodies: list[str], head: dict[str, str],
        delay: float,
    ) -> list[str]:
        raise NotImplementedError

    async def _claim(self, topic: str, n: int, lease: float) -> list[Message]:
        raise NotImplementedError

    async def _ack_many(self, messages: list[Message]) -> int:
        raise NotImplementedError

    async def _nack(self, message: Message, delay: float) -> bool:
        raise NotImplementedError

    async def _extend(self, message: Message, lease: float) -> bool:
        raise NotImplementedError

    async def _dead_letter(self, message: Message, reason: str, error: str | None) -> None:
        raise NotImplementedError

    async def _stats(self, topic: str) -> QueueStats:
        raise NotImplementedError

    async def _peek(self, topic: str, limit: int) -> list[Message]:
        raise NotImplementedError

    async def _dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        raise NotImplementedError

    async def _requeue(self, topic: str, ids: set[str] | None) -> int:
        raise NotImplementedError

    async def _purge(self, topic: str) -> int:
        raise NotImplementedError

    async def _delete(self, topic: str) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    # --- the Broker methods ---------------------------------------------------------------

    def publish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        prepared = prepare(topic, payloads, ids, headers, delay)
        return self._loop.call(self._what, self._publish(topic, *prepared))

    async def apublish_many(
        self, topic: str, payloads: Iterable[Any], *, ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None, delay: float = 0.0,
    ) -> list[str]:
        prepared = prepare(topic, payloads, ids, headers, delay)
        return await self._loop.acall(self._what, self._publish(topic, *prepared))

    def claim(self, topic: str, *, max_messages: int = 1, lease: float = 30.0) -> list[Message]:
        check_claim(max_messages, lease)
        return self._loop.call(self._what, self._claim(topic, max_messages, lease))

    async def aclaim(
        self, topic: str, *, max_messages: int = 1, lease: float = 30.0
    ) -> list[Message]:
        check_claim(max_messages, lease)
        return await self._loop.acall(self._what, self._claim(topic, max_messages, lease))

    def ack(self, message: Message) -> bool:
        return self.ack_many([message]) == 1

    async def aack(self, message: Message) -> bool:
        return await self.aack_many([message]) == 1

    def ack_many(self, messages: Sequence[Message]) -> int:
        return self._loop.call(self._what, self._ack_many(list(messages)))

    async def aack_many(self, messages: Sequence[Message]) -> int:
        return await self._loop.acall(self._what, self._ack_many(list(messages)))

    def nack(self, message: Message, delay: float = 0.0) -> bool:
        return self._loop.call(self._what, self._nack(message, check_delay(delay)))

    async def anack(self, message: Message, delay: float = 0.0) -> bool:
        return await self._loop.acall(self._what, self._nack(message, check_delay(delay)))

    def extend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        return self._loop.call(self._what, self._extend(message, lease))

    async def aextend_lease(self, message: Message, lease: float) -> bool:
        check_claim(1, lease)
        return await self._loop.acall(self._what, self._extend(message, lease))

    def dead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        self._loop.call(self._what, self._dead_letter(message, reason, error))

    async def adead_letter(self, message: Message, reason: str, error: str | None = None) -> None:
        await self._loop.acall(self._what, self._dead_letter(message, reason, error))

    def stats(self, topic: str) -> QueueStats:
        return self._loop.call(self._what, self._stats(topic))

    async def astats(self, topic: str) -> QueueStats:
        return await self._loop.acall(self._what, self._stats(topic))

    def peek(self, topic: str, limit: int = 10) -> list[Message]:
        return self._loop.call(self._what, self._peek(topic, limit))

    def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        return self._loop.call(self._what, self._dead_letters(topic, limit))

    def requeue(self, topic: str, ids: Sequence[str] | None = None) -> int:
        chosen = None if ids is None else set(ids)
        return report_requeued(self, topic, self._loop.call(self._what,
                                                            self._requeue(topic, chosen)))

    def purge_dead(self, topic: str) -> int:
        return self._loop.call(self._what, self._purge(topic))

    def delete_topic(self, topic: str) -> None:
        """Delete the topic's queues or streams, with their messages (for tests and tools)."""
        self._loop.call(self._what, self._delete(topic))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._close())
        finally:
            self._loop.stop()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

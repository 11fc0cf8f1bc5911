"""The waiting room of an ``AdaptiveLimit``: calls waiting for a slot, best first.

A waiter is a call in a thread (blocked on a held lock) or in a task (awaiting a future); the
limiter wakes it from whichever thread frees the slot. The room orders waiters by priority
(lower number first), then by arrival. It is not thread-safe on its own: the limiter's lock
guards every use. Waiters that stopped waiting (refused, timed out) stay in the heap until
they reach its top, where ``best()`` drops them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading

__all__ = ["GRANTED", "REFUSED", "WAITING", "Waiter", "WaitingRoom"]

GRANTED, WAITING, REFUSED = 0, 1, 2


class Waiter:
    """A call waiting for a slot, in a thread (a held lock) or a task (a future)."""

    __slots__ = ("future", "lock", "loop", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.state = WAITING
        self.loop = loop
        if loop is None:
            self.future: asyncio.Future[None] | None = None
            self.lock: threading.Lock | None = threading.Lock()
            self.lock.acquire()
        else:
            self.future = loop.create_future()
            self.lock = None

    def wake(self) -> None:
        if self.lock is not None:
            self.lock.release()
        elif self.loop is not None and self.future is not None:
            try:
                self.loop.call_soon_threadsafe(_resolve, self.future)
            except RuntimeError:  # its loop is closed; the waiter went with it
                pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WaitingRoom:
    """Waiters in a heap of ``(priority, arrival, waiter)``."""

    __slots__ = ("entries", "order")

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, Waiter]] = []
        self.order = itertools.count()

    def add(self, waiter: Waiter, priority: int) -> None:
        heapq.heappush(self.entries, (priority, next(self.order), waiter))

    def worst(self) -> tuple[int, Waiter] | None:
        """The waiter that gives way first when the room is full, with its priority."""
        worst: tuple[int, int, Waiter] | None = None
        for entry in self.entries:
            if entry[2].state == WAITING and (worst is None or entry[:2] > worst[:2]):
                worst = entry
        return None if worst is None else (worst[0], worst[2])

    def best(self) -> Waiter | None:
        """The waiter to serve next (still in the room), or None."""
        entries = self.entries
        while entries and entries[0][2].state != WAITING:
            heapq.heappop(entries)
        return entries[0][2] if entries else None

    def remove_best(self) -> None:
        heapq.heappop(self.entries)

    def clear(self) -> None:
        self.entries.clear()

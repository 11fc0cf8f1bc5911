"""A private event loop on a daemon thread, for brokers whose client library is asyncio-only.

The sync methods of such a broker submit a coroutine and wait for it (``call``); the async
twins submit it and await the result from whatever loop the caller runs (``acall``), so the
client's connection lives on one loop however the broker is called. Both keep to the
caller's ``stoic.deadline`` (the work is cancelled when it runs out, and not submitted once
it has passed).

The loop is uvloop's where uvloop is installed (the ``nats`` and ``rabbitmq`` extras install
it on Linux and macOS): its scheduling and thread hand-offs cost far less than asyncio's
own, which a sync call pays twice. ``STOIC_UVLOOP=0`` keeps asyncio's loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..context import remaining
from ..integrations._deadlines import arun_on, cancel_pending, run_on

__all__ = ["LoopThread", "new_loop"]

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (and ``STOIC_UVLOOP`` is not ``0``), else
    asyncio's."""
    if os.environ.get("STOIC_UVLOOP", "1") != "0":
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()  # type: ignore[no-any-return, unused-ignore]
    return asyncio.new_event_loop()


class LoopThread:
    """An event loop running on its own daemon thread, named ``name``."""

    def __init__(self, name: str) -> None:
        self.loop = new_loop()
        self._running: set[asyncio.Task[None]] = set()  # strong references until done
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's).

        The handoff is one ``call_soon_threadsafe`` and one plain lock: lighter than
        ``run_coroutine_threadsafe`` and its chained futures, which a single publish pays
        for on top of its round trip to the server.
        """
        done = threading.Lock()
        done.acquire()
        outcome: list[Any] = []

        async def runner() -> None:
            try:
                outcome.append((True, await coro))
            except BaseException as exc:  # handed to the caller's thread, raised there
                outcome.append((False, exc))
            finally:
                done.release()

        self.loop.call_soon_threadsafe(self._start, runner())
        done.acquire()
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _start(self, runner: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(runner)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def call(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        """``run``, within the caller's deadline (``what`` names the work in its errors)."""
        if remaining() is None:
            return self.run(coro)
        return run_on(self.loop, what, coro)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await its result from the caller's loop."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def acall(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        """``arun``, within the caller's deadline."""
        return await arun_on(self.loop, what, coro)

    def cancel_pending(self) -> None:
        """Cancel what runs on the loop (a client given up on at its deadline left it)."""
        cancel_pending(self.loop)

    def stop(self) -> None:
        """Stop the loop and join its thread (at most 5 s)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()

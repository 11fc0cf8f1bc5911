"""A consumer that acks only finished work, retries what may succeed later, and parks the rest.

For each message a ``Worker`` claims (under a lease) it:

1. dead-letters it as ``"malformed"`` if the broker could not read it or its payload does not
   decode, and as ``"incompatible version"`` if its schema version is not one the worker
   accepts: such a message is never half-processed, and never crashes the worker;
2. with ``dedupe=<idempotency store>``, claims the key ``stoic-message:<topic>:<id>``: a
   message whose handling already completed is acked without running the handler again;
3. runs the handler with the message's request id bound (``stoic.context``) and, when
   OpenTelemetry is instrumented, inside a consumer span linked to the producer's;
4. on success marks the dedupe key completed and acks (acks of one claimed batch go in one
   broker call: a crash before it means a redelivery, never a loss);
5. on failure asks the retry policy (``Retry.next_delay``, the decision a call through that
   Retry makes) whether and when to try again: the message comes back after that delay, or
   is dead-lettered with the error's type, text and the attempt count when Retry gives up
   (PERMANENT failure, ``max_attempts`` deliveries made, ``max_time`` since the message was
   first published, an empty retry budget).

The worker's one rule of its own, said through Retry's parameters: it asks
``retry.replace(idempotent=True)``. Delivery is at-least-once on every broker, so a handler
already runs twice whenever a worker dies after its side effect and before its ack; an
UNKNOWN failure ("it may have taken effect") therefore adds no risk that the queue does not
already impose, and it is retried. Make the effect safe to repeat with ``dedupe=`` or an
``Inbox``. ``max_attempts``, when given, is ``retry.replace(max_attempts=max_attempts)``.

While a handler runs, a heartbeat extends the lease of every message the worker holds (and
the dedupe lease), so a slow handler does not lose its message to another worker. On SIGTERM
or SIGINT (or ``stop()``) the worker claims nothing more, finishes the messages it holds,
acks them and returns.

What "exactly once" means here: the broker delivers at least once. ``dedupe`` suppresses
every redelivery of a message whose handling completed. A process killed after the
handler's side effect and before the dedupe record is marked completed leaves a window in
which the effect can run twice; to close it, record the effect and the message id in one
transaction of the handler's own database (``stoic.messaging.Inbox``). docs/messaging.md
explains both.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator

from .. import clock
from .worker_core import WorkerCore, drive
from .worker_model import Action, WorkerCounts
from .worker_steps import AsyncSteps, SyncSteps

__all__ = ["Action", "Worker", "WorkerCounts"]


class Worker(WorkerCore):
    """Consume ``topic`` from ``broker`` with ``handler``; see the module docstring.

    Args:
        broker: any stoic broker.
        topic: the topic (queue, stream) to consume.
        handler: ``handler(message)``, sync or async; ``message.payload`` is the decoded
            payload. Its return value is ignored; raising means "not done".
        retry: decides each redelivery (``Retry.next_delay``): backoff, ``on=``,
            ``max_time`` (counted from the message's first publish), budget, Retry-After,
            and the default ``max_attempts`` (its ``attempts``). The worker uses it as
            ``retry.replace(idempotent=True)`` (see the module docstring). By default 5
            attempts with exponential backoff from 1 s, doubling, capped at 300 s, full jitter.
        concurrency: messages handled at once (threads for ``run``, tasks for ``arun``).
        lease: seconds a claimed message stays invisible to other workers; the heartbeat
            renews it every ``lease / 3`` while the worker holds it.
        dedupe: an idempotency store; a message whose handling completed is not handled again.
        dedupe_ttl: seconds a completed message id is remembered (default a week).
        max_attempts: deliveries before a retryable failure is dead-lettered.
        accept_versions: schema versions this worker understands (``message.version``, the
            ``schema-version`` header, "1" when absent); others are dead-lettered with reason
            "incompatible version". None accepts every version.
        prefetch: messages claimed per broker call (more means fewer round trips; each is
            leased, and renewed, until handled).
        poll_interval: seconds to wait when the queue is empty before claiming again.
        name: names the worker in events and logs (default ``worker:<topic>``).
        flow: shared flow-control rules (``stoic.messaging.flow.FlowControl``): priorities,
            fairness across keys, a per-key concurrency limit, a global rate, schedules.
            The worker then claims one message at a time, in the order the rules give.
    """

    # --- sync driver --------------------------------------------------------------------

    def run(self, *, stop_when_empty: bool = False, handle_signals: bool = True) -> WorkerCounts:
        """Consume until ``stop()``, SIGTERM/SIGINT, or (``stop_when_empty``) an empty queue.

        With ``concurrency=1`` a sync handler runs in the calling thread, otherwise in
        ``concurrency`` threads; an async handler makes this run
        ``arun`` in a new event loop. Returns the counts of what was done.
        """
        if self._is_async:
            return asyncio.run(
                self.arun(stop_when_empty=stop_when_empty, handle_signals=handle_signals)
            )
        self._stop.clear()
        with self._signals(handle_signals):
            beat_stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(beat_stop,),
                                    name=f"{self.name}-lease", daemon=True)
            beat.start()
            try:
                if self.concurrency == 1:
                    # In the caller's thread: a handler may use objects (a sqlite3
                    # connection) that belong to the thread that created them.
                    self._sync_consume(stop_when_empty)
                else:
                    self._threads(stop_when_empty)
            finally:
                self._stop.set()
                beat_stop.set()
                beat.join()
        return self.counts

    def _threads(self, stop_when_empty: bool) -> None:
        threads = [
            threading.Thread(
                target=self._sync_consume, args=(stop_when_empty,), name=f"{self.name}-{i}",
                daemon=True,
            )
            for i in range(self.concurrency)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():  # join in slices, so signals reach the main thread
                    t.join(0.2)
        finally:
            self._stop.set()

    @contextlib.contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _heartbeat(self, stop: threading.Event) -> None:
        steps = SyncSteps(self)
        while not stop.wait(self.lease / 3):
            drive(self._beat(steps))

    def _sync_consume(self, stop_when_empty: bool) -> None:
        drive(self._consume(SyncSteps(self), stop_when_empty))

    # --- async driver -------------------------------------------------------------------

    async def arun(
        self, *, stop_when_empty: bool = False, handle_signals: bool = True
    ) -> WorkerCounts:
        """``run`` for asyncio: ``concurrency`` tasks; sync handlers run in threads."""
        self._stop.clear()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._stop.set)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        beat = asyncio.create_task(self._aheartbeat())
        try:
            steps = AsyncSteps(self)
            await asyncio.gather(*(self._consume(steps, stop_when_empty)
                                   for _ in range(self.concurrency)))
        finally:
            self._stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.counts

    async def _aheartbeat(self) -> None:
        steps = AsyncSteps(self)
        while True:
            await clock.asleep(self.lease / 3)
            await self._beat(steps)

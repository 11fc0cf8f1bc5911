"""``Worker``: claims due runs and runs their passes on a pool of threads.

It renews the leases of the runs it holds every third of the lease, parks runs no code here
knows, and sleeps until the next due time it knows of, a wake-up from this process (a start,
a signal, a pass that ended) or, with PostgreSQL, a ``NOTIFY`` from another process.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .. import clock
from .store import Claimed, Fence, Notifying

if TYPE_CHECKING:
    from .engine import Workflows

__all__ = ["Worker"]

_log = logging.getLogger("stoic.workflow")


class Worker:
    """Claims due runs and runs their passes on a pool of ``concurrency`` threads."""

    def __init__(self, flows: Workflows, *, concurrency: int = 8) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.flows = flows
        self.concurrency = concurrency
        self._stop = threading.Event()
        self._active: dict[str, Fence] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="stoic-workflow-worker",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        self.flows.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _pass(self, claimed: Claimed) -> None:
        try:
            self.flows.execute(claimed)
        finally:
            with self._lock:
                self._active.pop(claimed.run.id, None)
            self.flows.wake()

    def run(self) -> None:
        flows = self.flows
        renew_every = flows.lease / 3
        store = flows.store
        stop_listening = store.listen(flows.wake) if isinstance(store, Notifying) else None
        try:
            self._loop(renew_every)
        finally:
            if stop_listening is not None:
                stop_listening()

    def _loop(self, renew_every: float) -> None:
        flows = self.flows
        next_renew = next_park = 0.0
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="stoic-workflow") as pool:
            while not self._stop.is_set():
                try:
                    now = clock.wall()
                    if now >= next_renew:
                        with self._lock:
                            fences = list(self._active.values())
                        for run_id in flows.store.renew(fences, now, flows.lease):
                            _log.warning("workflow %s: lease lost to another worker", run_id)
                        next_renew = now + renew_every
                    if now >= next_park:
                        flows.park_unknown()
                        next_park = now + 5 * flows.poll_interval
                    with self._lock:
                        free = self.concurrency - len(self._active)
                    claimed = flows.claim(free) if free > 0 else []
                    for item in claimed:
                        with self._lock:
                            self._active[item.run.id] = item.fence
                        pool.submit(self._pass, item)
                    if claimed and len(claimed) == free:
                        continue
                    wait = min(flows.poll_interval, renew_every)
                    if free > len(claimed):
                        due = flows.store.next_due(flows.kinds, clock.wall())
                        if due is not None:
                            wait = min(wait, max(0.0, due - clock.wall()))
                except Exception:
                    _log.exception("workflow worker: round failed; retrying")
                    wait = flows.poll_interval
                if wait > 0:
                    flows.idle(wait, self._stop)

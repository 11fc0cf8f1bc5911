"""``LISTEN`` for ``PostgresBroker.wait``: idle workers wake on a publish's ``NOTIFY``."""

from __future__ import annotations

import threading

__all__ = ["Listener"]


class Listener:
    """One ``LISTEN`` connection per broker, read by a daemon thread; waiters block on a
    condition until a notification names their topic."""

    def __init__(self, dsn: str, channel: str) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute(f"LISTEN {channel}")
        self._cond = threading.Condition()
        self._seen: dict[str, int] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"stoic-listen-{channel}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                for note in self._conn.notifies(timeout=0.5):
                    with self._cond:
                        self._seen[note.payload] = self._seen.get(note.payload, 0) + 1
                        self._cond.notify_all()
            except Exception:  # connection lost or closed: waiters fall back to timeouts
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return

    def wait(self, topic: str, timeout: float) -> bool:
        """True when a notification for ``topic`` came within ``timeout`` seconds."""
        with self._cond:
            start = self._seen.get(topic, 0)
            return self._cond.wait_for(
                lambda: self._closed or self._seen.get(topic, 0) != start, timeout
            ) and not self._closed

    def close(self) -> None:
        self._closed = True
        self._thread.join(2.0)
        self._conn.close()

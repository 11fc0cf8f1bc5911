"""A worker process for the crash tests (run as a script, killed with SIGKILL at random).

argv: broker-url topic effects.db dedupe.db runs-file
Every handler run appends the message id to runs-file (a side effect outside any
transaction: it counts runs, duplicates included). The effect proper is a row in
effects.db written in the same transaction as the inbox mark, so it happens once.
The worker also has dedupe=SQLiteStore(dedupe.db).
"""

from __future__ import annotations

if __name__ == "__main__":
    import signal
    import sys

    # A SIGTERM that arrives while the worker is still starting up ends it cleanly; once it
    # runs, Worker.run installs its own handler (finish what it holds, then exit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(f"{sys.argv[5]}.ready.{__import__('os').getpid()}", "w"):
        pass  # tells the test that a SIGTERM from now on ends this process cleanly

import os
import sqlite3
import sys

from stoic.idempotency import SQLiteStore
from stoic.messaging import Inbox, Message, Worker, connect


def build(url: str, topic: str, effects_path: str, dedupe_path: str, runs_path: str) -> Worker:
    """The worker of the crash test; the test also uses it to drain what the dead left."""
    broker = connect(url)
    db = sqlite3.connect(effects_path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    inbox = Inbox()
    runs = os.open(runs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(message: Message) -> None:
        os.write(runs, f"{message.id}\n".encode())
        db.execute("BEGIN IMMEDIATE")
        try:
            if inbox.mark(db, message):
                db.execute("INSERT INTO effects (id, pid) VALUES (?, ?)",
                           (message.id, os.getpid()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # prefetch=50 and acks per batch: a kill leaves many handled-but-unacked messages, which
    # run again unless dedupe works (the test's "repeated <= kills" tells the two apart).
    return Worker(
        broker, topic, handler, dedupe=SQLiteStore(dedupe_path), lease=2.0, prefetch=50,
        poll_interval=0.02,
    )


if __name__ == "__main__":
    build(*sys.argv[1:6]).run()

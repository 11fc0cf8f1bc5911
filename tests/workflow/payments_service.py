"""A payments service for the workflow crash tests (run as a script; SIGKILLed at times).

argv: port ledger.db idempotency.db

POST /charge {"order": ...} and POST /refund {"order": ...} behind stoic's
``IdempotencyMiddleware``: a request carrying an ``Idempotency-Key`` that completed before gets
the stored reply, one still in flight gets 409 with Retry-After. Every time the handler itself
runs it appends a row to ``attempts``; the ledger row is written under the key
(``INSERT OR IGNORE``), as a payments provider that honours keys does, so a duplicate charge in
the ledger can only come from a caller that sent the same charge under a *different* key.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from typing import Any

import uvicorn

from stoic.context import idempotency_key
from stoic.idempotency import IdempotencyMiddleware, SQLiteStore

_local = threading.local()


def _db(path: str) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def create_ledger(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS ledger (kind TEXT NOT NULL, ord TEXT NOT NULL,"
                 " key TEXT NOT NULL UNIQUE)")
    conn.execute("CREATE TABLE IF NOT EXISTS attempts (kind TEXT NOT NULL, ord TEXT NOT NULL,"
                 " key TEXT, pid INTEGER)")
    conn.close()


def build(ledger: str, idempotency: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        kind = scope["path"].strip("/")
        order = json.loads(body or b"{}").get("order", "")
        key = idempotency_key()
        db = _db(ledger)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO attempts VALUES (?, ?, ?, ?)", (kind, order, key, os.getpid()))
        db.execute("INSERT OR IGNORE INTO ledger VALUES (?, ?, ?)", (kind, order, key))
        db.execute("COMMIT")
        reply = json.dumps({"id": f"{kind}-{order}", "key": key}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": reply})

    store = SQLiteStore(idempotency, synchronous="NORMAL")
    return IdempotencyMiddleware(app, store, lease=2.0, required=True)


if __name__ == "__main__":
    port, ledger_path, idempotency_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    create_ledger(ledger_path)
    uvicorn.run(build(ledger_path, idempotency_path), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)

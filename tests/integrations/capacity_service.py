"""A service whose capacity the test sets: N workers, each request holds one for a fixed time.

Run as ``python capacity_service.py PORT WORKERS SERVICE_TIME`` (uvicorn on 127.0.0.1:PORT).
``GET /work`` goes through a ``LoadShedder`` with its defaults and takes a worker for SERVICE_TIME
seconds, queueing inside the app when all are busy, as a real server's thread pool would.
``POST /capacity?workers=N`` changes the number of workers; ``GET /stats`` reports the
limit as JSON. Both bypass the shedder.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import uvicorn

from stoic.integrations.asgi import LoadShedder


class Workers:
    def __init__(self, workers: int, service_time: float) -> None:
        self.workers = workers
        self.service_time = service_time
        self.busy = 0
        self.changed: asyncio.Condition | None = None

    async def run(self) -> None:
        if self.changed is None:
            self.changed = asyncio.Condition()
        async with self.changed:
            await self.changed.wait_for(lambda: self.busy < self.workers)
            self.busy += 1
        try:
            await asyncio.sleep(self.service_time)
        finally:
            async with self.changed:
                self.busy -= 1
                self.changed.notify_all()

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        await self.run()
        await _reply(send, 200, b"done")


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build(workers: int, service_time: float) -> Any:
    pool = Workers(workers, service_time)
    shedder = LoadShedder(pool.app)  # its defaults: vegas, critical waits longest
    limit = shedder.limit

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/capacity":
            query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
            pool.workers = int(query["workers"])
            if pool.changed is not None:
                async with pool.changed:
                    pool.changed.notify_all()
            await _reply(send, 200, b"ok")
        elif path == "/stats":
            stats = {"limit": limit.limit, "inflight": limit.inflight, "rtt": limit.rtt,
                     "waiting": limit.waiting, "busy": pool.busy}
            await _reply(send, 200, json.dumps(stats).encode())
        else:
            await shedder(scope, receive, send)

    return app


if __name__ == "__main__":
    port, workers, service_time = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    uvicorn.run(build(workers, service_time), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, lifespan="off")

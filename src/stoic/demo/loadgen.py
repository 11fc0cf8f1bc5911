"""The load generator: orders arriving at a steady rate, whatever the shop is going through.

Open loop, like real customers: arrivals follow a seeded Poisson process at ``rps`` and do not
wait for earlier orders to finish, so a slow shop piles up work instead of quietly receiving
less of it. In-flight orders are bounded (``max_in_flight``); an arrival beyond the bound is
recorded as not sent. Each order is an HTTP request with a client timeout.

In the stoic build the client does what a careful checkout page does: it sends an
``Idempotency-Key`` and the edge deadline (``X-Request-Timeout-Ms``), and when the shop
answers 502 (a dependency failed, so the order may be half done: the card charged, the reply
lost) it sends the same order again with the same key while the order's deadline has time
left. The keys make that safe: the card is charged once, and the customer gets the final
answer instead of a failure that was not one. The naive client sends no key, so it cannot
retry safely, and does not.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CLIENT_TRIES", "RETRY_PAUSE", "LoadGenerator", "Request", "post_json"]

#: At most this many sends of one order (stoic build, on 502 only, within its deadline).
CLIENT_TRIES = 3
#: Seconds the client waits before sending an order again.
RETRY_PAUSE = 0.05


@dataclass(slots=True)
class Request:
    """One order as the client saw it, from its first send to its final answer.

    Times are epoch seconds; ``status`` and ``error`` are the last send's (``status`` 0 = no
    response); ``tries`` counts the sends.
    """

    order_id: str
    start: float
    end: float = 0.0
    status: int = 0
    error: str = ""
    tries: int = 0

    @property
    def ok(self) -> bool:
        """The client was told the order was accepted."""
        return 200 <= self.status < 300

    @property
    def latency(self) -> float:
        """Seconds from sending to the answer (or to giving up)."""
        return self.end - self.start


class LoadGenerator:
    """Send orders to ``url`` at ``rps`` for ``duration`` seconds; keep every ``Request``."""

    def __init__(
        self, url: str, *, rps: float, duration: float, seed: int, mode: str,
        edge_deadline: float, client_timeout: float = 8.0, max_in_flight: int = 600,
    ) -> None:
        if not 0 < rps <= 500:
            raise ValueError(f"rps must be in (0, 500], got {rps!r}")
        if not duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
        self.url = url
        self.rps = float(rps)
        self.duration = float(duration)
        self.rng = random.Random(seed)
        self.seed = seed
        self.mode = mode
        self.edge_deadline = edge_deadline
        self.client_timeout = client_timeout
        self.max_in_flight = max_in_flight
        self.requests: list[Request] = []
        self.not_sent = 0
        self.in_flight = 0

    async def run(self, started: float) -> None:
        """Generate load from ``started`` (epoch seconds) for the duration, then wait for all."""
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        next_at = started
        while True:
            next_at += self.rng.expovariate(self.rps)
            if next_at - started >= self.duration:
                break
            delay = next_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if self.in_flight >= self.max_in_flight:
                self.not_sent += 1
                continue
            request = Request(order_id=f"o{self.seed}-{n:06d}", start=time.time())
            self.requests.append(request)
            task = asyncio.create_task(self._send(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, request: Request) -> None:
        body = {"order_id": request.order_id, "amount": round(self.rng.uniform(5, 120), 2),
                "sku": f"sku-{self.rng.randint(1, 20)}", "quantity": 1}
        headers = {}
        if self.mode == "stoic":
            headers["idempotency-key"] = f"order-{request.order_id}"
        deadline = time.time() + self.edge_deadline  # the whole order's, across its tries
        self.in_flight += 1
        try:
            while True:
                if self.mode == "stoic":
                    left = min(self.edge_deadline, deadline - time.time())
                    headers["x-request-timeout-ms"] = str(int(left * 1000))
                await self._post(request, body, headers)
                if (self.mode != "stoic" or request.status != 502 or request.tries >= CLIENT_TRIES
                        or deadline - time.time() - RETRY_PAUSE < _LEAST_TIME):
                    break
                await asyncio.sleep(RETRY_PAUSE)
        finally:
            request.end = time.time()
            self.in_flight -= 1

    async def _post(self, request: Request, body: dict[str, object], headers: dict[str, str]) -> None:
        """Send the order once; leave what the client saw in ``request``."""
        request.tries += 1
        request.status, request.error = 0, ""
        try:
            status, payload = await asyncio.wait_for(
                post_json(self.url + "/orders", body, headers), self.client_timeout)
        except asyncio.TimeoutError:
            request.error = "client timeout"
            return
        except (OSError, ValueError) as exc:  # refused, reset, closed without an answer
            request.error = type(exc).__name__
            return
        request.status = status
        if status >= 300:
            detail = ""
            try:
                answer = json.loads(payload)
                detail = str(answer.get("error", "")) if isinstance(answer, dict) else ""
            except ValueError:
                pass
            request.error = f"HTTP {status} {detail}".strip()


async def post_json(url: str, body: object, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body`` as JSON over a new HTTP/1.1 connection; return the status and body.

    Each order goes out on its own connection, as from its own customer's browser. The
    generator is the run's measuring instrument, so it must cost almost nothing: a general
    HTTP client (httpx) spends several milliseconds of CPU per request, and with hundreds of
    orders in flight on a loaded machine its own delays reached seconds, counted against
    the shop. Raises ``OSError`` when the connection fails or closes without an answer,
    ``ValueError`` on an answer that is not HTTP.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    data = json.dumps(body).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
               f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
               f"connection: close\r\n{head}\r\n").encode("latin-1") + data
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()  # ``connection: close``: the answer ends at EOF
    finally:
        writer.close()
    if not answer:
        raise ConnectionResetError("the server closed the connection without an answer")
    status_line, _, rest = answer.partition(b"\r\n")
    fields = status_line.split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    return int(fields[1]), rest.partition(b"\r\n\r\n")[2]


#: A retry is sent only with at least this many seconds of the order's deadline left.
_LEAST_TIME = 0.3

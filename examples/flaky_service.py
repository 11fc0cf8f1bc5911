"""A flaky payment service, called the naive way and the stoic way. Run: make demo

The service on loopback charges an order per POST. Like a real dependency under stress, it
sometimes fails before doing the work (503), sometimes does the work and loses the reply (the
connection drops), and sometimes is slow enough that the caller's timeout fires after the
work was done. It honours an ``Idempotency-Key`` header, as real payment APIs do.

The naive client is the loop most of us have written: retry any exception, sleep a fixed
time, no key. The stoic client classifies each failure, retries only what is safe, carries
one idempotency key per order across its attempts, and stops at a deadline. Both run the same
orders against the same fault sequence (same seed); the service's own ledger is the truth.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import stoic


class Ledger:
    """The service's ground truth: charges per order, requests received, replies by key."""

    def __init__(self, seed: int) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.charges: dict[str, int] = {}
        self.requests = 0
        self.replies: dict[str, bytes] = {}
        self.in_flight: dict[str, threading.Event] = {}

    def fate(self) -> str:
        with self.lock:
            self.requests += 1
            roll = self.rng.random()
        if roll < 0.15:
            return "fail_before"
        if roll < 0.30:
            return "lose_reply"
        if roll < 0.40:
            return "slow"
        return "ok"


def make_handler(ledger: Ledger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            order = body["order"]
            key = self.headers.get("Idempotency-Key")
            fate = ledger.fate()
            if fate == "fail_before":
                return self._reply(503, b'{"error": "overloaded"}')
            if key is not None:
                with ledger.lock:
                    done = ledger.replies.get(key)
                    running = ledger.in_flight.get(key)
                    if done is None and running is None:
                        ledger.in_flight[key] = threading.Event()
                if done is not None:
                    return self._reply(200, done)
                if running is not None:  # the first attempt is still working: wait for it
                    running.wait(10)
                    return self._reply(200, ledger.replies.get(key, b"{}"))
            if fate == "slow":
                time.sleep(1.5)
            with ledger.lock:
                ledger.charges[order] = ledger.charges.get(order, 0) + 1
                reply = json.dumps({"order": order, "charged": True}).encode()
                if key is not None:
                    ledger.replies[key] = reply
                    ledger.in_flight.pop(key).set()
            if fate == "lose_reply":  # the work is done, the answer never arrives
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            return self._reply(200, reply)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow reply closes its socket: expected here


def post(url: str, order: str, key: str | None, timeout: float) -> Any:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = json.dumps({"order": order}).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def naive_charge(url: str, order: str) -> Any:
    """How it is commonly written: retry anything, fixed sleeps, a long timeout, no key."""
    last: Exception | None = None
    for _attempt in range(3):
        try:
            return post(url, order, key=None, timeout=1.0)
        except Exception as exc:  # retries bugs, 4xx and lost replies alike
            last = exc
            time.sleep(0.5)
    assert last is not None
    raise last


RETRY = stoic.Retry(
    attempts=5,
    backoff=stoic.backoff.exponential(initial=0.05, factor=2.0, max=1.0),
    budget=stoic.RetryBudget(ratio=0.2, min_per_second=5.0),
    name="payments",
)


def stoic_charge(url: str, order: str) -> Any:
    """One key per order for every attempt, so a retry after a lost reply cannot charge twice."""
    key = str(uuid.uuid4())
    with stoic.deadline(4.0), stoic.context.using_idempotency_key(key):
        return RETRY.call(
            lambda: post(url, order, key=key, timeout=min(1.0, max(0.05, stoic.remaining() or 1.0)))
        )


@dataclass
class Result:
    mode: str
    calls: int
    twice: int
    surfaced: int
    wall: float


def run(mode: str, orders: int, seed: int) -> Result:
    ledger = Ledger(seed)
    server = QuietServer(("127.0.0.1", 0), make_handler(ledger))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/charges"
    charge = naive_charge if mode == "naive" else stoic_charge
    surfaced = 0

    def one(i: int) -> bool:
        try:
            charge(url, f"order-{i}")
            return True
        except Exception:
            return False

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(one, range(orders)))
    wall = time.monotonic() - start
    surfaced = outcomes.count(False)
    server.shutdown()
    server.server_close()
    twice = sum(1 for n in ledger.charges.values() if n > 1)
    return Result(mode, ledger.requests, twice, surfaced, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=80, help="orders per mode (default 80)")
    parser.add_argument("--seed", type=int, default=7, help="fault sequence seed (default 7)")
    args = parser.parse_args()
    if args.orders < 1:
        parser.error("--orders must be >= 1")
    results = [run("naive", args.orders, args.seed), run("stoic", args.orders, args.seed)]
    print(f"\n{args.orders} orders against a flaky payment service (seed {args.seed})\n")
    print(f"{'':<8}{'calls made':>12}{'charged twice':>15}{'failures surfaced':>19}{'wall time':>11}")
    for r in results:
        print(f"{r.mode:<8}{r.calls:>12}{r.twice:>15}{r.surfaced:>19}{r.wall:>10.2f}s")
    print(
        "\ncalls made: requests the service received; charged twice: orders the service charged"
        "\nmore than once (from its own ledger); failures surfaced: orders whose caller got an"
        "\nerror; wall time: all orders, 8 at a time."
    )


if __name__ == "__main__":
    main()

"""A tiny service to break: ``GET /`` answers "ok" through a fault point and a circuit breaker,
``GET /metrics`` exposes stoic's Prometheus metrics.

    python examples/chaos/shop.py 8000        # STOIC_CHAOS=plan.json turns fault plans on

Standard library HTTP server, plus prometheus-client for /metrics (stoic[prometheus]).
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest

import stoic
from stoic.chaos import InjectedStatusError, fault
from stoic.observability import prometheus

registry = CollectorRegistry()
prometheus.instrument(registry)
inventory = stoic.CircuitBreaker(
    "inventory", window=stoic.CountWindow(10), minimum_calls=5, open_for=1.0
)


@inventory
@fault("shop.handle")  # dormant until a fault plan names it
def check_stock() -> str:
    return "ok"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, generate_latest(registry), "text/plain; version=0.0.4")
            return
        try:
            self._answer(200, check_stock().encode(), "text/plain")
        except InjectedStatusError as exc:
            self._answer(exc.status, b"injected failure", "text/plain")
        except stoic.CircuitOpenError:
            self._answer(503, b"inventory breaker open", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

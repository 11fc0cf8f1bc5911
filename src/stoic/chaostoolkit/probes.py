"""Chaos Toolkit probes: is the system in its steady state?

Each probe returns a plain value for a tolerance to judge: a bool (``proxy_exists``), a
string (``breaker_state``, ``process_state``), a number (``http_error_rate`` in 0..1,
``http_latency`` in seconds, ``queue_depth``, ``dlq_size``), or a mapping for the journal
(``proxy``, ``queue_stats``). HTTP probes use the standard library only.
"""

import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

from ._config import proxy_client, state_directory

__all__ = [
    "breaker_state",
    "dlq_size",
    "http_error_rate",
    "http_latency",
    "process_state",
    "proxy",
    "proxy_exists",
    "queue_depth",
    "queue_stats",
]

Configuration = dict[str, Any]

_SAMPLE = re.compile(r"^(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def proxy_exists(name: str, configuration: Configuration | None = None) -> bool:
    """Whether the fault proxy has a proxy called ``name``."""
    return proxy_client(configuration).exists(name)


def proxy(name: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """The proxy as the API describes it: listen, upstream, enabled, toxics."""
    result: dict[str, Any] = proxy_client(configuration).request("GET", f"/proxies/{name}")
    return result


def breaker_state(name: str, url: str, timeout: float = 5.0) -> str:
    """The current state of circuit breaker ``name`` (``closed``, ``open``, ``half_open``...)
    read from a stoic Prometheus endpoint at ``url`` (``stoic_circuit_breaker_state``: 1 for
    the current state). ``"unknown"`` when the endpoint does not report that breaker."""
    request = urllib.request.Request(url, headers={"User-Agent": "stoic-chaostoolkit"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode("utf-8", "replace")
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["metric"] != "stoic_circuit_breaker_state":
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("name") == name and float(match["value"]) == 1.0:
            return str(labels.get("state", "unknown"))
    return "unknown"


#: Placeholder in a probe's ``body`` replaced by a fresh random token for each request (not
#: in ``__all__``: Chaos Toolkit discovers every exported name as an activity).
UNIQUE = "{unique}"


def _sample(
    url: str, requests: int, method: str, timeout: float, body: str | None,
    headers: dict[str, str] | None,
) -> list[tuple[float, int | None]]:
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests!r}")
    results: list[tuple[float, int | None]] = []
    for _ in range(requests):
        # ``{unique}`` in the body becomes a fresh token per request (a new order each time,
        # where the same body would be one operation repeated)
        data = None if body is None else body.replace(UNIQUE, os.urandom(8).hex()).encode()
        request = urllib.request.Request(
            url, data=data, method=method,
            headers={"User-Agent": "stoic-chaostoolkit", **(headers or {})},
        )
        start = time.perf_counter()
        status: int | None
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.read()
            status = exc.code
        except (OSError, urllib.error.URLError):
            status = None  # refused, reset, timed out: the worst kind of error
        results.append((time.perf_counter() - start, status))
    return results


def http_error_rate(
    url: str, requests: int = 20, method: str = "GET", timeout: float = 5.0,
    error_from: int = 500, body: str | None = None, headers: dict[str, str] | None = None,
) -> float:
    """Fraction (0..1) of ``requests`` sequential calls to ``url`` that failed: no answer
    (refused, reset, timed out) or a status >= ``error_from`` (5xx by default). ``{unique}``
    in ``body`` is replaced by a fresh token for each request."""
    results = _sample(url, requests, method, timeout, body, headers)
    failed = sum(1 for _elapsed, status in results if status is None or status >= error_from)
    return failed / len(results)


def http_latency(
    url: str, requests: int = 20, percentile: float = 99.0, method: str = "GET",
    timeout: float = 5.0, body: str | None = None, headers: dict[str, str] | None = None,
) -> float:
    """The ``percentile`` latency in seconds of ``requests`` sequential calls to ``url``
    (failed calls count with the time they took). ``{unique}`` in ``body`` is replaced by a
    fresh token for each request."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    durations = sorted(e for e, _status in _sample(url, requests, method, timeout, body, headers))
    index = max(0, min(len(durations) - 1, round(percentile / 100 * len(durations)) - 1))
    return durations[index]


def queue_stats(url: str, topic: str) -> dict[str, Any]:
    """Ready, delayed, in-flight and dead counts of ``topic`` on the broker at ``url``
    (``stoic.messaging.connect`` URLs: sqlite, redis, amqp)."""
    from stoic.messaging import connect

    broker = connect(url)
    try:
        stats = broker.stats(topic)
    finally:
        close = getattr(broker, "close", None)
        if close is not None:
            close()
    return {"topic": stats.topic, "ready": stats.ready, "delayed": stats.delayed,
            "in_flight": stats.in_flight, "dead": stats.dead}


def queue_depth(url: str, topic: str) -> int:
    """Messages on ``topic`` not yet acknowledged: ready + delayed + in flight."""
    stats = queue_stats(url, topic)
    return int(stats["ready"] + stats["delayed"] + stats["in_flight"])


def dlq_size(url: str, topic: str) -> int:
    """Messages of ``topic`` in the dead-letter queue."""
    return int(queue_stats(url, topic)["dead"])


def process_state(
    name: str, state_dir: str | None = None, configuration: Configuration | None = None
) -> str:
    """``running``, ``paused`` or ``exited``, for a process a Supervisor recorded."""
    return state_directory(state_dir, configuration).state(name)

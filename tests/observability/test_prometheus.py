"""Prometheus: every metric, with the right values, in a real scrape after a scripted scenario."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import stoic
from stoic.events import dispatcher
from stoic.observability import prometheus
from stoic.testing import virtual_time

from .conftest import flaky

METRICS = {
    "stoic_calls": "counter",
    "stoic_retries": "counter",
    "stoic_rejections": "counter",
    "stoic_circuit_breaker_state": "gauge",
    "stoic_call_duration_seconds": "histogram",
    "stoic_messages": "counter",
    "stoic_idempotent_replays": "counter",
}


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    prometheus.instrument(registry)
    yield registry
    prometheus.uninstrument()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict[Any, float], metric: str, /, **labels: str) -> float:
    return found[(metric, frozenset(labels.items()))]


def scrape(registry: CollectorRegistry) -> str:
    server = prometheus.serve(0, registry=registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            return str(reply.read().decode())
    finally:
        server.shutdown()
        server.server_close()


def scenario() -> None:
    """Two calls of 3 attempts (one recovers, one gives up: 4 retries), an open breaker that
    rejects once, one message handled and one dead-lettered, an idempotent call repeated."""
    from stoic.idempotency import MemoryStore
    from stoic.messaging import MemoryBroker, Worker

    payments = stoic.Retry(max_attempts=3, name="payments")
    with virtual_time():
        payments.call(flaky(2))
        with pytest.raises(ConnectionRefusedError):
            payments.call(flaky(9))
    breaker = stoic.CircuitBreaker("search", minimum_calls=2, failure_rate=0.5, open_for=60.0)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            breaker.call(flaky(9))
    with pytest.raises(stoic.CircuitOpenError):
        breaker.call(flaky(0))

    broker = MemoryBroker()
    broker.publish("orders", {"ok": True})
    broker.publish("orders", {"ok": False})

    def handle(message: Any) -> None:
        if not message.payload["ok"]:
            raise ValueError("bad order")  # PERMANENT: dead-lettered at once

    Worker(broker, "orders", handle, poll_interval=0.01, max_attempts=1).run(
        stop_when_empty=True, handle_signals=False
    )

    @stoic.idempotent(store=MemoryStore(), key="charge-{order}", name="charge")
    def charge(order: int) -> int:
        return order

    charge(1)
    charge(1)


def test_real_scrape_has_every_metric_with_the_scenario_values(registry: CollectorRegistry) -> None:
    scenario()
    text = scrape(registry)
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert {name: types.get(name) for name in METRICS} == METRICS
    found = samples(text)
    assert value(found, "stoic_calls_total", name="payments", outcome="success") == 1
    assert value(found, "stoic_calls_total", name="payments", outcome="transient") == 1
    assert value(found, "stoic_retries_total", name="payments") == 4  # 2 + 2
    assert value(found, "stoic_rejections_total", name="search", reason="circuit_open") == 1
    assert value(found, "stoic_circuit_breaker_state", name="search", state="open") == 1
    assert value(found, "stoic_circuit_breaker_state", name="search", state="closed") == 0
    assert value(found, "stoic_circuit_breaker_state", name="search", state="half_open") == 0
    assert value(found, "stoic_call_duration_seconds_count", name="payments") == 2
    assert value(found, "stoic_call_duration_seconds_bucket", name="payments", le="+Inf") == 2
    assert value(found, "stoic_messages_total", topic="orders", result="handled") == 1
    assert value(found, "stoic_messages_total", topic="orders", result="dead_lettered") == 1
    assert value(found, "stoic_idempotent_replays_total", name="charge") == 1


def test_duration_buckets_are_cumulative_and_sum_is_kept(registry: CollectorRegistry) -> None:
    for duration in (0.003, 0.2, 0.2, 30.0):
        dispatcher.record_call("retry", "db", "success", duration)
    found = samples(scrape(registry))
    assert value(found, "stoic_call_duration_seconds_bucket", name="db", le="0.005") == 1
    assert value(found, "stoic_call_duration_seconds_bucket", name="db", le="0.1") == 1
    assert value(found, "stoic_call_duration_seconds_bucket", name="db", le="0.25") == 3
    assert value(found, "stoic_call_duration_seconds_bucket", name="db", le="10.0") == 3
    assert value(found, "stoic_call_duration_seconds_bucket", name="db", le="+Inf") == 4
    assert value(found, "stoic_call_duration_seconds_sum", name="db") == pytest.approx(30.403)


def test_breaker_gauge_follows_transitions(registry: CollectorRegistry) -> None:
    breaker = stoic.CircuitBreaker("cart", minimum_calls=1, failure_rate=0.5, open_for=60.0)
    breaker.force_open()
    found = samples(scrape(registry))
    assert value(found, "stoic_circuit_breaker_state", name="cart", state="forced_open") == 1
    assert value(found, "stoic_circuit_breaker_state", name="cart", state="open") == 0
    breaker.reset()
    found = samples(scrape(registry))
    assert value(found, "stoic_circuit_breaker_state", name="cart", state="closed") == 1


async def test_asgi_app_serves_the_exposition(registry: CollectorRegistry) -> None:
    import httpx

    with virtual_time():
        stoic.Retry(max_attempts=3, name="payments").call(flaky(1))
    app = prometheus.make_asgi_app(registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert value(samples(reply.text), "stoic_retries_total", name="payments") == 1


def test_uninstrument_stops_counting_and_unregisters(registry: CollectorRegistry) -> None:
    prometheus.uninstrument()
    assert dispatcher.sinks == ()
    with virtual_time():
        stoic.Retry(max_attempts=3, name="payments").call(flaky(1))
    assert "stoic_calls" not in scrape(registry)


def test_instrument_again_moves_to_the_new_registry(registry: CollectorRegistry) -> None:
    other = CollectorRegistry()
    prometheus.instrument(other)
    assert len(dispatcher.sinks) == 1
    with virtual_time():
        stoic.Retry(max_attempts=3, name="payments").call(flaky(0))
    assert value(samples(scrape(other)), "stoic_calls_total", name="payments",
                 outcome="success") == 1
    assert "stoic_calls" not in scrape(registry)


def test_serve_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="port"):
        prometheus.serve(70000)


def test_a_breaker_that_never_changed_state_shows_closed(registry: CollectorRegistry) -> None:
    stoic.CircuitBreaker("quiet")
    found = samples(scrape(registry))
    assert value(found, "stoic_circuit_breaker_state", name="quiet", state="closed") == 1
    assert value(found, "stoic_circuit_breaker_state", name="quiet", state="open") == 0


def _exposed(registry: CollectorRegistry) -> dict[Any, float]:
    from prometheus_client import generate_latest

    return samples(generate_latest(registry).decode())


def test_calls_from_many_threads_are_all_counted_while_scrapes_run(
    registry: CollectorRegistry,
) -> None:
    """Calls take no lock (a shard per thread): none may be lost, and scraping mid-run is safe."""
    import threading

    policy = stoic.Retry(name="threads")
    threads, per_thread = 8, 2_000
    start = threading.Barrier(threads + 1)
    scraped_mid_run: list[float] = []

    def worker() -> None:
        start.wait()
        for _ in range(per_thread):
            policy.call(lambda: 1)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in pool):
        found = _exposed(registry)
        scraped_mid_run.append(
            found.get(("stoic_calls_total", frozenset({("name", "threads"), ("outcome", "success")})), 0.0)
        )
    for thread in pool:
        thread.join()
    found = _exposed(registry)
    total = threads * per_thread
    assert value(found, "stoic_calls_total", name="threads", outcome="success") == total
    assert value(found, "stoic_call_duration_seconds_count", name="threads") == total
    assert scraped_mid_run == sorted(scraped_mid_run)  # a counter never goes down
    assert all(seen <= total for seen in scraped_mid_run)


def test_shards_of_ended_threads_are_folded_and_keep_their_counts(
    registry: CollectorRegistry,
) -> None:
    import threading

    collector = prometheus._installed.collector  # type: ignore[union-attr]
    policy = stoic.Retry(name="churn")
    for _ in range(50):  # a thread per "request", each ending after one call
        thread = threading.Thread(target=policy.call, args=(lambda: 1,))
        thread.start()
        thread.join()
    policy.call(lambda: 1)  # this thread's first call folds every ended thread's shard
    assert len(collector._shards) <= 2  # this thread's shard and at most one more
    found = _exposed(registry)
    assert value(found, "stoic_calls_total", name="churn", outcome="success") == 51
    assert value(found, "stoic_call_duration_seconds_count", name="churn") == 51

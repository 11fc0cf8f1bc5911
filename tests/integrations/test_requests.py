"""ResilientAdapter on a requests.Session against a real uvicorn server on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

import stoic
from integrations.servers import Action, Running
from stoic import backoff
from stoic.integrations.requests import ResilientAdapter
from stoic.outcome import Outcome, classify
from stoic.policies.breaker import CircuitBreaker, CountWindow

FAST = stoic.Retry(attempts=3, backoff=backoff.constant(0.01, max=5.0))


def session(**kwargs: object) -> requests.Session:
    kwargs.setdefault("policy", FAST)
    s = requests.Session()
    adapter = ResilientAdapter(**kwargs)  # type: ignore[arg-type]
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with session() as s:
        yield s


def test_503_with_retry_after_is_waited_out_then_succeeds(service: Running) -> None:
    busy = Action(503, {"Retry-After": "1"})
    service.backend.answer("/r", busy, busy, Action(200, body=b"done"))
    with stoic.testing.virtual_time() as vc, session() as s:
        response = s.get(f"{service.url}/r", timeout=5)
    assert response.content == b"done"
    assert len(service.backend.seen("/r")) == 3
    assert vc.sleeps == [1.0, 1.0]


def test_lost_reply_post_without_a_key_is_not_retried(service: Running) -> None:
    service.backend.answer("/pay", Action(drop=True), Action(200))
    with session(idempotency_keys=False) as s, pytest.raises(requests.ConnectionError) as info:
        s.post(f"{service.url}/pay", json={"amount": 10}, timeout=5)
    assert classify(info.value).outcome is Outcome.UNKNOWN
    assert len(service.backend.seen("/pay")) == 1


def test_lost_reply_post_with_a_generated_key_is_retried_with_the_same_key(
    service: Running, http: requests.Session
) -> None:
    service.backend.answer("/pay", Action(drop=True), Action(drop=True), Action(201))
    response = http.post(f"{service.url}/pay", json={"amount": 10}, timeout=5)
    assert response.status_code == 201
    hits = service.backend.seen("/pay")
    assert len(hits) == 3
    keys = {h.headers.get("idempotency-key") for h in hits}
    assert len(keys) == 1 and None not in keys


def test_get_read_timeout_is_retried(service: Running, http: requests.Session) -> None:
    service.backend.answer("/slow", Action(delay=1.0), Action(200, body=b"fast"))
    response = http.get(f"{service.url}/slow", timeout=(1, 0.25))
    assert response.content == b"fast"
    assert len(service.backend.seen("/slow")) == 2


def test_404_is_not_retried(service: Running, http: requests.Session) -> None:
    service.backend.answer("/missing", Action(404))
    assert http.get(f"{service.url}/missing", timeout=5).status_code == 404
    assert len(service.backend.seen("/missing")) == 1


def test_500_on_post_is_not_retried_and_the_response_is_returned(service: Running) -> None:
    service.backend.answer("/order", Action(500, body=b"boom"), Action(201))
    with session(idempotency_keys=False) as s:
        response = s.post(f"{service.url}/order", json={}, timeout=5)
    assert response.status_code == 500 and response.content == b"boom"
    assert len(service.backend.seen("/order")) == 1


def test_exhausted_retries_return_the_last_response(
    service: Running, http: requests.Session
) -> None:
    service.backend.answer("/flaky", Action(502, body=b"a"), Action(502, body=b"b"), Action(
        503, body=b"last"))
    response = http.get(f"{service.url}/flaky", timeout=5)
    assert response.status_code == 503 and response.text == "last"
    assert len(service.backend.seen("/flaky")) == 3


def test_a_request_without_a_timeout_gets_the_default(service: Running) -> None:
    service.backend.answer("/hang", Action(delay=2.0))
    policy = stoic.Retry(attempts=1)
    started = time.monotonic()
    with session(policy=policy, default_timeout=(1.0, 0.2)) as s, pytest.raises(requests.ReadTimeout):
        s.get(f"{service.url}/hang")  # no timeout: requests alone would wait forever
    assert time.monotonic() - started < 1.5


def test_a_file_body_is_sent_once(service: Running, http: requests.Session, tmp_path) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(b"payload")
    service.backend.answer("/up", Action(503), Action(200))
    with path.open("rb") as body:
        response = http.post(f"{service.url}/up", data=body, timeout=5)
    assert response.status_code == 503
    assert len(service.backend.seen("/up")) == 1


def test_deadline_shrinks_the_timeout_and_raises_deadline_exceeded(
    service: Running, http: requests.Session
) -> None:
    service.backend.answer("/slow", Action(delay=3.0))
    started = time.monotonic()
    with stoic.deadline(0.3), pytest.raises(stoic.DeadlineExceeded):
        http.get(f"{service.url}/slow", timeout=10)
    assert time.monotonic() - started < 1.5
    (hit,) = service.backend.seen("/slow")
    assert 0 < int(hit.headers["x-request-timeout-ms"]) <= 300


def test_no_attempt_after_the_deadline(service: Running, http: requests.Session) -> None:
    with stoic.deadline(0), pytest.raises(stoic.DeadlineExceeded):
        http.get(f"{service.url}/late", timeout=5)
    assert service.backend.seen("/late") == []


def test_request_id_is_propagated(service: Running, http: requests.Session) -> None:
    with stoic.context.bind(request_id="rq-9"):
        http.get(f"{service.url}/x", timeout=5)
    assert service.backend.seen("/x")[0].headers["x-request-id"] == "rq-9"


def test_open_breaker_fails_fast_without_connecting_and_other_host_is_unaffected(
    service: Running, other_service: Running
) -> None:
    def small(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, window=CountWindow(3), minimum_calls=3, open_for=600)

    service.backend.answer("/down", Action(503))
    with session(breaker=small) as s:
        assert s.get(f"{service.url}/down", timeout=5).status_code == 503
    hits, connections = len(service.backend.hits), service.backend.connections
    assert hits == 3
    with session(breaker=small) as fresh, pytest.raises(stoic.CircuitOpenError):
        fresh.get(f"{service.url}/down", timeout=5)
    assert (len(service.backend.hits), service.backend.connections) == (hits, connections)
    with session(breaker=small) as fresh:
        assert fresh.get(f"{other_service.url}/up", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"policy": 3}, "policy"),
        ({"default_timeout": (1, 2, 3)}, "default_timeout"),
        ({"default_timeout": -1}, "default_timeout"),
        ({"max_retries": 3}, "max_retries"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ResilientAdapter(**kwargs)

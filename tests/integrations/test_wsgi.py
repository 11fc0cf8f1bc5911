"""WSGI middleware, the Flask extension and the Django middleware, served by waitress on loopback.

Each framework serves the same routes (``django_urls`` has the Django views; the plain WSGI
and Flask twins are below) and is called through stoic's own httpx transport, so the tests
show both ends: what the server does with what the client sent, and what the client does
with what the server answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from waitress.server import create_server

import stoic
from integrations import django_urls
from stoic import backoff
from stoic.idempotency import MemoryStore
from stoic.integrations.httpx import ResilientTransport
from stoic.integrations.wsgi import IdempotencyMiddleware, StoicMiddleware

HITS = django_urls.HITS
CHARGES = django_urls.CHARGES
STORE = MemoryStore()
DOWNSTREAM = django_urls.DOWNSTREAM
FAST = stoic.Retry(max_attempts=4, backoff=backoff.constant(0.05, max=5.0))


def user_from(environ: dict[str, Any]) -> str | None:
    return environ.get("HTTP_X_USER")


def _json(start_response: Any, status: str, payload: Any) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _seen_payload() -> dict[str, Any]:
    return {"remaining": stoic.remaining(), "request_id": stoic.context.get("request_id"),
            "user_id": stoic.context.get("user_id")}


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The routes of ``django_urls`` as a bare WSGI app."""
    path = environ["PATH_INFO"]
    HITS.append({"path": path})
    if path == "/seen":
        return _json(start_response, "200 OK", _seen_payload())
    if path == "/slow":
        time.sleep(float((environ.get("QUERY_STRING") or "s=0.5").split("=")[1]))
        start_response("200 OK", [("Content-Length", "4")])
        return [b"slow"]
    if path == "/down":
        response = DOWNSTREAM["client"].get(DOWNSTREAM["url"])
        start_response(f"{response.status_code} X", [])
        return [response.content]
    if path == "/late":
        raise stoic.DeadlineExceeded("the app ran out of time")
    if path == "/pay":
        CHARGES.append(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        time.sleep(0.6)
        return _json(start_response, "201 Created", {"charged": len(CHARGES)})
    start_response("404 Not Found", [("Content-Length", "13")])
    return [b"no such order"]


def flask_app() -> Any:
    from flask import Flask, request

    from stoic.integrations.flask import Stoic

    app = Flask("stoic_test")
    app.config["STOIC_SERVICE"] = "orders"

    @app.route("/seen")
    def seen() -> Any:
        HITS.append({"path": "/seen"})
        return _seen_payload()

    @app.route("/slow")
    def slow() -> Any:
        HITS.append({"path": "/slow"})
        time.sleep(float(request.args.get("s", "0.5")))
        return "slow"

    @app.route("/missing")
    def missing() -> Any:
        HITS.append({"path": "/missing"})
        return "no such order", 404

    @app.route("/down")
    def down() -> Any:
        HITS.append({"path": "/down"})
        response = DOWNSTREAM["client"].get(DOWNSTREAM["url"])
        return response.content, response.status_code

    @app.route("/late")
    def late() -> Any:
        raise stoic.DeadlineExceeded("the view ran out of time")

    @app.route("/pay", methods=["POST"])
    def pay() -> Any:
        CHARGES.append(request.get_data())
        time.sleep(0.6)
        return {"charged": len(CHARGES)}, 201

    Stoic(app, version="1.0", bulkhead=stoic.Bulkhead(1), user_id=user_from, idempotency=STORE)
    return app


def django_app() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="stoic-tests", ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="integrations.django_urls", USE_TZ=True,
            MIDDLEWARE=["stoic.integrations.django.StoicMiddleware"],
            STOIC={"SERVICE": "orders", "VERSION": "1.0", "MAX_CONCURRENT": 1,
                   "USER_ID": "integrations.test_wsgi.user_from"},
            INSTALLED_APPS=[], LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application

    return IdempotencyMiddleware(get_wsgi_application(), STORE, lease=2.0)


def served_app(kind: str) -> Any:
    if kind == "wsgi":
        return StoicMiddleware(IdempotencyMiddleware(plain_app, STORE, lease=2.0), "orders", "1.0",
                               bulkhead=stoic.Bulkhead(1), user_id=user_from)
    if kind == "flask":
        return flask_app()
    return django_app()


@dataclass
class Served:
    url: str
    kind: str


def serve(app: Any) -> tuple[Any, str]:
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    return server, f"http://127.0.0.1:{server.effective_port}"


def stop(server: Any) -> None:
    server.close()
    server.task_dispatcher.shutdown()


@pytest.fixture(scope="module", params=["wsgi", "flask", "django"])
def _served(request: pytest.FixtureRequest) -> Iterator[Served]:
    server, url = serve(served_app(request.param))
    try:
        yield Served(url, request.param)
    finally:
        stop(server)


@pytest.fixture(scope="module")
def _downstream() -> Iterator[tuple[str, list[str]]]:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "4")])
        return [b"down"]

    server, url = serve(app)
    try:
        yield url, calls
    finally:
        stop(server)


@pytest.fixture
def served(_served: Served, _downstream: tuple[str, list[str]]) -> Iterator[Served]:
    HITS.clear()
    CHARGES.clear()
    url, calls = _downstream
    calls.clear()
    DOWNSTREAM["url"] = f"{url}/ledger"
    DOWNSTREAM["calls"] = calls
    DOWNSTREAM["client"] = httpx.Client(transport=ResilientTransport(policy=FAST), timeout=5)
    yield _served
    DOWNSTREAM["client"].close()


def client(**kwargs: Any) -> httpx.Client:
    kwargs.setdefault("policy", FAST)
    return httpx.Client(transport=ResilientTransport(**kwargs), timeout=10)


def test_the_callers_deadline_is_bound_in_the_handler(served: Served) -> None:
    with client() as c, stoic.deadline(2.0), stoic.context.bind(request_id="req-5"):
        response = c.get(f"{served.url}/seen", headers={"X-User": "ada"})
    body = response.json()
    assert 0 < body["remaining"] <= 2.0
    assert body["request_id"] == "req-5" and body["user_id"] == "ada"
    assert response.headers["x-request-id"] == "req-5"


def test_a_request_arriving_out_of_time_is_answered_504_without_running(
    served: Served
) -> None:
    with httpx.Client() as c:
        response = c.get(f"{served.url}/seen", headers={"X-Request-Timeout-Ms": "0"})
    assert response.status_code == 504
    assert HITS == []
    assert response.headers["x-request-id"]


def test_deadline_exceeded_in_the_handler_is_504(served: Served) -> None:
    with httpx.Client() as c:
        response = c.get(f"{served.url}/late")
    assert response.status_code == 504


def test_a_full_server_sheds_with_503_and_the_client_retries_it(served: Served) -> None:
    with httpx.Client() as plain:
        slow = threading.Thread(target=plain.get, args=(f"{served.url}/slow?s=0.8",),
                                kwargs={"timeout": 10})
        slow.start()
        time.sleep(0.3)
        shed = plain.get(f"{served.url}/seen")
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        with client() as c:  # stoic's client waits the Retry-After out and gets through
            assert c.get(f"{served.url}/seen").status_code == 200
        slow.join(10)


def test_a_permanent_failure_is_not_retried(served: Served) -> None:
    with client() as c:
        assert c.get(f"{served.url}/missing").status_code == 404
    assert HITS == [{"path": "/missing"}]


def test_an_open_breaker_downstream_is_503_and_makes_no_connection(served: Served) -> None:
    transport = DOWNSTREAM["client"]._transport
    breaker = transport.host_policy(DOWNSTREAM["url"])
    breaker.force_open()
    with httpx.Client() as plain:
        response = plain.get(f"{served.url}/down")
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert DOWNSTREAM["calls"] == []
    breaker.reset()
    with httpx.Client() as plain:
        assert plain.get(f"{served.url}/down").status_code == 200
    assert DOWNSTREAM["calls"] == ["/ledger"]


def test_a_lost_reply_to_a_post_without_a_key_is_not_retried(served: Served) -> None:
    transport = ResilientTransport(policy=FAST, idempotency_keys=False)
    c = httpx.Client(transport=transport, timeout=httpx.Timeout(5, read=0.25))
    with c, pytest.raises(httpx.ReadTimeout):
        c.post(f"{served.url}/pay", content=b"order-1")
    time.sleep(0.6)  # let the server finish the charge it was making
    assert CHARGES == [b"order-1"]


def test_a_lost_reply_with_a_key_is_retried_and_charges_once(served: Served) -> None:
    # attempt 1 times out while the charge is made (UNKNOWN: retried, since keyed); the
    # retry is refused while the first runs (Django: 409 with Retry-After = the lease left,
    # 2 s here; plain WSGI and Flask shed it first, 503 Retry-After 1, their bulkhead of 1
    # being taken) and waits; the next gets the stored reply, replayed
    policy = stoic.Retry(max_attempts=5, backoff=backoff.constant(0.1, max=5.0))
    with httpx.Client(transport=ResilientTransport(policy=policy),
                      timeout=httpx.Timeout(5, read=0.25)) as c:
        response = c.post(f"{served.url}/pay", content=b"order-2")
    assert response.status_code == 201 and response.json() == {"charged": 1}
    assert response.headers["idempotent-replayed"] == "true"
    assert CHARGES == [b"order-2"]


def test_a_key_reused_for_another_request_is_refused(served: Served) -> None:
    with httpx.Client(timeout=5) as c:
        key = {"Idempotency-Key": f"reuse-{served.kind}-{time.monotonic()}"}
        assert c.post(f"{served.url}/pay", content=b"a", headers=key).status_code == 201
        again = c.post(f"{served.url}/pay", content=b"b", headers=key)
    assert again.status_code == 422
    assert CHARGES == [b"a"]


def test_bad_configuration_names_the_parameter() -> None:
    for kwargs, name in (({"max_deadline": 0}, "max_deadline"), ({"service": ""}, "service"),
                         ({"bulkhead": 2}, "bulkhead")):
        arguments: dict[str, Any] = {"service": "s", "version": "1", **kwargs}
        with pytest.raises(ValueError, match=name):
            StoicMiddleware(plain_app, **arguments)

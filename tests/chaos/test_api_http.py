"""The API's HTTP layer over real sockets: body limits, the browser block, and real clients
(curl, Node's fetch) as they are installed on the machine."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from typing import Any

import pytest

from stoic.chaos import ProxyServer
from stoic.chaos.proxy.server import MAX_BODY

from .conftest import api


def exchange(server: ProxyServer, raw: bytes) -> bytes:
    """Send ``raw`` on one connection, end our side, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"^HTTP/1\.1 (\d{3}) ", answer, re.MULTILINE)]


def json_request(method: str, path: str, body: Any, *, close: bool = False) -> bytes:
    data = json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else ""))
    return head.encode() + b"\r\n" + data


SMUGGLED = json_request("POST", "/proxies", {"name": "smuggled", "upstream": "127.0.0.1:9"})


class TestBodyLimit:
    def test_pipelined_requests_are_each_answered(self, proxy_server: ProxyServer) -> None:
        one = b"GET /version HTTP/1.1\r\nHost: api\r\n\r\n"
        two = json_request("POST", "/proxies", {"name": "p", "upstream": "127.0.0.1:9",
                                                "enabled": False}, close=True)
        assert statuses(exchange(proxy_server, one + two)) == [200, 201]
        assert "p" in proxy_server.proxies()

    def test_a_declared_oversized_body_answers_413_and_what_it_hides_never_runs(
        self, proxy_server: ProxyServer
    ) -> None:
        head = (f"POST /proxies HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()
        answer = exchange(proxy_server, head + SMUGGLED)
        assert statuses(answer) == [413]
        assert b"connection: close" in answer.lower()
        assert proxy_server.proxies() == {}

    def test_a_chunked_body_over_the_limit_answers_413_and_what_follows_never_runs(
        self, proxy_server: ProxyServer
    ) -> None:
        head = (b"POST /proxies HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        size = MAX_BODY + 1
        body = f"{size:x}\r\n".encode() + b" " * size + b"\r\n0\r\n\r\n"
        answer = exchange(proxy_server, head + body + SMUGGLED)
        assert statuses(answer) == [413]
        assert proxy_server.proxies() == {}

    def test_a_body_at_the_limit_is_read(self, proxy_server: ProxyServer) -> None:
        data = json.dumps({"name": "big", "upstream": "127.0.0.1:9", "enabled": False})
        padded = data.encode() + b" " * (MAX_BODY - len(data))
        response = api(proxy_server, "POST", "/proxies", data=padded,
                       headers={"Content-Type": "application/json"})
        assert response.status_code == 201

    def test_a_head_request_is_answered_without_a_body(self, proxy_server: ProxyServer) -> None:
        raw = b"HEAD /version HTTP/1.1\r\nHost: api\r\n\r\nGET /version HTTP/1.1\r\n" \
              b"Host: api\r\nConnection: close\r\n\r\n"
        answer = exchange(proxy_server, raw)
        assert statuses(answer) == [405, 200]
        assert answer.count(b'"version"') == 1

    def test_an_oversized_header_block_answers_431_and_closes(
        self, proxy_server: ProxyServer
    ) -> None:
        raw = b"GET /version HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        assert statuses(exchange(proxy_server, raw + SMUGGLED)) == [431]
        assert proxy_server.proxies() == {}

    def test_a_malformed_request_answers_400_and_closes(self, proxy_server: ProxyServer) -> None:
        answer = exchange(proxy_server, b"NOT A REQUEST\r\n\r\n" + SMUGGLED)
        assert statuses(answer) == [400]
        assert proxy_server.proxies() == {}


CREATE = {"name": "web", "upstream": "127.0.0.1:9", "enabled": False}


def post_create(*headers: str) -> bytes:
    """``POST /proxies`` creating ``CREATE``, with exactly these header lines."""
    body = json.dumps(CREATE).encode()
    head = "".join(f"{line}\r\n" for line in (*headers, f"content-length: {len(body)}"))
    return f"POST /proxies HTTP/1.1\r\n{head}\r\n".encode() + body


class TestBrowserBlock:
    @pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
    def test_a_foreign_origin_is_refused_with_403_and_changes_nothing(
        self, proxy_server: ProxyServer, origin: str
    ) -> None:
        response = api(proxy_server, "POST", "/proxies", json=CREATE,
                       headers={"Origin": origin, "User-Agent": "curl/8.5.0"})
        assert response.status_code == 403
        assert "Origin not allowed" in response.json()["error"]
        assert proxy_server.proxies() == {}

    def test_the_apis_own_origin_is_allowed(self, proxy_server: ProxyServer) -> None:
        own = f"http://localhost:{proxy_server.api_port}"
        response = api(proxy_server, "POST", "/proxies", json=CREATE, headers={"Origin": own})
        assert response.status_code == 201

    @pytest.mark.parametrize("kwargs", [
        {"data": json.dumps(CREATE), "headers": {"Content-Type": "text/plain"}},
        {"data": CREATE},  # a form post: application/x-www-form-urlencoded
        {"data": json.dumps(CREATE), "headers": {"Content-Type": "multipart/form-data; b=x"}},
    ])
    def test_a_write_whose_body_is_not_json_is_refused_with_415(
        self, proxy_server: ProxyServer, kwargs: dict[str, Any]
    ) -> None:
        response = api(proxy_server, "POST", "/proxies", **kwargs)
        assert response.status_code == 415
        assert "application/json" in response.json()["error"]
        assert proxy_server.proxies() == {}

    def test_a_write_without_a_body_needs_no_content_type(
        self, proxy_server: ProxyServer
    ) -> None:
        assert api(proxy_server, "POST", "/reset").status_code == 204

    def test_a_cross_site_fetch_is_refused_with_403(self, proxy_server: ProxyServer) -> None:
        response = api(proxy_server, "POST", "/proxies", json=CREATE,
                       headers={"Sec-Fetch-Site": "cross-site", "User-Agent": "x"})
        assert response.status_code == 403
        assert proxy_server.proxies() == {}

    def test_a_no_cors_form_post_as_a_browser_sends_it_is_refused(
        self, proxy_server: ProxyServer
    ) -> None:
        raw = post_create(
            "Host: 127.0.0.1", "Origin: https://evil.example",
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
            "Content-Type: text/plain;charset=UTF-8", "Sec-Fetch-Mode: no-cors",
            "Sec-Fetch-Site: cross-site",
        )
        assert statuses(exchange(proxy_server, raw)) == [403]
        assert proxy_server.proxies() == {}

    def test_node_fetch_headers_replayed_over_a_socket_are_served(
        self, proxy_server: ProxyServer
    ) -> None:
        """Exactly what Node's fetch (undici) sends: Sec-Fetch-Mode cors, no Origin."""
        raw = post_create(
            "host: 127.0.0.1", "connection: close", "content-type: application/json",
            "accept: */*", "accept-language: *", "sec-fetch-mode: cors", "user-agent: node",
            "accept-encoding: gzip, deflate",
        )
        assert statuses(exchange(proxy_server, raw)) == [201]


NODE_SCRIPT = """
const base = process.argv[1];
const json = {"Content-Type": "application/json"};
const created = await fetch(base + "/proxies", {method: "POST", headers: json,
  body: JSON.stringify({name: "node", upstream: "127.0.0.1:9", enabled: false})});
const toxic = await fetch(base + "/proxies/node/toxics", {method: "POST", headers: json,
  body: JSON.stringify({type: "latency", attributes: {latency: 5}})});
const listed = await fetch(base + "/proxies");
const reset = await fetch(base + "/reset", {method: "POST"});
const removed = await fetch(base + "/proxies/node", {method: "DELETE"});
console.log(JSON.stringify([created.status, toxic.status, listed.status,
  Object.keys(await listed.json()), reset.status, removed.status]));
"""


def test_node_fetch_drives_the_api(proxy_server: ProxyServer) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install -y nodejs); the replayed-headers "
                    "test covers what its fetch sends")
    result = subprocess.run(
        [node, "--input-type=module", "-e", NODE_SCRIPT, proxy_server.api_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if "fetch is not defined" in result.stderr:
        pytest.skip("this node has no fetch (Node 18 or later needed)")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [201, 200, 200, ["node"], 204, 204]


def curl(*args: str) -> tuple[int, str]:
    """Run the real curl; (HTTP status, body)."""
    binary = shutil.which("curl")
    if binary is None:
        pytest.skip("curl is not installed (apt-get install -y curl)")
    result = subprocess.run([binary, "-sS", "-w", "\n%{http_code}", *args],
                            capture_output=True, text=True, timeout=60, check=True)
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def test_curl_drives_the_api(proxy_server: ProxyServer) -> None:
    url = proxy_server.api_url
    json_type = ("-H", "Content-Type: application/json")
    created = curl(*json_type, "-d", json.dumps(CREATE), f"{url}/proxies")
    assert created[0] == 201
    assert curl(f"{url}/proxies")[0] == 200
    # a body over 1 KB: curl asks "Expect: 100-continue" first
    many = [{"name": f"p{i:03}", "upstream": "127.0.0.1:9", "enabled": False}
            for i in range(40)]
    populated = curl(*json_type, "-d", json.dumps(many), f"{url}/populate")
    assert populated[0] == 201
    assert len(json.loads(populated[1])["proxies"]) == 40
    assert curl("-X", "PATCH", *json_type, "-d", '{"upstream": "127.0.0.1:10"}',
                f"{url}/proxies/web")[0] == 200
    assert curl("-X", "POST", f"{url}/reset")[0] == 204
    assert curl("-X", "DELETE", f"{url}/proxies/web")[0] == 204
    # curl -d without a type sends a form type, which a browser could too: refused
    status, body = curl("-d", json.dumps(CREATE), f"{url}/proxies")
    assert status == 415
    assert "application/json" in json.loads(body)["error"]

"""The Toxiproxy 2.x HTTP API: routes, JSON shapes, status codes, errors, and real clients."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from stoic.chaos import ApiError, ProxyClient, ProxyServer

from .conftest import api, echoes


@pytest.fixture
def proxy(proxy_server: ProxyServer, echo_port: int) -> dict[str, Any]:
    response = api(proxy_server, "POST", "/proxies",
                   json={"name": "echo", "upstream": f"127.0.0.1:{echo_port}",
                         "listen": "127.0.0.1:0"})
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


class TestProxies:
    def test_create_answers_201_with_the_listen_port_resolved(
        self, proxy: dict[str, Any], echo_port: int
    ) -> None:
        assert proxy["name"] == "echo"
        assert proxy["upstream"] == f"127.0.0.1:{echo_port}"
        assert proxy["enabled"] is True
        assert proxy["toxics"] == []
        host, port = proxy["listen"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert echoes(int(port))

    def test_index_maps_names_to_proxies(self, proxy_server: ProxyServer, proxy: dict[str, Any]) -> None:
        response = api(proxy_server, "GET", "/proxies")
        assert response.status_code == 200
        assert response.json() == {"echo": proxy}

    def test_null_fields_take_their_defaults(self, proxy_server: ProxyServer, echo_port: int) -> None:
        response = api(proxy_server, "POST", "/proxies", json={
            "name": "n", "upstream": f"127.0.0.1:{echo_port}", "listen": None, "enabled": None,
        })
        assert response.status_code == 201
        assert response.json()["enabled"] is True
        assert response.json()["listen"].startswith("127.0.0.1:")

    def test_created_disabled_does_not_listen_until_enabled(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        api(proxy_server, "POST", "/proxies", json={
            "name": "later", "upstream": f"127.0.0.1:{echo_port}", "enabled": False})
        response = api(proxy_server, "PATCH", "/proxies/later", json={"enabled": True})
        assert response.status_code == 200
        assert echoes(int(response.json()["listen"].rsplit(":", 1)[1]))

    def test_update_by_post_and_patch_is_partial(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        off = api(proxy_server, "POST", "/proxies/echo", json={"enabled": False})
        assert off.status_code == 200
        assert off.json() == {**proxy, "enabled": False}
        on = api(proxy_server, "PATCH", "/proxies/echo", json={"enabled": True})
        assert on.json() == proxy  # same port after a disable/enable cycle
        assert echoes(int(proxy["listen"].rsplit(":", 1)[1]))

    def test_changing_upstream_sends_new_connections_there(
        self, proxy_server: ProxyServer, proxy: dict[str, Any], blast_port: int
    ) -> None:
        api(proxy_server, "PATCH", "/proxies/echo", json={"upstream": f"127.0.0.1:{blast_port}"})
        port = int(api(proxy_server, "GET", "/proxies/echo").json()["listen"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"3\n")
            assert sock.recv(100) == bytes([0, 1, 2])

    def test_delete_answers_204_and_closes_the_port(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        response = api(proxy_server, "DELETE", "/proxies/echo")
        assert response.status_code == 204
        assert response.content == b""
        assert api(proxy_server, "GET", "/proxies/echo").status_code == 404
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(proxy["listen"].rsplit(":", 1)[1])), 2)

    def test_populate_answers_201_and_keeps_unchanged_proxies(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        config = [{"name": f"p{i}", "upstream": f"127.0.0.1:{echo_port}",
                   "listen": "127.0.0.1:0"} for i in range(2)]
        response = api(proxy_server, "POST", "/populate", json=config)
        assert response.status_code == 201
        proxies = response.json()["proxies"]
        assert [p["name"] for p in proxies] == ["p0", "p1"]
        again = api(proxy_server, "POST", "/populate", json=[
            {"name": "p0", "upstream": f"127.0.0.1:{echo_port}", "listen": proxies[0]["listen"]}])
        assert again.json()["proxies"] == [proxies[0]]

    def test_reset_answers_204(self, proxy_server: ProxyServer, proxy: dict[str, Any]) -> None:
        api(proxy_server, "POST", "/proxies/echo/toxics", json={"type": "latency"})
        response = api(proxy_server, "POST", "/reset")
        assert response.status_code == 204
        assert api(proxy_server, "GET", "/proxies/echo/toxics").json() == []

    def test_version(self, proxy_server: ProxyServer) -> None:
        response = api(proxy_server, "GET", "/version")
        assert response.status_code == 200
        assert response.json()["version"].startswith("2.")


class TestToxics:
    def test_create_answers_200_with_defaults_filled_in(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        response = api(proxy_server, "POST", "/proxies/echo/toxics",
                       json={"type": "latency", "attributes": {"latency": 10}})
        assert response.status_code == 200
        assert response.json() == {
            "name": "latency_downstream", "type": "latency", "stream": "downstream",
            "toxicity": 1.0, "attributes": {"latency": 10, "jitter": 0},
        }
        listed = api(proxy_server, "GET", "/proxies/echo").json()["toxics"]
        assert listed == [response.json()]

    def test_null_attributes_mean_defaults(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        response = api(proxy_server, "POST", "/proxies/echo/toxics", json={
            "name": "s", "type": "slicer", "stream": None, "toxicity": None, "attributes": None})
        assert response.json()["attributes"] == {"average_size": 0, "size_variation": 0,
                                                 "delay": 0}

    def test_update_by_post_and_patch_merges_attributes(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        api(proxy_server, "POST", "/proxies/echo/toxics", json={
            "name": "lag", "type": "latency", "attributes": {"latency": 10, "jitter": 2}})
        patched = api(proxy_server, "PATCH", "/proxies/echo/toxics/lag",
                      json={"attributes": {"latency": 50}})
        assert patched.status_code == 200
        assert patched.json()["attributes"] == {"latency": 50, "jitter": 2}
        posted = api(proxy_server, "POST", "/proxies/echo/toxics/lag", json={"toxicity": 0.5})
        assert posted.json()["toxicity"] == 0.5
        assert posted.json()["attributes"] == {"latency": 50, "jitter": 2}
        assert api(proxy_server, "GET", "/proxies/echo/toxics/lag").json() == posted.json()

    def test_delete_answers_204(self, proxy_server: ProxyServer, proxy: dict[str, Any]) -> None:
        api(proxy_server, "POST", "/proxies/echo/toxics", json={"name": "t", "type": "timeout"})
        assert api(proxy_server, "DELETE", "/proxies/echo/toxics/t").status_code == 204
        assert api(proxy_server, "GET", "/proxies/echo/toxics/t").status_code == 404


class TestBadInput:
    @pytest.mark.parametrize(
        ("method", "path", "body", "status", "message"),
        [
            ("POST", "/proxies/echo/toxics", {"type": "nope"}, 400, "invalid toxic type"),
            ("POST", "/proxies/echo/toxics", {"type": "latency", "stream": "sideways"}, 400,
             "stream was invalid"),
            ("POST", "/proxies/echo/toxics", {"type": "latency", "attributes": {"latency": -5}},
             400, "must be >= 0"),
            ("POST", "/proxies/echo/toxics", {"type": "latency", "toxicity": 2}, 400,
             "toxicity"),
            ("POST", "/proxies/echo/toxics", {"type": "latency", "attributes": {"lag": 5}},
             400, "unknown attribute"),
            ("POST", "/proxies", {"upstream": "127.0.0.1:1"}, 400, "missing required field: name"),
            ("POST", "/proxies", {"name": "x"}, 400, "missing required field: upstream"),
            ("POST", "/proxies", {"name": "x", "upstream": "nohost"}, 400, "host:port"),
            ("POST", "/proxies", {"name": "x", "upstream": "bad\u0000host:1"}, 400, "bad host"),
            ("POST", "/proxies", {"name": "x", "upstream": "127.0.0.1:1",
                                  "listen": "127.0.0.1 :0"}, 400, "bad host"),
            ("POST", "/proxies", {"name": "x", "upstream": "127.0.0.1:+80"}, 400, "bad port"),
            ("PATCH", "/proxies/echo", {"listen": "127.0.0.1:99999"}, 400, "0..65535"),
            ("POST", "/proxies", [1, 2], 400, "bad request body"),
            ("POST", "/populate", {"name": "x"}, 400, "bad request body"),
            ("GET", "/proxies/missing", None, 404, "proxy not found"),
            ("GET", "/proxies/echo/toxics/missing", None, 404, "toxic not found"),
            ("DELETE", "/proxies/echo/toxics/missing", None, 404, "toxic not found"),
            ("GET", "/nowhere", None, 404, "no such route"),
            ("DELETE", "/proxies", None, 405, "not allowed"),
        ],
    )
    def test_bad_requests_answer_the_right_status_and_an_error_body(
        self, proxy_server: ProxyServer, proxy: dict[str, Any], method: str, path: str,
        body: Any, status: int, message: str,
    ) -> None:
        response = api(proxy_server, method, path, json=body)
        assert response.status_code == status
        assert response.json()["status"] == status
        assert message in response.json()["error"]
        assert echoes(int(proxy["listen"].rsplit(":", 1)[1]))  # still serving

    def test_bad_json_answers_400(self, proxy_server: ProxyServer, proxy: dict[str, Any]) -> None:
        response = api(proxy_server, "POST", "/proxies/echo/toxics", data=b"{not json",
                       headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"].startswith("bad request body")
        assert echoes(int(proxy["listen"].rsplit(":", 1)[1]))

    def test_duplicate_names_answer_409(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        duplicate = api(proxy_server, "POST", "/proxies", json={
            "name": "echo", "upstream": proxy["upstream"]})
        assert (duplicate.status_code, duplicate.json()["error"]) == (409, "proxy already exists")
        api(proxy_server, "POST", "/proxies/echo/toxics", json={"type": "latency"})
        again = api(proxy_server, "POST", "/proxies/echo/toxics", json={"type": "latency"})
        assert (again.status_code, again.json()["error"]) == (409, "toxic already exists")

    def test_a_listen_port_in_use_answers_409_and_creates_nothing(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        response = api(proxy_server, "POST", "/proxies", json={
            "name": "clash", "upstream": proxy["upstream"], "listen": proxy["listen"]})
        assert response.status_code == 409
        assert "cannot listen" in response.json()["error"]
        assert "clash" not in api(proxy_server, "GET", "/proxies").json()
        assert echoes(int(proxy["listen"].rsplit(":", 1)[1]))

    def test_browser_user_agents_are_refused_with_403(self, proxy_server: ProxyServer) -> None:
        response = api(proxy_server, "GET", "/proxies",
                       headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
        assert response.status_code == 403

    def test_python_errors_carry_the_status_and_message(
        self, proxy_server: ProxyServer, proxy: dict[str, Any]
    ) -> None:
        for control in (proxy_server, ProxyClient(proxy_server.api_url)):
            with pytest.raises(ApiError) as caught:
                control.add_toxic("echo", "bogus")
            assert caught.value.status == 400
            assert "invalid toxic type" in caught.value.message


def api_port(client: ProxyClient) -> int:
    return int(client.url.rsplit(":", 1)[1])


class TestToxiproxyPython:
    """The unmodified ``toxiproxy-python`` client from PyPI, against ``stoic proxy``."""

    def test_full_lifecycle(self, stoic_proxy: ProxyClient, echo_port: int) -> None:
        from toxiproxy import Toxiproxy
        from toxiproxy.exceptions import NotFound, ProxyExists

        client = Toxiproxy()
        client.update_api_consumer("127.0.0.1", api_port(stoic_proxy))
        assert client.running()
        assert client.version() is not None
        proxy = client.create(upstream=f"127.0.0.1:{echo_port}", name="echo")
        port = int(proxy.listen.rsplit(":", 1)[1])
        assert echoes(port)
        assert set(client.proxies()) == {"echo"}
        with pytest.raises(ProxyExists):
            client.create(upstream=f"127.0.0.1:{echo_port}", name="echo")

        toxics = {
            "latency": {"latency": 10, "jitter": 1}, "bandwidth": {"rate": 100},
            "slow_close": {"delay": 10}, "timeout": {"timeout": 100},
            "reset_peer": {"timeout": 10},
            "slicer": {"average_size": 10, "size_variation": 2, "delay": 10},
            "limit_data": {"bytes": 100},
        }
        for kind, attributes in toxics.items():
            proxy.add_toxic(type=kind, attributes=attributes, stream="upstream")
        found = proxy.toxics()
        assert {t.type: t.attributes for t in found.values()} == toxics
        assert proxy.destroy_toxic("latency_upstream")
        assert "latency_upstream" not in proxy.toxics()

        with proxy.down():
            assert client.get_proxy("echo").enabled is False
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2)
        assert client.get_proxy("echo").enabled is True

        assert client.reset()
        assert proxy.toxics() == {}
        assert echoes(port)
        client.populate([{"name": "other", "upstream": f"127.0.0.1:{echo_port}",
                          "listen": "127.0.0.1:0"}])
        assert set(client.proxies()) == {"echo", "other"}
        client.destroy_all()
        assert client.proxies() == {}
        with pytest.raises(NotFound):
            proxy.destroy()


class TestChaostoolkitToxiproxy:
    """The unmodified ``chaostoolkit-toxiproxy`` activities against ``stoic proxy``, called as
    ``chaos run`` would call them."""

    def test_every_activity(self, stoic_proxy: ProxyClient, echo_port: int) -> None:
        from chaostoxi.proxy import actions as proxy_actions
        from chaostoxi.proxy import probes as proxy_probes
        from chaostoxi.toxic import actions as toxic_actions

        config: dict[str, Any] = {"toxiproxy_host": "127.0.0.1",
                                  "toxiproxy_port": api_port(stoic_proxy)}
        assert proxy_actions.create_proxy("echo", "127.0.0.1", echo_port,
                                          listen_host="127.0.0.1", configuration=config)
        port = int(config["echo_PORT"])
        assert echoes(port)
        assert proxy_probes.proxy_exist("echo", configuration=config)
        assert proxy_probes.get_proxy_attribute("echo", "enabled", configuration=config) is True

        assert toxic_actions.create_latency_toxic("echo", "lat", 20, jitter=5,
                                                  configuration=config)
        assert toxic_actions.create_bandwith_degradation_toxic("echo", "bw", 100,
                                                               configuration=config)
        assert toxic_actions.create_slow_connection_close_toxic("echo", "sc", 10,
                                                                configuration=config)
        assert toxic_actions.create_timeout_toxic("echo", "to", 100, configuration=config)
        assert toxic_actions.create_slicer_toxic("echo", "sl", 10, 2, 10, configuration=config)
        assert toxic_actions.create_limiter_toxic("echo", "ld", 1000, configuration=config)
        assert toxic_actions.create_toxic("echo", "rp", "reset_peer", stream="upstream",
                                          attributes={"timeout": 5}, configuration=config)
        assert len(stoic_proxy.toxics("echo")) == 7
        assert toxic_actions.delete_toxic("echo", "to", configuration=config)

        assert proxy_actions.disable_proxy("echo", configuration=config)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        assert proxy_actions.enable_proxy("echo", configuration=config)
        assert proxy_actions.reset(configuration=config)
        assert stoic_proxy.toxics("echo") == []
        assert echoes(port)
        proxy_actions.delete_proxy("echo", configuration=config)
        assert not proxy_probes.proxy_exist("echo", configuration=config)

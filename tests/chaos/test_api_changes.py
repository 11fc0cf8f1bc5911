"""Changes through the API are all or nothing: a refused request leaves every proxy as it was,
a reset never stops half way, and no toxic value can break the data path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoic.chaos import ApiError, ProxyHandle, ProxyServer
from stoic.chaos.toxics import ATTRIBUTE_MAX, TOXIC_TYPES, Toxic, make_stage

from .conftest import api, echoes


@contextlib.contextmanager
def occupied(port: int = 0) -> Iterator[str]:
    """Another process's listening socket on 127.0.0.1 (``port`` 0: a free one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


class TestPatchThatCannotBind:
    def test_a_busy_listen_address_answers_409_and_leaves_the_proxy_as_it_was(
        self, proxy_server: ProxyServer, echo_proxy: ProxyHandle, blast_port: int
    ) -> None:
        echo_proxy.add_toxic("latency", latency=1)
        before = api(proxy_server, "GET", "/proxies/echo").json()
        with socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=5) as open_conn:
            open_conn.sendall(b"a")
            assert open_conn.recv(10) == b"a"
            with occupied() as busy:
                response = api(proxy_server, "PATCH", "/proxies/echo", json={
                    "listen": busy, "upstream": f"127.0.0.1:{blast_port}"})
            assert response.status_code == 409
            assert f"cannot listen on {busy}" in response.json()["error"]
            assert api(proxy_server, "GET", "/proxies/echo").json() == before
            open_conn.sendall(b"b")  # the connection made before is untouched
            assert open_conn.recv(10) == b"b"
        assert echoes(echo_proxy.port)

    def test_enabling_on_an_address_taken_meanwhile_answers_409_and_stays_disabled(
        self, proxy_server: ProxyServer, echo_proxy: ProxyHandle
    ) -> None:
        echo_proxy.add_toxic("bandwidth", rate=100)
        echo_proxy.disable()
        before = api(proxy_server, "GET", "/proxies/echo").json()
        with occupied(echo_proxy.port):
            response = api(proxy_server, "POST", "/proxies/echo", json={"enabled": True})
            assert response.status_code == 409
            assert api(proxy_server, "GET", "/proxies/echo").json() == before
        echo_proxy.enable()
        assert echoes(echo_proxy.port)

    def test_a_free_listen_address_moves_the_proxy(
        self, proxy_server: ProxyServer, echo_proxy: ProxyHandle
    ) -> None:
        old = echo_proxy.port
        response = api(proxy_server, "PATCH", "/proxies/echo", json={"listen": "127.0.0.1:0"})
        assert response.status_code == 200
        new = int(response.json()["listen"].rsplit(":", 1)[1])
        assert new != old
        assert echoes(new)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old), timeout=2)


    def test_a_new_name_for_the_same_address_is_not_a_clash_with_itself(
        self, proxy_server: ProxyServer, echo_proxy: ProxyHandle
    ) -> None:
        port = echo_proxy.port
        response = api(proxy_server, "PATCH", "/proxies/echo", json={"listen": f"localhost:{port}"})
        assert response.status_code == 200
        assert response.json()["listen"] == f"127.0.0.1:{port}"
        assert echoes(port)


class TestReset:
    def test_reset_resets_every_proxy_and_names_those_it_could_not_enable(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        stuck = proxy_server.create("stuck", f"127.0.0.1:{echo_port}")  # first in order
        fine = proxy_server.create("fine", f"127.0.0.1:{echo_port}")
        for handle in (stuck, fine):
            handle.add_toxic("timeout", timeout=0)
            handle.disable()
        with occupied(stuck.port):
            response = api(proxy_server, "POST", "/reset")
            assert response.status_code == 409
            assert set(response.json()["failed"]) == {"stuck"}
            assert "stuck" in response.json()["error"]
            proxies = proxy_server.proxies()
            assert proxies["fine"]["enabled"] is True
            assert proxies["stuck"]["enabled"] is False
            assert proxies["fine"]["toxics"] == proxies["stuck"]["toxics"] == []
            assert echoes(fine.port)
            with pytest.raises(ApiError) as caught:  # in process too
                proxy_server.reset()
            assert caught.value.status == 409
        proxy_server.reset()
        assert echoes(stuck.port)


HUGE = "1" + "0" * 399  # a 400-digit integer


class TestAttributeRange:
    @pytest.mark.parametrize(("kind", "attribute"), [
        (kind, attribute) for kind, defaults in TOXIC_TYPES.items() for attribute in defaults
    ])
    def test_a_huge_attribute_answers_400_naming_it_and_stores_nothing(
        self, proxy_server: ProxyServer, echo_proxy: ProxyHandle, kind: str, attribute: str
    ) -> None:
        raw = f'{{"type": "{kind}", "attributes": {{"{attribute}": {HUGE}}}}}'
        response = api(proxy_server, "POST", "/proxies/echo/toxics", data=raw,
                       headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert f"attribute {attribute} of {kind} must be <= {ATTRIBUTE_MAX}" in \
            response.json()["error"]
        assert len(response.json()["error"]) < 200
        assert echo_proxy.toxics() == []
        assert echoes(echo_proxy.port)

    def test_a_huge_update_answers_400_and_keeps_the_toxic(
        self, proxy_server: ProxyServer, echo_proxy: ProxyHandle
    ) -> None:
        toxic = echo_proxy.add_toxic("latency", name="lag", latency=5)
        response = api(proxy_server, "PATCH", "/proxies/echo/toxics/lag",
                       data=f'{{"attributes": {{"jitter": {HUGE}}}}}',
                       headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert "attribute jitter" in response.json()["error"]
        assert echo_proxy.toxics() == [toxic]

    def test_the_largest_values_are_accepted(self, echo_proxy: ProxyHandle) -> None:
        for kind, defaults in TOXIC_TYPES.items():
            attributes = dict.fromkeys(defaults, ATTRIBUTE_MAX)
            toxic = echo_proxy.add_toxic(kind, stream="upstream", **attributes)
            assert toxic["attributes"] == attributes
            echo_proxy.remove_toxic(toxic["name"])


class _Link:
    """A connection as a stage sees it, recording what the stage did to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ended: list[str] = []

    def close(self) -> None:
        self.ended.append("close")

    def reset(self) -> None:
        self.ended.append("reset")


ATTRIBUTE_VALUES = st.one_of(st.integers(0, ATTRIBUTE_MAX), st.sampled_from([0, 1, ATTRIBUTE_MAX]))


@st.composite
def toxics(draw: st.DrawFn) -> Toxic:
    kind = draw(st.sampled_from(sorted(TOXIC_TYPES)))
    attributes = {key: draw(ATTRIBUTE_VALUES) for key in TOXIC_TYPES[kind]}
    return Toxic.from_json({"type": kind, "attributes": attributes})


@settings(max_examples=150, deadline=None)
@given(toxic=toxics(), data=st.binary(min_size=1, max_size=3000), seed=st.integers(0, 2**32))
def test_no_accepted_toxic_raises_in_the_data_path(toxic: Toxic, data: bytes, seed: int) -> None:
    """Any attribute values the API accepts: the stage passes, holds or ends data, never raises."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        link = _Link(loop)
        stage = make_stage(toxic, link, random.Random(seed))
        assert stage is not None
        passed: list[bytes] = []

        async def next_(piece: bytes, at: float) -> None:
            passed.append(piece)

        for step in (stage.pipe(data, loop.time(), next_), stage.before_eof()):
            with contextlib.suppress(asyncio.TimeoutError):  # held (latency, timeout...)
                await asyncio.wait_for(step, 0.02)
        stage.cancel()
        assert len(b"".join(passed)) <= len(data)

    asyncio.run(run())


def test_the_largest_values_on_live_connections_leave_the_loop_clean(
    proxy_server: ProxyServer, echo_proxy: ProxyHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    sockets = []
    for kind, defaults in TOXIC_TYPES.items():
        echo_proxy.add_toxic(kind, stream="upstream", **dict.fromkeys(defaults, ATTRIBUTE_MAX))
        sock = socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=5)
        sock.sendall(b"x" * 5000)
        sockets.append(sock)
        echo_proxy.remove_toxic(f"{kind}_upstream")
    for sock in sockets:
        sock.close()
    assert echoes(echo_proxy.port)
    proxy_server.reset()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

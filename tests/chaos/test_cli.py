"""``stoic proxy``: the fault proxy as a command, with a config file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from stoic.chaos import ProxyClient, ProxyHandle, ProxyServer
from stoic.cli import build_app

from .conftest import running_stoic_proxy


def test_stoic_proxy_serves_the_api_and_creates_the_configured_proxies(
    tmp_path: Path, echo_port: int
) -> None:
    config = tmp_path / "proxies.yaml"
    config.write_text(f"- name: echo\n  upstream: 127.0.0.1:{echo_port}\n  listen: 127.0.0.1:0\n")
    with running_stoic_proxy("--config", str(config)) as client:
        echo = client.proxy("echo")
        with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as sock:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"


def test_a_malformed_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps({"name": "not a list"}))
    result = CliRunner().invoke(build_app(), ["proxy", "--port", "0", "--config", str(config)])
    assert result.exit_code == 2
    assert "expected a list of proxy objects" in result.output


def test_a_config_that_is_not_yaml_exits_2_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "proxies.yaml"
    config.write_text("- name: [unclosed\n")
    result = CliRunner().invoke(build_app(), ["proxy", "--port", "0", "--config", str(config)])
    assert result.exit_code == 2
    assert "not valid YAML" in result.output


def test_a_config_proxy_on_a_busy_port_exits_1_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        config = tmp_path / "proxies.json"
        config.write_text(json.dumps([{"name": "x", "upstream": "127.0.0.1:1", "listen": address}]))
        result = CliRunner().invoke(build_app(), ["proxy", "--port", "0", "--config", str(config)])
    assert result.exit_code == 1
    assert f"cannot listen on {address}" in result.output


# ---------------------------------------------------------------------------------------------
# commands against a running proxy, like toxiproxy-cli


def run(server: ProxyServer | None, *args: str, env: dict[str, str] | None = None) -> Result:
    """``stoic proxy ARGS --host <server's API>`` in process, stderr kept apart."""
    host = ["--host", server.api_url] if server is not None else []
    return CliRunner().invoke(build_app(), ["proxy", *args, *host], env=env)


def assert_one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: "), message
    for word in words:
        assert word in message, message


def test_usage_shows_the_command_as_optional() -> None:
    result = CliRunner().invoke(build_app(), ["proxy", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "stoic proxy [OPTIONS] [COMMAND [ARGS]...]" in result.output


def test_proxy_commands_drive_a_running_proxy(proxy_server: ProxyServer, echo_port: int) -> None:
    upstream = f"127.0.0.1:{echo_port}"
    created = run(proxy_server, "create", "echo", "-l", "127.0.0.1:0", "-u", upstream)
    assert created.exit_code == 0, created.output
    listen = proxy_server.proxies()["echo"]["listen"]
    assert created.stdout == f"Created new proxy echo listening on {listen}\n"

    table = run(proxy_server, "list")
    assert table.stdout.splitlines()[0].split() == ["NAME", "LISTEN", "UPSTREAM", "ENABLED",
                                                    "TOXICS"]
    assert table.stdout.splitlines()[1].split() == ["echo", listen, upstream, "enabled", "0"]
    assert json.loads(run(proxy_server, "list", "--json").stdout) == proxy_server.proxies()

    assert run(proxy_server, "toggle", "echo").stdout == "Proxy echo is now disabled\n"
    assert proxy_server.proxies()["echo"]["enabled"] is False
    assert run(proxy_server, "toggle", "echo").stdout == "Proxy echo is now enabled\n"
    assert run(proxy_server, "delete", "echo").stdout == "Deleted proxy echo\n"
    assert proxy_server.proxies() == {}


def test_toxic_commands_use_toxiproxy_cli_names_and_units(
    proxy_server: ProxyServer, echo_proxy: ProxyHandle
) -> None:
    added = run(proxy_server, "toxic", "add", "echo", "-t", "latency", "-a", "latency=100",
                "-a", "jitter=10", "--upstream", "--tox", "0.5")
    assert added.stdout == "Added upstream latency toxic 'latency_upstream' on proxy 'echo'\n"
    assert echo_proxy.toxics() == [{"name": "latency_upstream", "type": "latency",
                                    "stream": "upstream", "toxicity": 0.5,
                                    "attributes": {"latency": 100, "jitter": 10}}]
    named = run(proxy_server, "toxic", "add", "echo", "--type", "bandwidth",
                "--toxicName", "narrow", "--attribute", "rate=64")
    assert named.stdout == "Added downstream bandwidth toxic 'narrow' on proxy 'echo'\n"

    updated = run(proxy_server, "toxic", "update", "echo", "-n", "latency_upstream",
                  "-a", "latency=250")
    assert updated.stdout == "Updated toxic 'latency_upstream' on proxy 'echo'\n"
    listed = json.loads(run(proxy_server, "toxic", "list", "echo", "--json").stdout)
    assert listed == echo_proxy.toxics()
    assert listed[0]["attributes"] == {"latency": 250, "jitter": 10}
    table = run(proxy_server, "toxic", "list", "echo").stdout.splitlines()
    assert table[1].split() == ["latency_upstream", "latency", "upstream", "0.5",
                                "jitter=10", "latency=250"]

    removed = run(proxy_server, "toxic", "remove", "echo", "-n", "latency_upstream")
    assert removed.stdout == "Removed toxic 'latency_upstream' on proxy 'echo'\n"
    assert run(proxy_server, "toxic", "delete", "echo", "-n", "narrow").exit_code == 0
    assert echo_proxy.toxics() == []


def test_the_api_address_comes_from_the_environment_or_the_serving_options(
    proxy_server: ProxyServer, echo_proxy: ProxyHandle
) -> None:
    from_env = run(None, "list", env={"TOXIPROXY_URL": f"127.0.0.1:{proxy_server.api_port}"})
    assert "echo" in from_env.stdout
    from_port = CliRunner().invoke(
        build_app(), ["proxy", "--port", str(proxy_server.api_port), "list"])
    assert "echo" in from_port.stdout


@pytest.mark.parametrize(("args", "code", "words"), [
    (("toxic", "add", "missing", "-t", "latency"), 1, ("missing", "proxy not found")),
    (("toxic", "update", "echo", "-n", "nope", "-a", "latency=1"), 1, ("toxic not found",)),
    (("toxic", "remove", "echo", "-n", "nope"), 1, ("toxic not found",)),
    (("toggle", "missing"), 1, ("proxy not found",)),
    (("toxic", "add", "echo", "-t", "latency", "-a", "latency"), 2, ("KEY=INTEGER",)),
    (("toxic", "add", "echo", "-t", "latency", "-a", "latency=fast"), 2, ("latency=fast",)),
    (("toxic", "add", "echo", "-t", "latency", "-a", "lag=5"), 2, ("unknown attribute 'lag'",)),
    (("toxic", "add", "echo", "-t", "latency", "-a", f"latency={10**40}"), 2,
     ("attribute latency", "<= 2147483647")),
    (("toxic", "add", "echo", "-t", "earthquake"), 2, ("invalid toxic type",)),
    (("toxic", "add", "echo", "-t", "latency", "-u", "-d"), 2, ("--upstream or --downstream",)),
    (("toxic", "add", "echo", "-t", "latency", "--toxicity", "2"), 2, ("--toxicity",)),
    (("create", "echo", "-u", "127.0.0.1:9"), 1, ("proxy already exists",)),
])
def test_errors_are_one_line_with_the_exit_status(
    proxy_server: ProxyServer, echo_proxy: ProxyHandle, args: tuple[str, ...], code: int,
    words: tuple[str, ...],
) -> None:
    assert_one_line_error(run(proxy_server, *args), code, *words)
    assert echo_proxy.toxics() == []


@pytest.mark.parametrize(("host", "code", "words"), [
    ("127.0.0.1:{free}", 1, ("cannot reach the proxy API", "Connection refused")),
    ("http://127.0.0.1:notaport", 2, ("bad --host",)),
])
def test_a_bad_or_unreachable_host_is_one_line(host: str, code: int, words: tuple[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    result = CliRunner().invoke(build_app(), ["proxy", "list", "--host", host.format(free=free)])
    assert_one_line_error(result, code, *words)


def test_a_serving_option_with_a_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(build_app(), ["proxy", "--seed", "1", "list"])
    assert_one_line_error(result, 2, "--seed")


def test_the_command_in_its_own_process_fails_in_one_line(stoic_proxy: ProxyClient) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "stoic", "proxy", "toxic", "add", "nowhere", "-t", "latency",
         "--host", stoic_proxy.url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert process.returncode == 1
    assert process.stderr == "error: toxic add on proxy nowhere: proxy not found\n"


def test_without_host_the_commands_use_the_toxiproxy_port() -> None:
    from stoic.chaos.cli import DEFAULT_API, api_url

    assert DEFAULT_API == "http://127.0.0.1:8474"
    assert api_url("localhost") == "http://localhost:8474"
    assert api_url("10.0.0.1:9000") == "http://10.0.0.1:9000"
    assert api_url("https://proxy.example/") == "https://proxy.example:8474"


def test_a_silent_api_gives_up_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        result = CliRunner().invoke(
            build_app(), ["proxy", "list", "--host", host, "--timeout", "0.5"])
    assert_one_line_error(result, 1, "cannot reach the proxy API", "timed out")

"""``stoic proxy``: the fault proxy as a command, with a config file."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

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

"""``chaos validate`` and ``chaos run`` on the example experiments, against ``stoic proxy``.

examples/chaos/run.py starts the example shop and ``stoic proxy`` under a Supervisor and runs
the chaos CLI on an experiment; these tests run it on free ports and read the journal, so
they prove that the activities really did what they claim, not only that chaos exited 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stoic
import stoic.chaostoolkit
from stoic.chaos import ProxyServer
from stoic.chaostoolkit import actions, probes
from support import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "chaos"
CHAOS = Path(sys.executable).parent / "chaos"


def run_example(experiment: str, tmp_path: Path) -> dict[str, Any]:
    journal = tmp_path / "journal.json"
    command = [sys.executable, str(EXAMPLES / "run.py"), str(EXAMPLES / experiment),
               "--shop-port", str(free_port()), "--proxy-port", str(free_port()),
               "--api-port", str(free_port()), "--journal", str(journal)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(journal.read_text())
    return outcome


def outputs(journal: dict[str, Any]) -> dict[str, Any]:
    assert journal["status"] == "completed"
    assert not journal["deviated"]
    assert journal["steady_states"]["before"]["steady_state_met"]
    assert journal["steady_states"]["after"]["steady_state_met"]
    for run in journal["run"]:
        assert run["status"] == "succeeded", run
    return {run["activity"]["name"]: run.get("output") for run in journal["run"]}


def test_chaos_runs_the_stoic_extension_experiment(tmp_path: Path) -> None:
    seen = outputs(run_example("stoic-experiment.json", tmp_path))
    assert seen["latency-while-slow"] >= 0.195  # the latency toxic really slowed the shop
    assert seen["error-rate-under-faults"] == 1.0  # the fault plan reached the running shop
    assert seen["breaker-under-faults"] == "open"  # read from the shop's Prometheus endpoint
    assert seen["process-while-frozen"] == "paused"
    assert seen["error-rate-while-frozen"] == 1.0
    assert seen["error-rate-while-cut"] == 1.0


def test_chaos_runs_chaostoolkit_toxiproxy_activities_against_stoic_proxy(
    tmp_path: Path,
) -> None:
    seen = outputs(run_example("toxiproxy-experiment.json", tmp_path))
    assert {t["name"] for t in seen["toxics-in-place"]} == {
        "narrow", "lingering", "sliced", "limited", "hang", "rst"}
    assert seen["shop-proxy-enabled"] is False
    assert seen["extra-proxy-exists"] is True


def test_discover_lists_every_action_and_probe() -> None:
    discovery = stoic.chaostoolkit.discover()
    found = {(a["type"], a["name"]) for a in discovery["activities"]}
    assert found == {("action", n) for n in actions.__all__} | {
        ("probe", n) for n in probes.__all__}
    latency = next(a for a in discovery["activities"] if a["name"] == "add_latency")
    assert [arg["name"] for arg in latency["arguments"]][:3] == ["proxy", "latency", "jitter"]


def test_chaos_discover_cli_finds_the_extension(tmp_path: Path) -> None:
    if not hasattr(stoic, "discover"):
        pytest.skip("chaostoolkit looks for stoic.discover; the lead adds it to stoic/__init__")
    out = tmp_path / "discovery.json"
    subprocess.run([str(CHAOS), "--no-version-check", "--settings", str(tmp_path / "s.yaml"),
                    "--log-file", str(tmp_path / "c.log"), "discover", "--no-install",
                    "--discovery-path", str(out), "stoic"],
                   cwd=tmp_path, check=True, timeout=60, capture_output=True)
    names = {a["name"] for a in json.loads(out.read_text())["activities"]}
    assert {"add_latency", "breaker_state", "kill_process"} <= names


def test_chaos_validate_refuses_an_activity_with_a_wrong_argument(tmp_path: Path) -> None:
    experiment = json.loads((EXAMPLES / "stoic-experiment.json").read_text())
    experiment["method"][0]["provider"]["arguments"]["latencyy"] = 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(experiment))
    result = subprocess.run(
        [str(CHAOS), "--no-version-check", "--settings", str(tmp_path / "s.yaml"),
         "--log-file", str(tmp_path / "c.log"), "validate", str(bad)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "latencyy" in result.stdout + result.stderr


class TestActivitiesDirectly:
    """The activities as Python functions, against an in-process proxy."""

    def test_toxic_actions_use_toxiproxy_units(
        self, proxy_server: ProxyServer, echo_port: int
    ) -> None:
        config = {"stoic_proxy_url": proxy_server.api_url}
        created = actions.create_proxy("svc", f"127.0.0.1:{echo_port}", configuration=config)
        assert int(created["listen"].rsplit(":", 1)[1]) > 0
        assert actions.add_latency("svc", 100, jitter=10, configuration=config)["attributes"] == {
            "latency": 100, "jitter": 10}
        assert actions.add_bandwidth("svc", 50, configuration=config)["type"] == "bandwidth"
        assert actions.add_slow_close("svc", 5, configuration=config)["attributes"] == {
            "delay": 5}
        assert actions.add_timeout("svc", 0, configuration=config)["attributes"] == {"timeout": 0}
        assert actions.add_reset_peer("svc", stream="upstream", configuration=config)["stream"] == (
            "upstream")
        assert actions.add_slicer("svc", 10, 2, 50, configuration=config)["attributes"] == {
            "average_size": 10, "size_variation": 2, "delay": 50}
        assert actions.add_limit_data("svc", 99, configuration=config)["attributes"] == {
            "bytes": 99}
        assert len(probes.proxy("svc", configuration=config)["toxics"]) == 7
        actions.remove_toxic("svc", "latency_downstream", configuration=config)
        assert len(proxy_server.toxics("svc")) == 6
        assert actions.partition(["svc"], configuration=config) == ["svc"]
        assert probes.proxy("svc", configuration=config)["enabled"] is False
        actions.heal(["svc"], configuration=config)
        actions.reset_proxies(configuration=config)
        assert proxy_server.toxics("svc") == []
        actions.delete_proxy("svc", configuration=config)
        assert probes.proxy_exists("svc", configuration=config) is False

    def test_toxiproxy_configuration_keys_are_understood(self, proxy_server: ProxyServer) -> None:
        config = {"toxiproxy_host": "127.0.0.1", "toxiproxy_port": proxy_server.api_port}
        assert probes.proxy_exists("nothing", configuration=config) is False

    def test_enable_fault_plan_refuses_a_bad_plan_before_writing(self, tmp_path: Path) -> None:
        plan = tmp_path / "plan.json"
        with pytest.raises(ValueError, match="rate"):
            actions.enable_fault_plan({"x": {"rate": 7}}, path=str(plan))
        assert not plan.exists()

    def test_queue_probes_read_broker_stats(self, tmp_path: Path) -> None:
        from stoic.messaging import connect

        url = f"sqlite:///{tmp_path / 'queue.db'}"
        broker = connect(url)
        try:
            for index in range(3):
                broker.publish("orders", {"n": index})
            (message,) = broker.claim("orders", lease=30.0)
            broker.dead_letter(message, "poison")
        finally:
            broker.close()
        assert probes.queue_depth(url, "orders") == 2
        assert probes.dlq_size(url, "orders") == 1

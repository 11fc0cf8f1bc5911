"""Generated alerting: promtool and amtool accept the files, the unit tests pass, bad input
is refused before anything is written."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stoic.cli import build_app
from stoic.observability.alerts import AlertConfig, render, write

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("amtool") is None,
    reason="needs promtool and amtool (Debian: apt-get install prometheus prometheus-alertmanager)",
)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60)


def render_cli(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    out = tmp_path / "alerts"
    result = CliRunner().invoke(build_app(), ["alerts", "render", *args, "--out", str(out)])
    return result.exit_code, result.output, out


def test_cli_writes_files_that_promtool_and_amtool_accept(tmp_path: Path) -> None:
    code, output, out = render_cli(
        tmp_path, "--service", "shop", "--slo", "0.999", "--latency-p99", "0.5", "--team", "core"
    )
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == [
        "alertmanager.yml", "rules.test.yml", "rules.yml",
    ]
    check = run("promtool", "check", "rules", "rules.yml", cwd=out)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = run("promtool", "test", "rules", "rules.test.yml", cwd=out)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = run("amtool", "check-config", "alertmanager.yml", cwd=out)
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.mark.parametrize(("slo", "latency"), [(0.9, 0.02), (0.99999, 7.0)])
def test_unit_tests_pass_for_other_objectives(tmp_path: Path, slo: float, latency: float) -> None:
    write(AlertConfig(service="a.b-c_1", slo=slo, latency_p99=latency), tmp_path)
    tested = run("promtool", "test", "rules", "rules.test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    write(AlertConfig(service="shop", slo=0.999, latency_p99=0.5), tmp_path)
    rules = tmp_path / "rules.yml"
    rules.write_text(rules.read_text().replace("sum by (service)", "sum by (service", 1))
    check = run("promtool", "check", "rules", "rules.yml", cwd=tmp_path)
    assert check.returncode != 0


def test_a_wrong_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests do test the rules: paging at 30x instead of 14.4x loses the page."""
    config = AlertConfig(service="shop", slo=0.999, latency_p99=0.5)
    write(config, tmp_path)
    document = yaml.safe_load((tmp_path / "rules.yml").read_text())
    [burn_page] = [
        r for g in document["groups"] for r in g["rules"]
        if r.get("alert") == "StoicErrorBudgetBurn" and r["labels"]["severity"] == "page"
    ]
    burn_page["expr"] = burn_page["expr"].replace("0.0144", "0.03").replace("0.006", "0.03")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document))
    tested = run("promtool", "test", "rules", "rules.test.yml", cwd=tmp_path)
    assert tested.returncode != 0


def test_multi_line_rule_expressions_are_block_scalars_one_promql_line_per_line() -> None:
    text = render(AlertConfig("shop", 0.999, 0.5))["rules.yml"]
    document = yaml.safe_load(text)
    exprs = [r["expr"] for g in document["groups"] for r in g["rules"]]
    multi_line = [e for e in exprs if "\n" in e]
    assert multi_line, "expected multi-line expressions (error ratios, burn rates)"
    for expr in multi_line:
        indented = "\n".join("      " + line for line in expr.splitlines())
        assert f"expr: |-\n{indented}\n" in text
    assert "\n\n" not in text.split("\n", 1)[1]  # no blank lines inside quoted scalars


def test_burn_rate_windows_follow_the_sre_workbook() -> None:
    document = yaml.safe_load(render(AlertConfig("shop", 0.999, 0.5))["rules.yml"])
    records = {r["record"] for g in document["groups"] for r in g["rules"] if "record" in r}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"stoic:call_error_ratio:rate{window}" in records
    burn = {
        r["labels"]["severity"]: r["expr"] for g in document["groups"] for r in g["rules"]
        if r.get("alert") == "StoicErrorBudgetBurn"
    }
    assert "rate1h{service=\"shop\"} > 0.0144" in burn["page"]
    assert "rate5m{service=\"shop\"} > 0.0144" in burn["page"]
    assert "rate6h{service=\"shop\"} > 0.006" in burn["page"]
    assert "rate30m{service=\"shop\"} > 0.006" in burn["page"]
    assert "rate1d{service=\"shop\"} > 0.003" in burn["ticket"]
    assert "rate2h{service=\"shop\"} > 0.003" in burn["ticket"]
    assert "rate3d{service=\"shop\"} > 0.001" in burn["ticket"]
    assert "rate6h{service=\"shop\"} > 0.001" in burn["ticket"]


def test_alertmanager_routes_by_team_then_severity_and_page_inhibits_ticket() -> None:
    config = yaml.safe_load(
        render(AlertConfig("shop", 0.999, 0.5, team="core"))["alertmanager.yml"]
    )
    [team_route] = config["route"]["routes"]
    assert team_route["matchers"] == ['team="core"']
    assert {r["matchers"][0]: r["receiver"] for r in team_route["routes"]} == {
        'severity="page"': "core-page",
        'severity="ticket"': "core-ticket",
        'severity="info"': "core-info",
    }
    assert "alertname" in config["route"]["group_by"]
    [inhibit] = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="page"']
    assert inhibit["target_matchers"] == ['severity="ticket"']
    assert set(inhibit["equal"]) >= {"alertname", "service"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service", "shop", "--slo", "1.0"], "slo"),
        (["--service", "shop", "--slo", "0"], "slo"),
        (["--service", "shop", "--slo", "-0.5"], "slo"),
        (["--service", "shop", "--latency-p99", "-1"], "latency_p99"),
        (["--service", "shop", "--latency-p99", "0"], "latency_p99"),
        (["--service", 'sh"op'], "service"),
        (["--service", "shop space"], "service"),
        (["--service", "shop", "--team", "a/b"], "team"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, output, out = render_cli(tmp_path, *args)
    assert code == 2
    assert output.startswith("error: ")
    assert message in output
    assert not out.exists()


def test_dashboard_queries_are_valid_promql_over_every_metric(tmp_path: Path) -> None:
    from stoic.observability import dashboard

    board = dashboard()
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    text = " ".join(exprs)
    for metric in (
        "stoic_calls_total", "stoic_retries_total", "stoic_rejections_total",
        "stoic_circuit_breaker_state", "stoic_call_duration_seconds_bucket",
        "stoic_messages_total", "stoic_idempotent_replays_total",
    ):
        assert metric in text
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}", "expr": expr.replace("$__rate_interval", "5m")
         .replace("$service", ".*").replace("$name", ".*")}
        for i, expr in enumerate(exprs)
    ]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    check = run("promtool", "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr

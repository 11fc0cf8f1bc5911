"""The demo shop under its chaos scenario: invariants of the stoic build, honest counting.

The runs are real: four uvicorn processes with their own SQLite files, the chaos proxy, the
load generator. They are short (10 s of load) to keep the suite fast; the scenario scales to
any duration. Each run is made once per session and shared by the tests that read it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stoic.demo.runner import RunOptions, RunResult, run
from stoic.demo.scenario import build_scenario
from stoic.demo.scorecard import compute

pytestmark = pytest.mark.slow

DURATION = 10.0
_RUNS: dict[tuple[Any, ...], RunResult] = {}


def _run(mode: str, seed: int = 1, backend: str = "sqlite", **urls: str) -> RunResult:
    key = (mode, seed, backend)
    if key not in _RUNS:
        _RUNS[key] = run(RunOptions(mode=mode, duration=DURATION, rps=30.0, seed=seed,
                                    backend=backend, **urls))
    return _RUNS[key]


def _assert_stoic_invariants(result: RunResult) -> None:
    card = result.scorecard
    summary = {k: v for k, v in card.as_dict().items() if k != "phases"}
    assert card.accepted_by_orders > 0, summary
    assert card.duplicate_charges == 0, summary
    assert card.lost_orders == 0, summary
    assert card.duplicate_fulfillments == 0, summary
    assert card.fulfilled_exactly_once == card.accepted_by_orders, summary
    # bounded by the deadline set at the edge (plus scheduling slack), not by stacked timeouts
    assert card.p99_outage is not None
    assert card.p99_outage <= result.options.edge_deadline + 0.5, summary
    assert card.load_amplification is not None
    assert card.load_amplification <= 1.2, summary


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stoic_build_charges_once_loses_nothing_and_stays_within_the_deadline(seed: int) -> None:
    _assert_stoic_invariants(_run("stoic", seed))


def test_stoic_build_holds_its_invariants_with_the_redis_backend(redis_url: str) -> None:
    _assert_stoic_invariants(_run("stoic", 4, "redis", redis_url=redis_url))


def test_stoic_build_holds_its_invariants_with_the_rabbitmq_backend(amqp_url: str) -> None:
    _assert_stoic_invariants(_run("stoic", 5, "rabbitmq", amqp_url=amqp_url))


def test_naive_scorecard_counts_what_the_databases_hold() -> None:
    result = _run("naive")
    work = Path(result.workdir)
    before = compute("naive", work, result.requests, result.scenario, result.started)
    assert before.as_dict() == result.scorecard.as_dict()
    with sqlite3.connect(work / "orders.db") as conn:
        accepted = [r[0] for r in conn.execute("SELECT id FROM orders WHERE status='accepted'")]
    assert len(accepted) == before.accepted_by_orders
    with sqlite3.connect(work / "payments.db") as conn:
        charges = dict(conn.execute("SELECT order_id, COUNT(*) FROM charges GROUP BY order_id"))
    with sqlite3.connect(work / "fulfillment.db") as conn:
        done = dict(conn.execute("SELECT order_id, COUNT(*) FROM fulfillments GROUP BY order_id"))
    once = next(o for o in accepted if charges.get(o) == 1 and done.get(o) == 1)
    with sqlite3.connect(work / "payments.db") as conn:  # a known duplicate charge
        conn.execute("INSERT INTO charges(order_id, amount, key, at) VALUES (?, 1.0, NULL, ?)",
                     (once, time.time()))
    with sqlite3.connect(work / "fulfillment.db") as conn:  # a known lost order
        conn.execute("DELETE FROM fulfillments WHERE order_id = ?", (once,))
    after = compute("naive", work, result.requests, result.scenario, result.started)
    assert after.duplicate_charges == before.duplicate_charges + 1
    assert after.orders_charged_twice == before.orders_charged_twice + 1
    assert after.lost_orders == before.lost_orders + 1
    assert after.fulfilled_exactly_once == before.fulfilled_exactly_once - 1


def test_scenario_is_repeatable_for_a_seed_and_covers_the_whole_run() -> None:
    a, b, c = build_scenario(30, 7), build_scenario(30, 7), build_scenario(30, 8)
    assert a == b
    assert a.actions != c.actions  # the worker is killed at a seeded moment
    assert a.phases[0].start == 0 and a.phases[-1].end == 30
    assert all(x.end == y.start for x, y in zip(a.phases, a.phases[1:], strict=False))
    with pytest.raises(ValueError, match="duration"):
        build_scenario(2, 1)


def _chromium() -> str:
    path = "/usr/bin/chromium"
    if not os.path.exists(path):
        if os.environ.get("STOIC_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is not installed and STOIC_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def test_html_report_renders_its_charts_in_headless_chromium(tmp_path: Path) -> None:
    from stoic.demo.report import render

    chromium = _chromium()
    runs = [_run("naive").as_dict(), _run("stoic", 1).as_dict()]
    page = tmp_path / "report.html"
    page.write_text(render(runs))
    text = page.read_text()
    # self-contained: nothing fetched from anywhere (no scripts, styles or images by URL)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert "<script" not in text and "<link" not in text
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=60).stdout
    for mode in ("naive", "stoic"):
        for chart in ("throughput", "latency", "breakers", "payments"):
            start = dom.index(f'id="chart-{mode}-{chart}"')
            figure = dom[start:dom.index("</figure>", start)]
            assert "<svg" in figure and figure.count("<path") >= 5, (mode, chart)
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1600,1400", page.as_uri()],
                   capture_output=True, timeout=60, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1500
    assert pixels[:, :, :3].std() > 0.05  # not a blank page: text, table and charts drew


def _demo_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _ports(tmp_path: Path) -> list[int]:
    import json

    ports: list[int] = []
    for config in tmp_path.glob("stoic-demo-*/shop.json"):
        ports += json.loads(config.read_text())["ports"].values()
    return ports


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "crash"])
def test_interrupted_demo_leaves_no_process_and_no_port_behind(tmp_path: Path, how: int) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    demo = subprocess.Popen(
        [sys.executable, "-c", "from stoic.cli import main; main()", "demo", "--mode", "stoic",
         "--duration", "60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 40
        while len(_demo_processes(str(tmp_path))) < 5 and time.monotonic() < end:
            time.sleep(0.2)
        assert len(_demo_processes(str(tmp_path))) >= 5, "the shop did not start"
        ports = _ports(tmp_path)
        assert len(ports) == 4
        time.sleep(1.0)
        demo.send_signal(how)
        demo.wait(timeout=30)
        end = time.monotonic() + 10
        while _demo_processes(str(tmp_path)) and time.monotonic() < end:
            time.sleep(0.1)
        assert _demo_processes(str(tmp_path)) == []
        for port in ports:
            with socket.socket() as sock:
                # as a server would: SO_REUSEADDR lets connections in TIME_WAIT be, but a
                # socket still listening on the port makes bind fail
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in _demo_processes(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "sideways"], "--mode must be naive, stoic or both"),
        (["--backend", "mongo"], "--backend must be one of sqlite, redis, rabbitmq"),
        (["--duration", "2"], "duration must be in [6, 3600] seconds"),
        (["--rps", "0"], "rps must be in [1, 200]"),
        (["--report", "/nonexistent/dir/report.html"], "directory /nonexistent/dir does not exist"),
    ],
)
def test_bad_options_give_clear_errors(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from stoic.cli import build_app

    result = CliRunner().invoke(build_app(), ["demo", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_an_unreachable_backend_is_a_runtime_error_before_the_shop_starts() -> None:
    from typer.testing import CliRunner

    from stoic.cli import build_app

    args = ["demo", "--backend", "redis", "--redis-url", "redis://127.0.0.1:1/0"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 1
    assert "redis://127.0.0.1:1/0: cannot connect to Redis" in result.output


def test_serve_refuses_a_port_in_use() -> None:
    from typer.testing import CliRunner

    from stoic.cli import build_app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(build_app(), ["demo", "serve", "--port", str(port)])
    assert result.exit_code == 2
    assert f"--port: port {port} is already in use" in result.output


def test_chaos_toolkit_experiment_runs_against_demo_serve(tmp_path: Path) -> None:
    from support import free_port, wait_for_port

    chaos = Path(sys.executable).parent / "chaos"
    experiment = Path(__file__).resolve().parents[2] / "examples" / "chaos" / "demo-experiment.json"
    port, proxy_port = free_port(), free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    serve = subprocess.Popen(
        [sys.executable, "-c", "from stoic.cli import main; main()", "demo", "serve",
         "--port", str(port), "--proxy-port", str(proxy_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=40)
        run_env = {**env, "STOIC_PROXY_URL": f"http://127.0.0.1:{proxy_port}",
                   "DEMO_ORDERS_URL": f"http://127.0.0.1:{port}/orders",
                   "DEMO_METRICS_URL": f"http://127.0.0.1:{port}/metrics"}
        journal = tmp_path / "journal.json"
        done = subprocess.run(
            [str(chaos), "run", "--journal-path", str(journal), str(experiment)],
            cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=90,
        )
        import json

        report = json.loads(journal.read_text())
        assert done.returncode == 0 and report["status"] == "completed", done.stderr[-2000:]
        outputs = {r["activity"]["name"]: r.get("output") for r in report["run"]}
        # payments blackholed: orders answer within the 1.5 s deadline they were given
        assert outputs["p99-while-payments-is-cut-stays-within-the-deadline"] < 2.0
        assert outputs["payments-breaker-while-cut"] == "open"
    finally:
        serve.terminate()
        serve.wait(timeout=20)
    assert _demo_processes(str(tmp_path)) == []


def test_cli_prints_the_scorecard_and_writes_json_and_report(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from stoic.cli import build_app

    scorecard, report = tmp_path / "scorecard.json", tmp_path / "report.html"
    result = CliRunner().invoke(build_app(), [
        "demo", "--mode", "stoic", "--duration", "6", "--seed", "9",
        "--json", str(scorecard), "--report", str(report),
    ])
    assert result.exit_code == 0, result.output
    assert "Duplicate charges" in result.output and "Lost orders" in result.output
    runs = json.loads(scorecard.read_text())["runs"]
    assert [r["mode"] for r in runs] == ["stoic"]
    card = runs[0]["scorecard"]
    assert card["attempted"] > 0 and card["duplicate_charges"] == 0
    assert runs[0]["phases"][0]["name"] == "steady"
    assert 'id="chart-stoic-breakers"' in report.read_text()

"""The demo shop under its chaos scenario: invariants of the stoic build, honest counting.

The runs are real: four uvicorn processes with their own SQLite files, the chaos proxy, the
load generator. They are short (8 s of load) to keep the suite fast; the scenario scales to
any duration. Each run is made once per session and shared by the tests that read it: the
naive build uses none of stoic's backends, so one naive run per seed serves as the
comparison for the stoic build on every backend.
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

DURATION = 8.0
_RUNS: dict[tuple[Any, ...], RunResult] = {}


def _run(mode: str, seed: int = 1, backend: str = "sqlite", **urls: str) -> RunResult:
    key = (mode, seed, backend)
    if key not in _RUNS:
        _RUNS[key] = run(RunOptions(mode=mode, duration=DURATION, rps=30.0, seed=seed,
                                    backend=backend, **urls))
    return _RUNS[key]


def _assert_stoic_invariants(result: RunResult, naive: RunResult | None = None) -> None:
    card = result.scorecard
    summary = {k: v for k, v in card.as_dict().items() if k != "phases"}
    # the second edition's promises: the customer is told the truth, within the deadline,
    # and every order the shop accepted is finished, exactly once, by the end of the drain
    assert card.told_failure_but_charged == 0, summary
    assert card.told_success_not_completed == 0, summary
    assert card.pending_after_drain == 0, summary
    late = [r for r in result.requests
            if not r.status or r.latency > result.options.edge_deadline + 0.5]
    assert not late, (len(late), summary)
    if naive is not None:
        assert card.completed_correctly >= naive.scorecard.completed_correctly, (
            summary, naive.scorecard.completed_correctly)
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
    _assert_stoic_invariants(_run("stoic", seed), naive=_run("naive", seed))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stoic_build_on_postgres_charges_once_loses_nothing_and_stays_within_the_deadline(
    seed: int, postgres_dsn: str,
) -> None:
    _assert_stoic_invariants(_run("stoic", seed, "postgres", postgres_url=postgres_dsn),
                             naive=_run("naive", seed))


def test_postgres_backend_moves_stoics_machinery_to_a_schema_of_the_runs_own_and_drops_it(
    postgres_dsn: str,
) -> None:
    """Workflow runs, the outbox, idempotency keys and the queue live in PostgreSQL, in one
    schema per run, removed at the end; the services' own ledgers stay in their SQLite files,
    which is where the scorecard counts from."""
    import json

    import psycopg

    result = _run("stoic", 1, "postgres", postgres_url=postgres_dsn)
    work = Path(result.workdir)
    schema = json.loads((work / "shop.json").read_text())["prefix"].replace("-", "_")
    assert not list(work.glob("*idempotency.db")) and not (work / "queue.db").exists()
    with sqlite3.connect(work / "orders.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        placed = conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    assert "orders" in tables and not {"stoic_outbox", "stoic_wf_runs"} & tables
    assert placed == result.scorecard.attempted > 0
    with psycopg.connect(postgres_dsn) as conn:
        left = conn.execute("SELECT COUNT(*) FROM pg_namespace WHERE nspname = %s",
                            (schema,)).fetchone()
    assert left == (0,)


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
        end = time.monotonic() + 5  # the shop's processes delete the run's files as they go
        while list(tmp_path.glob("stoic-demo-*")) and time.monotonic() < end:
            time.sleep(0.1)
        assert list(tmp_path.glob("stoic-demo-*")) == []
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
        (["--backend", "mongo"], "--backend must be one of sqlite, redis, rabbitmq, postgres"),
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


@pytest.mark.parametrize(
    ("backend", "option", "url", "message"),
    [
        ("redis", "--redis-url", "redis://127.0.0.1:1/0", "cannot connect to Redis"),
        ("postgres", "--postgres-url", "postgresql://postgres@127.0.0.1:1/test",
         "PostgreSQL: connection failed"),
    ],
)
def test_an_unreachable_backend_is_a_runtime_error_before_the_shop_starts(
    backend: str, option: str, url: str, message: str,
) -> None:
    from typer.testing import CliRunner

    from stoic.cli import build_app

    result = CliRunner().invoke(build_app(), ["demo", "--backend", backend, option, url])
    assert result.exit_code == 1
    assert f"{url}: {message}" in result.output


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
        # the breaker tripped: open, or already half-open and trying payments again (the
        # workflows behind the 202 answers keep calling payments, one second apart)
        assert outputs["payments-breaker-while-cut"] in ("open", "half_open")
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


def test_demo_says_where_its_files_are_and_removes_them_unless_kept(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    left = tmp_path / "stoic-demo-stoic-crashed"  # what a killed run of an earlier demo left
    left.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (left / "owner.pid").write_text(str(dead.pid))
    done = subprocess.run(
        [sys.executable, "-m", "stoic", "demo", "--mode", "stoic", "--duration", "6"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"removed {left}" in done.stderr
    assert "working files: " + str(tmp_path / "stoic-demo-stoic-") in done.stderr
    # not a terminal: one plain line per phase instead of a live bar
    for phase in ("steady", "payments down", "inventory partitioned", "recovery", "done in"):
        assert f"stoic: {phase}" in done.stderr
    assert list(tmp_path.glob("stoic-demo-*")) == []
    kept = tmp_path / "kept"
    done = subprocess.run(
        [sys.executable, "-m", "stoic", "demo", "--mode", "stoic", "--duration", "6",
         "--workdir", str(kept)], env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (kept / "stoic" / "payments.db").exists()


def test_openapi_of_orders_and_payments_survives_schemathesis_without_5xx_or_a_double_charge(
    tmp_path: Path,
) -> None:
    """Generated requests (valid and invalid) against the stoic build's orders and payments,
    with StoicMiddleware and IdempotencyMiddleware in place: every answer matches the schema,
    none is a 5xx, and the payments ledger never holds two charges for one order."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    from stoic.demo.runner import Shop

    def fuzz(base: str, operation: Any, problems: list[str]) -> None:
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base, timeout=10)
            if response.status_code >= 500:
                problems.append(f"{case.method} {case.formatted_path}: "
                                f"{response.status_code} {response.text[:200]}")
            # a key sent again with another body is refused by design (422): that is the
            # idempotency contract, not valid data rejected
            case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])

        check()

    with Shop(RunOptions(mode="stoic"), tmp_path) as shop:
        for service in ("orders", "payments"):
            base = f"http://127.0.0.1:{shop.ports[service]}"
            schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
            problems: list[str] = []
            for operation in schema.get_all_operations():
                fuzz(base, operation.ok(), problems)
            assert problems == [], problems
        with sqlite3.connect(Path(shop.cfg.workdir) / "payments.db") as conn:
            # a charge sent straight to payments without a key is a new charge by contract;
            # what must never happen: one key charged twice, or an order placed through
            # orders (its workflow's charge step keys the call) charged twice
            reused = conn.execute("SELECT key FROM charges WHERE key IS NOT NULL GROUP BY key "
                                  "HAVING COUNT(*) > 1").fetchall()
            doubled = conn.execute("SELECT order_id FROM charges WHERE key LIKE 'order-%' "
                                   "GROUP BY order_id HAVING COUNT(*) > 1").fetchall()
            placed = conn.execute("SELECT COUNT(*) FROM charges WHERE key LIKE 'order-%'"
                                  ).fetchone()[0]
    assert reused == [] and doubled == []
    assert placed > 0  # the generated orders did reach payments through their workflows

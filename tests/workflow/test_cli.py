"""``stoic workflow``: list, show, cancel, retry, resolve, purge, worker against real SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import stoic
from stoic.cli import build_app
from stoic.workflow import Status, Workflows


def _parked_store(tmp_path: Path) -> tuple[str, Workflows]:
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    flows = Workflows(url)

    @flows.workflow("pay")
    def pay(ctx: Any, order: str) -> Any:
        charged = ctx.step("charge", _unknown_outcome, once=True)
        return {"order": order, "charged": charged}

    flows.start("pay", "o1", id="run-1")
    flows.drain()
    return url, flows


def _unknown_outcome() -> None:
    raise TimeoutError("read timed out")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_app(), ["workflow", *args])


def test_list_and_show_describe_a_parked_run(tmp_path: Path) -> None:
    url, _ = _parked_store(tmp_path)
    listed = invoke("list", "--store", url)
    assert listed.exit_code == 0, listed.output
    assert "run-1" in listed.output and "needs_attention" in listed.output
    as_json = invoke("list", "--store", url, "--json", "--status", "needs_attention")
    assert json.loads(as_json.output)["id"] == "run-1"
    shown = invoke("show", "run-1", "--store", url)
    assert shown.exit_code == 0, shown.output
    assert "run-1/charge/0" in shown.output and "started" in shown.output


def test_inspection_opens_sqlite_read_only(tmp_path: Path) -> None:
    url, _ = _parked_store(tmp_path)
    db = tmp_path / "flows.db"
    db.chmod(0o444)
    try:
        assert invoke("list", "--store", url).exit_code == 0
    finally:
        db.chmod(0o644)
    missing = invoke("list", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.exit_code == 2 and not (tmp_path / "none.db").exists()


def test_resolve_done_lets_the_run_finish(tmp_path: Path) -> None:
    url, flows = _parked_store(tmp_path)
    result = invoke("resolve", "run-1", "charge", "--done", "--result", '"ch-9"', "--store", url)
    assert result.exit_code == 0, result.output
    flows.drain()
    assert flows.handle("run-1").result() == {"order": "o1", "charged": "ch-9"}


def test_retry_keeps_a_step_in_doubt_parked_until_resolved_failed(tmp_path: Path) -> None:
    url, flows = _parked_store(tmp_path)
    assert "pending" in invoke("retry", "run-1", "--store", url).output
    flows.drain()
    assert flows.handle("run-1").status() is Status.NEEDS_ATTENTION  # still in doubt
    assert invoke("resolve", "run-1", "charge", "--failed", "--store", url).exit_code == 0
    flows.drain()
    assert flows.handle("run-1").status() is Status.FAILED
    assert "purged 1 run" in invoke("purge", "--older-than", "0", "--store", url).output
    assert flows.store.get("run-1") is None


def test_cancel_stops_a_waiting_run(tmp_path: Path) -> None:
    url, flows = _parked_store(tmp_path)
    flows.workflow("wait")(lambda ctx: ctx.wait_for("never"))
    flows.start("wait", id="run-2")
    flows.drain()
    result = invoke("cancel", "run-2", "--store", url)
    assert result.exit_code == 0 and "run-2: pending" in result.output
    flows.drain()
    assert flows.handle("run-2").status() is Status.CANCELLED


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    url, _ = _parked_store(tmp_path)
    for args in (["show", "nope", "--store", url], ["retry", "nope", "--store", url],
                 ["resolve", "run-1", "charge", "--store", url],
                 ["purge", "--older-than", "soon", "--store", url],
                 ["list", "--store", "mysql://x"], ["list", "--status", "odd", "--store", url]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, (
            args, result.output)
        assert "Traceback" not in result.output


def test_worker_command_runs_an_apps_workflows(tmp_path: Path) -> None:
    (tmp_path / "shopflows.py").write_text(
        "from stoic.workflow import Workflows\n"
        "flows = Workflows('memory://')\n"
        "@flows.workflow('hello')\n"
        "def hello(ctx, name):\n"
        "    return ctx.step('greet', lambda: f'hello {name}')\n")
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    client = Workflows(url)
    handle = client.start("hello", "ada", version=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(stoic.__file__).parent.parent), str(tmp_path)])}
    proc = subprocess.Popen([sys.executable, "-m", "stoic", "workflow", "worker", url, "--app",
                             "shopflows:flows"], env=env, stderr=subprocess.PIPE)
    try:
        assert handle.result(timeout=60) == "hello ada"
    finally:
        proc.terminate()
        proc.wait(10)

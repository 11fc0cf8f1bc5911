"""Must hold: many threads and processes, one key, the body runs exactly once; crashes recover.

Real processes on real stores (SQLite on disk, Redis, PostgreSQL); the memory store is
per-process by design, so it gets the threads only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import stoic
from idempotency.backends import Backend
from idempotency.worker import body_factory
from stoic.errors import IdempotencyKeyInUseError

WORKER = Path(__file__).with_name("worker.py")
THREADS, PROCESSES = 64, 4


def _spawn(job: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(job)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )


def _expect_line(proc: subprocess.Popen[str], want: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    stderr = proc.stderr.read() if proc.stderr and line != want else ""
    assert line == want, f"worker said {line!r}; stderr: {stderr}"


def test_64_threads_and_4_processes_run_the_body_exactly_once(
    backend: Backend, tmp_path: Path
) -> None:
    marker, go = tmp_path / "ran.txt", tmp_path / "go"
    marker.touch()
    key = "order-1"
    procs: list[subprocess.Popen[str]] = []
    if backend.shared_across_processes:
        for i in range(PROCESSES):
            procs.append(_spawn({
                "store": backend.spec, "key": key, "marker": str(marker), "go": str(go),
                "wait": 20.0 if i % 2 == 0 else 0.0,
            }))
        for proc in procs:
            _expect_line(proc, "ready")

    store = backend.make()
    body = body_factory(str(marker), 0.3, hang=False)
    waiting = stoic.idempotent(store=store, key="{key}", namespace="", wait=20.0, lease=30.0)(body)
    eager = stoic.idempotent(store=store, key="{key}", namespace="", lease=30.0)(body)
    start = threading.Event()
    results: list[tuple[bool, Any]] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        fn = waiting if i % 2 == 0 else eager
        start.wait(30)
        try:
            out: Any = fn(key)
        except IdempotencyKeyInUseError:
            out = "in-use"
        except Exception as exc:  # reported by the assertions below, not lost in the thread
            out = f"{type(exc).__name__}: {exc}"
        with lock:
            results.append((fn is waiting, out))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    go.touch()
    start.set()
    for t in threads:
        t.join(60)
    outputs = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append((i % 2 == 0, json.loads(out.strip().splitlines()[-1])))

    assert marker.read_text().count("\n") == 1, "the body must run exactly once"
    runner = int(marker.read_text())
    expected = {"v": 42, "by": runner}
    assert len(results) == THREADS
    for waited, out in results:
        assert out == expected if waited else out in (expected, "in-use")
    for waited, out in outputs:
        assert out == {"result": expected} if waited else out in (
            {"result": expected}, {"error": "IdempotencyKeyInUseError"})
    assert any(out == "in-use" for _, out in results), "callers without wait saw it in flight"


def test_sigkill_mid_call_keeps_the_key_until_the_lease_then_a_new_call_completes(
    shared_backend: Backend, tmp_path: Path
) -> None:
    backend = shared_backend
    marker = tmp_path / "ran.txt"
    marker.touch()
    lease = 1.0
    proc = _spawn({"store": backend.spec, "key": "k", "marker": str(marker), "hang": True,
                   "lease": lease})
    _expect_line(proc, "ready")
    _expect_line(proc, "started")
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    store = backend.make()
    body = body_factory(str(marker), 0.0, hang=False)
    call = stoic.idempotent(store=store, key="{key}", namespace="", lease=lease)(body)
    with pytest.raises(IdempotencyKeyInUseError) as refused:
        call("k")  # inside the dead owner's lease
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= lease
    time.sleep(max(0.0, lease - (time.monotonic() - killed_at)) + 0.05)
    result = call("k")
    assert result["by"] == os.getpid()
    assert marker.read_text().count("\n") == 2, "the work ran again after the crash (at least once)"
    assert call("k") == result, "and is replayed from then on"

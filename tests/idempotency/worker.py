"""A separate process calling an idempotent function, for the concurrency and crash tests.

Run as ``python worker.py '<json>'``; prints ``ready``, waits for the go file (if any), calls
once and prints one JSON line with the result or the error's type name. In ``hang`` mode the
body prints ``started`` and sleeps until it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stoic
from idempotency.backends import make_store


def body_factory(marker: str, hold: float, hang: bool) -> Any:
    def body(key: str) -> dict[str, Any]:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        if hang:
            print("started", flush=True)
            time.sleep(60)
        time.sleep(hold)
        return {"v": 42, "by": os.getpid()}

    return body


def main() -> None:
    job = json.loads(sys.argv[1])
    store = make_store(job["store"])
    call = stoic.idempotent(
        store=store, key="{key}", namespace="", wait=job.get("wait", 0.0),
        lease=job.get("lease", 30.0),
    )(body_factory(job["marker"], job.get("hold", 0.3), job.get("hang", False)))
    print("ready", flush=True)
    go = job.get("go")
    if go:
        end = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < end:
            time.sleep(0.001)
    try:
        out: dict[str, Any] = {"result": call(job["key"])}
    except Exception as exc:
        out = {"error": type(exc).__name__}
    print(json.dumps(out), flush=True)
    store.close()


if __name__ == "__main__":
    main()

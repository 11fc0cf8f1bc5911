"""What the parts of benchmarks/queues.py share: the payload, timing and the rows measured."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

PAYLOAD = {"order": 123456, "customer": "c-000042", "items": [{"sku": "A-1", "qty": 2},
           {"sku": "B-7", "qty": 1}], "note": "x" * 100}
BODY = json.dumps(PAYLOAD)

rows: list[tuple[str, str, str, float]] = []  # (group, name, durability, msgs/s)


def rate(n: int, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def record(group: str, name: str, durability: str, value: float) -> None:
    rows.append((group, name, durability, value))
    print(f"  {group:8} {name:58} {durability:8} {value:>10,.0f} msg/s", flush=True)

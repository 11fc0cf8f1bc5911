"""The scorecard: what happened, counted from the services' own databases, never assumed.

Ground truth comes from each service's SQLite file: ``payments.charges`` (one row per charge
made: two rows for one order is a duplicate charge), ``payments.arrivals`` (every request
that reached payments), ``orders.orders`` (what orders accepted or failed), and
``fulfillment.fulfillments`` (what was actually fulfilled). The client's own record of each
request gives latency and what the customer was told.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .loadgen import Request
from .scenario import OUTAGE_PHASES, Scenario

__all__ = ["FAST", "Scorecard", "compute", "percentile", "series"]

#: A failure answered within this many seconds counts as failing fast.
FAST = 1.0


@dataclass(slots=True)
class Scorecard:
    """One run's numbers. Latencies in seconds; ``None`` where a figure does not apply."""

    mode: str
    attempted: int
    accepted: int
    accepted_by_orders: int
    failed_fast: int
    failed_slow: int
    not_sent: int
    success_ratio: float
    p50: float | None
    p99: float | None
    p99_outage: float | None
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicate_charges: int = 0
    orders_charged_twice: int = 0
    lost_orders: int = 0
    fulfilled_exactly_once: int = 0
    duplicate_fulfillments: int = 0
    charged_but_reported_failed: int = 0
    client_retries: int = 0
    payments_requests_outage: int = 0
    logical_charges_outage: int = 0
    load_amplification: float | None = None
    time_to_recover: float | None = None
    breaker_openings: int | None = None
    dead_lettered: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for ``--json``."""
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _rows(path: Path, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        return conn.execute(sql, tuple(args)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def compute(
    mode: str, workdir: str | Path, requests: Sequence[Request], scenario: Scenario,
    started: float, *, not_sent: int = 0, breaker_openings: int | None = None,
    dead_lettered: int | None = None,
) -> Scorecard:
    """Count the run in ``workdir`` (the services' databases) against the client's record.

    ``started`` is the epoch time the scenario's clock started; phases are relative to it.
    """
    work = Path(workdir)
    orders_db, payments_db = work / "orders.db", work / "payments.db"
    fulfillment_db = work / "fulfillment.db"
    done = [r for r in requests if r.end > 0]
    ok = [r for r in done if r.ok]
    failed = [r for r in done if not r.ok]
    latencies = [r.latency for r in done]

    accepted_ids = {row[0] for row in _rows(orders_db, "SELECT id FROM orders WHERE status='accepted'")}
    charges = Counter(row[0] for row in _rows(payments_db, "SELECT order_id FROM charges"))
    fulfilled = Counter(row[0] for row in _rows(fulfillment_db, "SELECT order_id FROM fulfillments"))
    told_ok = {r.order_id for r in ok}

    outage_start, outage_end = scenario.window(OUTAGE_PHASES)
    lo, hi = started + outage_start, started + outage_end
    arrivals = _rows(orders_db, "SELECT COUNT(*) FROM payment_attempts WHERE at >= ? AND at < ?",
                     (lo, hi))
    logical = _rows(orders_db, "SELECT COUNT(*) FROM orders WHERE charge_at >= ? AND charge_at < ?",
                    (lo, hi))
    n_arrivals = int(arrivals[0][0]) if arrivals else 0
    n_logical = int(logical[0][0]) if logical else 0

    sent_at = [row[0] for row in _rows(orders_db, "SELECT at FROM payment_attempts")]
    needed_at = [row[0] for row in _rows(orders_db,
                                         "SELECT charge_at FROM orders WHERE charge_at IS NOT NULL")]
    phases: dict[str, dict[str, Any]] = {}
    for phase in scenario.phases:
        inside = [r for r in done if phase.start <= r.start - started < phase.end]
        lat = [r.latency for r in inside]
        a, b = started + phase.start, started + phase.end
        sent = sum(1 for at in sent_at if a <= at < b)
        needed = sum(1 for at in needed_at if a <= at < b)
        phases[phase.name] = {
            "attempted": len(inside), "accepted": sum(1 for r in inside if r.ok),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "errors": dict(Counter(r.error for r in inside if not r.ok).most_common(4)),
            "payments_requests": sent, "charges_needed": needed,
            "load_amplification": sent / needed if needed else None,
        }
    outage = [r.latency for r in done if outage_start <= r.start - started < outage_end]

    return Scorecard(
        mode=mode,
        attempted=len(requests),
        accepted=len(ok),
        accepted_by_orders=len(accepted_ids),
        failed_fast=sum(1 for r in failed if r.latency < FAST),
        failed_slow=sum(1 for r in failed if r.latency >= FAST),
        not_sent=not_sent,
        success_ratio=len(ok) / len(requests) if requests else 0.0,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        p99_outage=percentile(outage, 99),
        phases=phases,
        duplicate_charges=sum(n - 1 for n in charges.values() if n > 1),
        orders_charged_twice=sum(1 for n in charges.values() if n > 1),
        lost_orders=sum(1 for order in accepted_ids if fulfilled.get(order, 0) == 0),
        fulfilled_exactly_once=sum(1 for order in accepted_ids if fulfilled.get(order, 0) == 1),
        duplicate_fulfillments=sum(n - 1 for n in fulfilled.values() if n > 1),
        charged_but_reported_failed=sum(1 for order in charges if order not in told_ok),
        client_retries=sum(r.tries - 1 for r in requests if r.tries > 1),
        payments_requests_outage=n_arrivals,
        logical_charges_outage=n_logical,
        load_amplification=(n_arrivals / n_logical) if n_logical else None,
        time_to_recover=_time_to_recover(done, scenario, started),
        breaker_openings=breaker_openings,
        dead_lettered=dead_lettered,
    )


def _time_to_recover(done: Sequence[Request], scenario: Scenario, started: float) -> float | None:
    """Seconds from payments' restart to the first half second in which >= 90% of orders sent
    succeed.

    None when that never happened before the phase ended (the next fault began).
    """
    back = scenario.phase("payments back")
    t = back.start
    while t + 0.5 <= back.end:
        inside = [r for r in done if t <= r.start - started < t + 0.5]
        if len(inside) >= 3 and sum(r.ok for r in inside) / len(inside) >= 0.9:
            return round(t - back.start, 2)
        t += 0.25
    return None


def series(
    workdir: str | Path, requests: Sequence[Request], started: float, length: float,
) -> dict[str, list[Any]]:
    """Per-second time series for the report: completions, errors, p99, arrivals at payments."""
    seconds = max(1, math.ceil(length))
    ok = [0] * seconds
    errors = [0] * seconds
    lat: list[list[float]] = [[] for _ in range(seconds)]
    for r in requests:
        if r.end <= 0:
            continue
        end = int(r.end - started)
        if 0 <= end < seconds:
            (ok if r.ok else errors)[end] += 1
        begin = int(r.start - started)
        if 0 <= begin < seconds:
            lat[begin].append(r.latency)
    work = Path(workdir)

    def per_second(db: str, sql: str) -> list[int]:
        counts = [0] * seconds
        for (at,) in _rows(work / db, sql):
            i = int(at - started)
            if 0 <= i < seconds:
                counts[i] += 1
        return counts

    arrivals = per_second("payments.db", "SELECT at FROM arrivals")
    charges = per_second("payments.db", "SELECT at FROM charges")
    sent = per_second("orders.db", "SELECT at FROM payment_attempts")
    return {
        "t": list(range(seconds)), "ok": ok, "errors": errors,
        "p99": [percentile(x, 99) for x in lat], "payments_arrivals": arrivals,
        "payments_charges": charges, "payments_sent": sent,
    }

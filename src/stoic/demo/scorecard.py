"""The scorecard: what happened, counted from the services' own databases, never assumed.

Ground truth comes from each service's SQLite file: ``payments.charges`` (one row per charge
made: two rows for one order is a duplicate charge) and ``payments.refunds``,
``payments.arrivals`` (every request that reached payments), ``inventory.reservations``
(reserved, and released or not), ``orders.orders`` (what orders accepted or failed), and
``fulfillment.fulfillments`` (what was actually fulfilled). The client's own record of each
request gives latency and what the customer was told.

The headline is what a customer and an accountant care about: an order *completed
correctly* when, after the drain, it is paid once (one charge, not refunded), reserved once
(and not released) and fulfilled once. The customer was *told success* by a 201 (done) or a
202 (accepted, finishing later: a promise the shop must keep).
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
#: The yardstick for "answered within the deadline" when a run does not say (seconds).
DEADLINE = 2.0


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
    completed_correctly: int = 0
    deadline: float = DEADLINE
    answered_within_deadline: int = 0
    told_success_not_completed: int = 0
    told_failure_but_charged: int = 0
    pending_after_drain: int = 0
    completion_p50: float | None = None
    completion_p99: float | None = None
    compensations: int = 0
    limit_changes: int | None = None

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
    dead_lettered: int | None = None, deadline: float = DEADLINE,
    limit_changes: int | None = None,
) -> Scorecard:
    """Count the run in ``workdir`` (the services' databases) against the client's record.

    ``started`` is the epoch time the scenario's clock started; phases are relative to it.
    ``deadline`` is the yardstick of "answered within the deadline", the same for both builds.
    """
    work = Path(workdir)
    orders_db = work / "orders.db"
    truth = _Truth.read(work)
    done = [r for r in requests if r.end > 0]
    ok = [r for r in done if r.ok]
    failed = [r for r in done if not r.ok]
    latencies = [r.latency for r in done]

    accepted_ids = {row[0] for row in _rows(orders_db, "SELECT id FROM orders WHERE status='accepted'")}
    charges, fulfilled = truth.charges, truth.fulfilled
    told_ok = {r.order_id for r in ok}
    promised = accepted_ids | told_ok
    completion = [truth.completed_at[r.order_id] - r.start for r in requests
                  if r.order_id in truth.completed_at]

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
            "completed": sum(1 for r in inside if r.order_id in truth.completed_at),
            "in_deadline": sum(1 for r in inside if r.status and r.latency <= deadline),
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
        success_ratio=len(truth.completed_at) / len(requests) if requests else 0.0,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        p99_outage=percentile(outage, 99),
        phases=phases,
        duplicate_charges=sum(n - 1 for n in charges.values() if n > 1),
        orders_charged_twice=sum(1 for n in charges.values() if n > 1),
        lost_orders=sum(1 for order in promised if fulfilled.get(order, 0) == 0),
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
        completed_correctly=len(truth.completed_at),
        deadline=deadline,
        answered_within_deadline=sum(1 for r in done if r.status and r.latency <= deadline),
        told_success_not_completed=sum(1 for o in told_ok if o not in truth.completed_at),
        told_failure_but_charged=sum(1 for r in requests
                                     if not r.ok and truth.net_charged(r.order_id)),
        pending_after_drain=sum(1 for o in accepted_ids | truth.pending
                                if o not in truth.completed_at and o not in truth.ended),
        completion_p50=percentile(completion, 50),
        completion_p99=percentile(completion, 99),
        compensations=truth.compensations,
        limit_changes=limit_changes,
    )


@dataclass(slots=True)
class _Truth:
    """What the services' databases say happened to each order, after the drain."""

    charges: Counter[str]
    refunded: set[str]
    reserved: set[str]
    released: set[str]
    fulfilled: Counter[str]
    completed_at: dict[str, float]  # order -> when its last part (charge, fulfilment) was done
    pending: set[str]  # orders the orders service still shows as in progress
    ended: set[str]  # orders the orders service shows as finished (failed or compensated)
    compensations: int

    @classmethod
    def read(cls, work: Path) -> _Truth:
        payments, inventory = work / "payments.db", work / "inventory.db"
        fulfillment, orders = work / "fulfillment.db", work / "orders.db"
        charges: Counter[str] = Counter()
        charged_at: dict[str, float] = {}
        for order, at in _rows(payments, "SELECT order_id, at FROM charges"):
            charges[order] += 1
            charged_at[order] = max(at, charged_at.get(order, 0.0))
        refunded = {row[0] for row in _rows(payments, "SELECT order_id FROM refunds")}
        reserved: set[str] = set()
        released: set[str] = set()
        for order, gone in _rows(inventory, "SELECT order_id, released_at FROM reservations"):
            (released if gone is not None else reserved).add(order)
        fulfilled: Counter[str] = Counter()
        fulfilled_at: dict[str, float] = {}
        for order, at in _rows(fulfillment, "SELECT order_id, at FROM fulfillments"):
            fulfilled[order] += 1
            fulfilled_at[order] = max(at, fulfilled_at.get(order, 0.0))
        completed_at = {
            order: max(at, charged_at[order]) for order, at in fulfilled_at.items()
            if fulfilled[order] == 1 and charges.get(order) == 1 and order not in refunded
            and order in reserved
        }
        states = dict(_rows(orders, "SELECT id, status FROM orders"))
        return cls(
            charges=charges, refunded=refunded, reserved=reserved, released=released,
            fulfilled=fulfilled, completed_at=completed_at,
            pending={o for o, s in states.items() if s == "pending"},
            ended={o for o, s in states.items() if s in ("failed", "compensated")},
            compensations=len(refunded) + len(released),
        )

    def net_charged(self, order: str) -> bool:
        """The customer's card is charged for ``order`` now (a refund gave it back)."""
        return self.charges.get(order, 0) > 0 and order not in self.refunded


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
    """Per-second time series for the report: answers, errors, p99, arrivals at payments, and
    orders by state (pending, completed correctly, failed) at the end of each second."""
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

    truth = _Truth.read(work)
    completed, failed = [0] * seconds, [0] * seconds
    for r in requests:
        done_at = truth.completed_at.get(r.order_id)
        if done_at is not None:
            i = max(0, int(done_at - started))
            if i < seconds:
                completed[i] += 1
        elif r.end > 0 and r.order_id not in truth.pending:
            i = max(0, int(r.end - started))
            if i < seconds:
                failed[i] += 1
    begun = [0] * seconds
    for r in requests:
        i = int(r.start - started)
        if 0 <= i < seconds:
            begun[i] += 1
    states: dict[str, list[int]] = {"pending": [], "completed": [], "failed": []}
    total_begun = total_completed = total_failed = 0
    for i in range(seconds):  # orders by their state at the end of each second
        total_begun += begun[i]
        total_completed += completed[i]
        total_failed += failed[i]
        states["completed"].append(total_completed)
        states["failed"].append(total_failed)
        states["pending"].append(max(0, total_begun - total_completed - total_failed))
    arrivals = per_second("payments.db", "SELECT at FROM arrivals")
    charges = per_second("payments.db", "SELECT at FROM charges")
    sent = per_second("orders.db", "SELECT at FROM payment_attempts")
    return {
        "t": list(range(seconds)), "ok": ok, "errors": errors,
        "p99": [percentile(x, 99) for x in lat], "payments_arrivals": arrivals,
        "payments_charges": charges, "payments_sent": sent,
        "orders_pending": states["pending"], "orders_completed": states["completed"],
        "orders_failed": states["failed"],
    }

"""The HTML report: one self-contained file (no network, no scripts) with the charts inline.

Charts are drawn with matplotlib and embedded as inline SVG, so the page opens offline, in
any browser, and its charts are plain elements a test can find. It opens with how to read it,
then the scorecard (each row defined, also as a tooltip), the phase table, and the charts of
both builds side by side on shared axes: answers per second with the fault windows shaded,
orders by state over time (pending, completed correctly, failed), p99 answer latency, the
state of each circuit breaker (scraped from the services' ``/metrics`` while the run went),
and the load arriving at payments. Fault names are the same everywhere on the page.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEFINITIONS", "FAULT_LABELS", "SCORECARD_ROWS", "first_phases", "format_value", "render"]

# (key, label, format): the scorecard, headline first
SCORECARD_ROWS: tuple[tuple[str, str, str], ...] = (
    ("attempted", "Orders attempted", "int"),
    ("completed_correctly", "Completed correctly (paid, reserved, fulfilled once)", "int"),
    ("success_ratio", "Success ratio (completed correctly / attempted)", "pct"),
    ("answered_within_deadline", "Answered within the deadline", "int"),
    ("accepted", "Told success (201 done, or 202 finishing later)", "int"),
    ("p50", "p50 answer latency", "s"),
    ("p99", "p99 answer latency", "s"),
    ("p99_outage", "p99 answer latency during the payments outage", "s"),
    ("told_success_not_completed", "Told success, not completed", "int"),
    ("told_failure_but_charged", "Told failure, but charged", "int"),
    ("duplicate_charges", "Duplicate charges", "int"),
    ("lost_orders", "Lost orders (accepted, never fulfilled)", "int"),
    ("duplicate_fulfillments", "Duplicate fulfillments", "int"),
    ("pending_after_drain", "Still pending after the drain", "int"),
    ("completion_p50", "Time to completion p50", "s"),
    ("completion_p99", "Time to completion p99", "s"),
    ("compensations", "Compensations run (releases, refunds)", "int"),
    ("client_retries", "Orders sent again by the client (same key)", "int"),
    ("load_amplification", "Load amplification at payments (outage)", "x"),
    ("breaker_openings", "Breaker openings", "int"),
    ("limit_changes", "Adaptive limit changes", "int"),
    ("dead_lettered", "Messages dead-lettered", "int"),
)

#: What each row means, in plain words (the report's definitions list and tooltips).
DEFINITIONS: dict[str, str] = {
    "attempted": "Orders the customers' checkout sent during the run.",
    "completed_correctly": "Orders that, once the shop had drained, were charged exactly once "
                           "(and not refunded), reserved once (and not released) and fulfilled "
                           "exactly once: counted from the payments, inventory and fulfillment "
                           "databases.",
    "success_ratio": "Completed correctly as a share of orders attempted: the headline.",
    "answered_within_deadline": "Orders that got any answer (done, accepted for later, or a "
                                "clear failure) within the edge deadline, the same yardstick "
                                "for both builds.",
    "accepted": "Answers that told the customer the order went through: 201 (done) or 202 "
                "(accepted, finishing in the background).",
    "p50": "Median time from sending an order to its answer (or to the client giving up).",
    "p99": "99th percentile of the same.",
    "p99_outage": "p99 answer latency of orders sent while payments was slow, losing replies "
                  "or down.",
    "told_success_not_completed": "Customers told their order went through whose order never "
                                  "completed correctly.",
    "told_failure_but_charged": "Customers told their order failed (or given no answer) whose "
                                   "card was charged and not refunded.",
    "duplicate_charges": "Charges beyond the first for the same order, in the payments ledger.",
    "lost_orders": "Orders the shop accepted (told the customer, or marked accepted) that were "
                   "never fulfilled.",
    "duplicate_fulfillments": "Fulfilments beyond the first for the same order.",
    "pending_after_drain": "Orders still in progress when the drain ended.",
    "completion_p50": "Median time from an order's first send to its completion (charged and "
                      "fulfilled): the honest cost of finishing later.",
    "completion_p99": "99th percentile of the same.",
    "compensations": "Reservations released and charges refunded to undo a failed order.",
    "client_retries": "Orders the checkout sent again with the same Idempotency-Key.",
    "load_amplification": "Requests sent to payments per charge needed, during the payments "
                          "outage (1.00x: no extra load on a struggling service).",
    "breaker_openings": "Times a circuit breaker opened.",
    "limit_changes": "Times an adaptive concurrency limit moved.",
    "dead_lettered": "Messages set aside after their attempts ran out.",
}

#: Each fault's name, the same in the legend, the charts and the phase table.
FAULT_LABELS: dict[str, str] = {
    "payments_latency": "payments slow",
    "payments_lose_replies": "payments losing replies",
    "payments_killed": "payments down",
    "inventory_partition": "inventory partitioned",
    "worker_killed": "worker killed",
}

_STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 2, "disabled": 0}
_FAULT_COLOURS = {
    "payments_latency": "#f6d55c", "payments_lose_replies": "#f4a259",
    "payments_killed": "#ed553b", "inventory_partition": "#9b5de5", "worker_killed": "#3caea3",
}


def format_value(value: Any, kind: str) -> str:
    """A scorecard value as shown to people ("-" when it does not apply)."""
    if value is None:
        return "not in phase" if kind == "ttr" else "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind in ("s", "ttr"):
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if kind == "x":
        return f"{value:.2f}x"
    return str(value)


def _figure(run: dict[str, Any], draw: Callable[[Any], None], *, xmax: float,
            ymax: float | None, height: float = 2.6, ylabel: str | None = None,
            xlabel: str = "seconds", legend: bool = True) -> str:
    """One chart of ``run`` as inline SVG: ``draw(ax)`` plots, the frame is the same for all.

    Every chart shades the fault windows and shares its x range (and, per kind of chart, its y
    range) with the other build's, so the two can be compared at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, height))
    try:
        draw(ax)
        for phase in run["phases"]:
            for fault in phase.get("faults") or []:
                ax.axvspan(phase["start"], phase["end"],
                           color=_FAULT_COLOURS.get(fault, "#ddd"), alpha=0.25, lw=0)
        ax.set_xlim(0, xmax)
        if ymax is not None:
            ax.set_ylim(0, ymax)
        ax.grid(alpha=0.3)
        if ylabel is not None:
            ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        if legend:
            ax.legend(loc="upper right", fontsize=8)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    finally:
        plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _top(values: Sequence[float | None], floor: float = 1.0) -> float:
    """A y limit a little above the largest value (at least ``floor``)."""
    found = [v for v in values if v is not None and not math.isnan(v)]
    return max([floor, *found]) * 1.1


def _scales(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The shared axes: one x range for every chart, one y range per kind of chart."""
    def every(key: str) -> list[float | None]:
        return [v for run in runs for v in run["series"].get(key, [])]

    return {
        "x": max(max(run["series"]["t"][-1] + 1, run["duration"]) for run in runs),
        "throughput": _top(every("ok") + every("errors")),
        "latency": _top(every("p99") + [run.get("edge_deadline") for run in runs]),
        "payments": _top(every("payments_arrivals") + every("payments_sent")
                         + every("payments_charges")),
        "states": _top(every("orders_pending") + every("orders_completed")
                       + every("orders_failed")),
    }


def _charts(run: dict[str, Any], scale: dict[str, float]) -> dict[str, str]:
    series = run["series"]
    t = series["t"]
    xmax = scale["x"]

    def throughput(ax: Any) -> None:
        ax.plot(t, series["ok"], color="#2a9d8f", label="told success / s", drawstyle="steps-post")
        ax.plot(t, series["errors"], color="#e63946", label="told failure / s",
                drawstyle="steps-post")

    def states(ax: Any) -> None:
        ax.stackplot(t, series.get("orders_completed", [0] * len(t)),
                     series.get("orders_pending", [0] * len(t)),
                     series.get("orders_failed", [0] * len(t)),
                     colors=["#2a9d8f", "#e9c46a", "#e63946"], alpha=0.85,
                     labels=["completed correctly", "pending", "failed"])

    def latency(ax: Any) -> None:
        p99 = [v if v is not None else float("nan") for v in series["p99"]]
        ax.plot(t, p99, color="#264653", marker=".", label="p99 answer latency (by send time)")
        ax.axhline(run["edge_deadline"], color="#e76f51", ls="--", lw=1, label="edge deadline")

    names = sorted({name for scrape in run["breakers"] for name in scrape["states"]})

    def breakers(ax: Any) -> None:
        for i, name in enumerate(names):
            seen = [s for s in run["breakers"] if name in s["states"]]
            ax.plot([s["t"] for s in seen],
                    [_STATE_LEVEL.get(s["states"][name], 0) + i * 0.05 for s in seen],
                    drawstyle="steps-post", label=name)
        if not names:
            ax.text(0.5, 0.5, "no circuit breakers in this build", ha="center", va="center",
                    transform=ax.transAxes, color="#666")
        ax.set_yticks([0, 1, 2], ["closed", "half-open", "open"])

    def payments(ax: Any) -> None:
        ax.bar(t, series["payments_arrivals"], width=1.0, align="edge", color="#457b9d",
               label="requests arriving at payments / s")
        ax.plot(t, series["payments_sent"], color="#f4a259", drawstyle="steps-post", lw=2,
                label="requests orders sent to payments / s")
        ax.plot(t, series["payments_charges"], color="#e63946", drawstyle="steps-post",
                label="charges made / s")

    return {
        "throughput": _figure(run, throughput, xmax=xmax, ymax=scale["throughput"],
                              ylabel="orders / s", xlabel="seconds (shaded: faults)"),
        "states": _figure(run, states, xmax=xmax, ymax=scale["states"], ylabel="orders",
                          xlabel="seconds (state at the end of each second)"),
        "latency": _figure(run, latency, xmax=xmax, ymax=scale["latency"], ylabel="seconds"),
        "breakers": _figure(run, breakers, xmax=xmax, ymax=2.4, height=2.2,
                            xlabel="seconds (scraped from /metrics)", legend=bool(names)),
        "payments": _figure(run, payments, xmax=xmax, ymax=scale["payments"], ylabel="per second"),
    }


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
max-width:1650px}
h1{margin-bottom:.2rem} .sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:1rem 0} td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd}
td.num{text-align:right;font-variant-numeric:tabular-nums} th{text-align:left;background:#f4f4f4}
td[title]{text-decoration:underline dotted #999;cursor:help}
.howto{background:#f7f9fb;border-left:4px solid #457b9d;padding:.6rem 1rem;max-width:1100px}
.howto p{margin:.4rem 0}
.chartrow{display:flex;gap:1rem;flex-wrap:wrap} .chartrow>figure{flex:1 1 560px;min-width:0}
figure.chart{margin:0 0 1rem 0;border:1px solid #eee;padding:.4rem}
figure.chart figcaption{font-size:.85rem;color:#444}
figure.chart svg{width:100%;height:auto}
.legend span{display:inline-block;padding:.1rem .5rem;margin-right:.4rem;font-size:.8rem}
.note{color:#8a5a00;font-size:.9rem}
dl.defs{max-width:1100px} dl.defs dt{font-weight:600;margin-top:.5rem} dl.defs dd{margin-left:1rem}
"""

_CAPTIONS = {
    "throughput": "Answers per second: told success (201 or 202) and told failure; shaded "
                  "windows are the faults.",
    "states": "Orders by state over time: completed correctly, still pending, failed. A shop "
              "that finishes work later shows the pending band shrink after each fault.",
    "latency": "p99 answer latency of the orders sent in each second, against the edge "
               "deadline.",
    "breakers": "Circuit breaker state over time, scraped from orders' /metrics.",
    "payments": "Load at payments per second: requests orders sent (counted at its HTTP "
                "transport, reaching payments or not), requests that arrived, charges made.",
}

_CHART_TITLES = {
    "throughput": "Answers", "states": "Orders by state", "latency": "Answer latency",
    "breakers": "Circuit breakers", "payments": "Load at payments",
}

_HOWTO = """
<section class="howto" id="how-to-read"><h2>How to read this</h2>
<p>The same small shop (orders, payments, inventory and a fulfillment worker, each its own
process with its own database) takes the same stream of orders twice, under the same
scripted faults: payments slows down, loses replies after charging, goes down and comes back;
inventory is cut off; the fulfillment worker is killed.</p>
<p><b>naive</b> is written the way such code commonly is: a retry loop around every call,
fixed sleeps, long timeouts, no idempotency keys, a direct hand-off to fulfillment.
<b>stoic</b> takes each order on a durable workflow (reserve, charge with an idempotency key,
hand off through an outbox), answers within its deadline (201 when done, 202 when the work
will finish after a dependency comes back) and finishes every accepted order exactly once.</p>
<p>Every number is counted from the services' own databases after the shop drained, not from
what either build believes. The headline is <i>completed correctly</i>: paid once, reserved
once, fulfilled once. Each row is defined at the bottom of the page (hover a row for its
definition). Charts of the two builds share their axes.</p>
</section>
"""


def first_phases(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The phase names of the scenario, in order."""
    return [p["name"] for p in runs[0]["phases"]]


def _scorecard_table(runs: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(run['mode'])}</th>" for run in runs)
    rows = []
    for key, label, kind in SCORECARD_ROWS:
        cells = "".join(
            f'<td class="num">{html.escape(format_value(run["scorecard"].get(key), kind))}</td>'
            for run in runs
        )
        tip = html.escape(DEFINITIONS.get(key, ""), quote=True)
        rows.append(f'<tr id="row-{key}"><td title="{tip}">{html.escape(label)}</td>{cells}</tr>')
    drains = "".join(
        f'<td class="num">{html.escape(format_value(run.get("drain_seconds"), "s"))}</td>'
        for run in runs
    )
    rows.append(f'<tr id="row-drain"><td title="Time the shop was given after the load stopped '
                f'to finish its work.">Drain after the load</td>{drains}</tr>')
    return (f'<table id="scorecard"><tr><th>counted from the services\' databases</th>{head}'
            f'</tr>{"".join(rows)}</table>')


def _phase_table(runs: Sequence[dict[str, Any]]) -> str:
    phase_rows = []
    for phase in runs[0]["phases"]:
        cells = ""
        for run in runs:
            stats = run["scorecard"]["phases"].get(phase["name"], {})
            amp = stats.get("load_amplification")
            cells += (
                f'<td class="num">{stats.get("completed", 0)}/{stats.get("attempted", 0)}</td>'
                f'<td class="num">{stats.get("in_deadline", 0)}</td>'
                f'<td class="num">{html.escape(format_value(stats.get("p99"), "s"))}</td>'
                f'<td class="num">{html.escape(format_value(amp, "x"))}</td>'
            )
        faults = ", ".join(FAULT_LABELS.get(f, f) for f in phase.get("faults") or []) or "none"
        phase_rows.append(
            f"<tr><td>{html.escape(phase['name'])}</td><td>{phase['start']:.0f}-"
            f"{phase['end']:.0f} s</td><td>{html.escape(faults)}</td>{cells}</tr>")
    phase_head = "".join(
        f"<th>{html.escape(run['mode'])}: completed / sent</th><th>answered in deadline</th>"
        f"<th>p99</th><th>payments load</th>" for run in runs
    )
    return (f'<table id="phases"><tr><th>phase</th><th>when</th><th>fault</th>{phase_head}</tr>'
            f'{"".join(phase_rows)}</table>')


def render(runs: Sequence[dict[str, Any]], title: str = "stoic demo") -> str:
    """The report page for ``runs`` (``RunResult.as_dict()`` of each mode) as HTML text."""
    legend = "".join(
        f'<span style="background:{colour}55">{html.escape(FAULT_LABELS[name])}</span>'
        for name, colour in _FAULT_COLOURS.items()
    )
    scale = _scales(runs)
    charts = {run["mode"]: _charts(run, scale) for run in runs}
    rows = []
    for name, chart_title in _CHART_TITLES.items():
        figures = "".join(
            f'<figure class="chart" id="chart-{run["mode"]}-{name}" data-chart="{name}">'
            f'<figcaption><b>{html.escape(run["mode"])}</b>: {html.escape(chart_title)}'
            f'</figcaption>{charts[run["mode"]][name]}</figure>'
            for run in runs
        )
        rows.append(f'<h3>{html.escape(chart_title)}</h3><p class="sub">'
                    f'{html.escape(_CAPTIONS[name])}</p><div class="chartrow">{figures}</div>')
    notes = "".join(f'<p class="note">{html.escape(run["mode"])}: {html.escape(n)}</p>'
                    for run in runs for n in run.get("notes", []))
    defs = "".join(
        f"<dt>{html.escape(label)}</dt><dd>{html.escape(DEFINITIONS.get(key, ''))}</dd>"
        for key, label, _ in SCORECARD_ROWS
    )
    first = runs[0]
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}: a shop under chaos, naive code vs stoic</h1>"
        f'<p class="sub">{first["duration"]:.0f} s at {first["rps"]:.0f} orders/s, seed '
        f'{first["seed"]}, backend {html.escape(first["backend"])}, edge deadline '
        f'{first["edge_deadline"]:.1f} s; network faults: '
        f'{html.escape(first["network_faults"])}.</p>{_HOWTO}'
        f'<h2>Scorecard</h2>{_scorecard_table(runs)}'
        f'<h2>Phase by phase</h2>{_phase_table(runs)}'
        f'<h2>Over time</h2><p class="legend">faults: {legend}</p>{notes}{"".join(rows)}'
        f'<h2>Definitions</h2><dl class="defs" id="definitions">{defs}</dl></body></html>'
    )

"""The HTML report: one self-contained file (no network, no scripts) with the charts inline.

Charts are drawn with matplotlib and embedded as inline SVG, so the page opens offline, in
any browser, and its charts are plain elements a test can find. Per mode: orders per second
(accepted and failed) with the fault windows shaded, p99 latency per second, the state of
each circuit breaker over time (scraped from the services' ``/metrics`` while the run went),
and the load arriving at payments.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SCORECARD_ROWS", "first_phases", "format_value", "render"]

# (key, label, format)
SCORECARD_ROWS: tuple[tuple[str, str, str], ...] = (
    ("attempted", "Orders attempted", "int"),
    ("accepted", "Accepted (what the customer was told)", "int"),
    ("accepted_by_orders", "Accepted (orders database)", "int"),
    ("failed_fast", "Failed fast (< 1 s)", "int"),
    ("failed_slow", "Failed slow (>= 1 s)", "int"),
    ("success_ratio", "Success ratio", "pct"),
    ("p50", "p50 latency", "s"),
    ("p99", "p99 latency", "s"),
    ("p99_outage", "p99 latency during the payments outage", "s"),
    ("duplicate_charges", "Duplicate charges", "int"),
    ("lost_orders", "Lost orders (accepted, never fulfilled)", "int"),
    ("fulfilled_exactly_once", "Accepted orders fulfilled exactly once", "int"),
    ("duplicate_fulfillments", "Duplicate fulfillments", "int"),
    ("charged_but_reported_failed", "Charged but reported failed", "int"),
    ("client_retries", "Orders sent again by the client (same key)", "int"),
    ("load_amplification", "Load amplification at payments (outage)", "x"),
    ("time_to_recover", "Time to recover after payments returns (>= 90% ok)", "ttr"),
    ("breaker_openings", "Breaker openings", "int"),
    ("dead_lettered", "Messages dead-lettered", "int"),
)

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


def _figure(run: dict[str, Any], draw: Callable[[Any], None], *, height: float = 2.6,
            ylabel: str | None = None, xlabel: str = "seconds", legend: bool = True) -> str:
    """One chart of ``run`` as inline SVG: ``draw(ax)`` plots, the frame is the same for all.

    Every chart shades the fault windows, spans the whole run and has a light grid.
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
        ax.set_xlim(0, max(run["series"]["t"][-1] + 1, run["duration"]))
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


def _charts(run: dict[str, Any]) -> dict[str, str]:
    series = run["series"]
    t = series["t"]

    def throughput(ax: Any) -> None:
        ax.plot(t, series["ok"], color="#2a9d8f", label="accepted / s", drawstyle="steps-post")
        ax.plot(t, series["errors"], color="#e63946", label="failed / s", drawstyle="steps-post")

    def latency(ax: Any) -> None:
        p99 = [v if v is not None else float("nan") for v in series["p99"]]
        ax.plot(t, p99, color="#264653", marker=".", label="p99 latency (by send time)")
        if run["mode"] == "stoic":
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
        ax.set_ylim(-0.3, 2.4)

    def payments(ax: Any) -> None:
        ax.bar(t, series["payments_arrivals"], width=1.0, align="edge", color="#457b9d",
               label="requests arriving at payments / s")
        ax.plot(t, series["payments_sent"], color="#f4a259", drawstyle="steps-post", lw=2,
                label="requests orders sent to payments / s")
        ax.plot(t, series["payments_charges"], color="#e63946", drawstyle="steps-post",
                label="charges made / s")

    return {
        "throughput": _figure(run, throughput, ylabel="orders / s",
                              xlabel="seconds (shaded: faults)"),
        "latency": _figure(run, latency, ylabel="seconds"),
        "breakers": _figure(run, breakers, height=2.2, xlabel="seconds (scraped from /metrics)",
                            legend=bool(names)),
        "payments": _figure(run, payments, ylabel="per second"),
    }


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
max-width:1650px}
h1{margin-bottom:.2rem} .sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:1rem 0} td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd}
td.num{text-align:right;font-variant-numeric:tabular-nums} th{text-align:left;background:#f4f4f4}
.modes{display:flex;gap:2rem;flex-wrap:wrap} .mode{flex:1 1 700px}
figure.chart{margin:0 0 1rem 0;border:1px solid #eee;padding:.4rem}
figure.chart figcaption{font-size:.85rem;color:#444}
figure.chart svg{width:100%;height:auto}
.legend span{display:inline-block;padding:.1rem .5rem;margin-right:.4rem;font-size:.8rem}
.note{color:#8a5a00;font-size:.9rem}
"""

_CAPTIONS = {
    "throughput": "Orders accepted and failed per second; shaded windows are the faults.",
    "latency": "p99 latency of the orders sent in each second.",
    "breakers": "Circuit breaker state over time, scraped from orders' /metrics.",
    "payments": "Load at payments per second: requests orders sent (counted at its HTTP "
                "transport, reaching payments or not), requests that arrived, charges made.",
}


def first_phases(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The phase names of the scenario, in order."""
    return [p["name"] for p in runs[0]["phases"]]


def render(runs: Sequence[dict[str, Any]], title: str = "stoic demo") -> str:
    """The report page for ``runs`` (``RunResult.as_dict()`` of each mode) as HTML text."""
    modes = [run["mode"] for run in runs]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in modes)
    rows = []
    for key, label, kind in SCORECARD_ROWS:
        cells = "".join(
            f'<td class="num">{html.escape(format_value(run["scorecard"].get(key), kind))}</td>'
            for run in runs
        )
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    legend = "".join(
        f'<span style="background:{colour}55">{html.escape(name.replace("_", " "))}</span>'
        for name, colour in _FAULT_COLOURS.items()
    )
    phase_rows = []
    for phase in first_phases(runs):
        cells = ""
        for run in runs:
            stats = run["scorecard"]["phases"].get(phase, {})
            amp = stats.get("load_amplification")
            cells += (
                f'<td class="num">{stats.get("accepted", 0)}/{stats.get("attempted", 0)}</td>'
                f'<td class="num">{html.escape(format_value(stats.get("p99"), "s"))}</td>'
                f'<td class="num">{html.escape(format_value(amp, "x"))}</td>'
            )
        phase_rows.append(f"<tr><td>{html.escape(phase)}</td>{cells}</tr>")
    phase_head = "".join(
        f"<th>{html.escape(m)}: accepted</th><th>p99</th><th>payments load</th>" for m in modes
    )
    sections = []
    for run in runs:
        charts = _charts(run)
        figures = "".join(
            f'<figure class="chart" id="chart-{run["mode"]}-{name}" data-chart="{name}">'
            f'{svg}<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>'
            for name, svg in charts.items()
        )
        notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in run.get("notes", []))
        sections.append(
            f'<section class="mode" id="mode-{run["mode"]}"><h2>{html.escape(run["mode"])} build'
            f"</h2>{notes}{figures}</section>"
        )
    first = runs[0]
    phases = ", ".join(
        f'{html.escape(p["name"])} ({p["start"]:.0f}-{p["end"]:.0f} s)' for p in first["phases"]
    )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}: a shop under chaos, naive code vs stoic</h1>"
        f'<p class="sub">{first["duration"]:.0f} s at {first["rps"]:.0f} orders/s, seed '
        f'{first["seed"]}, backend {html.escape(first["backend"])}; network faults: '
        f'{html.escape(first["network_faults"])}. Phases: {phases}.</p>'
        f'<table id="scorecard"><tr><th>counted from the services\' databases</th>{head}</tr>'
        f'{"".join(rows)}</table><p class="legend">{legend}</p>'
        f'<div class="modes">{"".join(sections)}</div>'
        f'<h2>Phase by phase</h2><table id="phases"><tr><th>phase</th>{phase_head}</tr>'
        f'{"".join(phase_rows)}</table></body></html>'
    )

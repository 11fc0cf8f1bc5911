"""Generated Prometheus alert rules, Alertmanager routes and promtool unit tests.

``render(AlertConfig(service="shop", slo=0.999, latency_p99=0.5))`` returns three files:

- ``rules.yml``: recording rules for the service's error ratio over 5m, 30m, 1h, 2h, 6h, 1d
  and 3d, and alerts. The error-budget alerts are the multi-window, multi-burn-rate alerts
  of the SRE workbook (chapter "Alerting on SLOs"): page when the budget burns 14.4x too
  fast over 1h (confirmed over 5m) or 6x over 6h (confirmed over 30m); ticket at 3x over 1d
  (2h) or 1x over 3d (6h). Both share one alert name, so Alertmanager's inhibition keeps the
  ticket quiet while the page fires. Also: 5xx ratio, p99 latency per dependency, circuit
  breaker open, dead-letter queue growing, retry ratio high.
- ``alertmanager.yml``: routes by ``team`` first (each team hears about its own services)
  and then by ``severity`` (page, ticket, info), grouping by alert and service, and an
  inhibition of ticket by page for the same alert and service.
- ``rules.test.yml``: promtool unit tests that feed series and expect every alert.

An error is a call whose classified outcome is ``transient``, ``throttled`` or ``unknown``:
the dependency failed. ``permanent`` (a 404, bad input) is the caller's problem and does not
burn the budget. Series are selected by a ``service`` label, which the scrape configuration
attaches to the targets of the service; ``team`` is added by the rules themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .otel import DURATION_BUCKETS

__all__ = ["AlertConfig", "render", "write"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: (severity, long window, short window, burn rate) per the SRE workbook.
BURN_RATES = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "1d", "2h", 3.0),
    ("ticket", "3d", "6h", 1.0),
)
_FAILED = 'outcome=~"transient|throttled|unknown"'
_HTTP_REQUESTS = "http_server_request_duration_seconds_count"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """What to alert on. Validated here, so a bad value never produces a file.

    Args:
        service: the value of the ``service`` label on the service's series.
        slo: the availability objective, a fraction in (0, 1), e.g. 0.999.
        latency_p99: seconds; alert when a dependency's p99 call duration stays above it.
        team: owner label for routing; defaults to the service name.
        error_5xx_ratio: fraction of HTTP responses that may be 5xx before a ticket.
        retry_ratio: retries per call above which an info alert fires.
    """

    service: str
    slo: float
    latency_p99: float
    team: str | None = None
    error_5xx_ratio: float = 0.05
    retry_ratio: float = 0.1
    owner: str = field(init=False)

    def __post_init__(self) -> None:
        for name in ("service", "team"):
            value = getattr(self, name)
            if name == "team" and value is None:
                continue
            if not isinstance(value, str) or not _NAME.match(value):
                raise ValueError(
                    f"{name} must be 1-63 characters of letters, digits, '_', '.' or '-', "
                    f"starting with a letter or digit, got {value!r}"
                )
        for name in ("slo", "error_5xx_ratio", "retry_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise ValueError(
                    f"{name} must be a fraction strictly between 0 and 1, got {value!r}"
                )
        latency = self.latency_p99
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency > 0:
            raise ValueError(f"latency_p99 must be a number of seconds > 0, got {latency!r}")
        if latency >= DURATION_BUCKETS[-1]:
            raise ValueError(
                f"latency_p99 must be below the duration histogram's largest bucket "
                f"({DURATION_BUCKETS[-1]}s), got {latency!r}"
            )
        object.__setattr__(self, "owner", self.team or self.service)

    @property
    def budget(self) -> float:
        """The error budget: the fraction of calls allowed to fail."""
        return 1.0 - self.slo


def _num(value: float) -> str:
    return format(value, ".10g")


def _ratio_record(window: str) -> str:
    return f"stoic:call_error_ratio:rate{window}"


def _rules(cfg: AlertConfig) -> dict[str, Any]:
    sel = f'service="{cfg.service}"'
    labels_team = {"team": cfg.owner}
    records: list[dict[str, Any]] = []
    for window in WINDOWS:
        records.append({
            "record": _ratio_record(window),
            "expr": (
                f"sum by (service) (rate(stoic_calls_total{{{sel},{_FAILED}}}[{window}]))\n"
                f"/\nsum by (service) (rate(stoic_calls_total{{{sel}}}[{window}]))"
            ),
        })
    records.append({
        "record": "stoic:http_5xx_ratio:rate5m",
        "expr": (
            f'sum by (service) (rate({_HTTP_REQUESTS}{{{sel},http_response_status_code=~"5.."}}'
            f"[5m]))\n/\nsum by (service) (rate({_HTTP_REQUESTS}{{{sel}}}[5m]))"
        ),
    })
    records.append({
        "record": "stoic:call_duration_seconds:p99_rate5m",
        "expr": (
            "histogram_quantile(0.99, sum by (service, name, le) "
            f"(rate(stoic_call_duration_seconds_bucket{{{sel}}}[5m])))"
        ),
    })
    records.append({
        "record": "stoic:retry_ratio:rate5m",
        "expr": (
            f"sum by (service, name) (rate(stoic_retries_total{{{sel}}}[5m]))\n/\n"
            f"sum by (service, name) (rate(stoic_calls_total{{{sel}}}[5m]))"
        ),
    })

    alerts: list[dict[str, Any]] = []
    for severity in ("page", "ticket"):
        terms = []
        for sev, long, short, rate in BURN_RATES:
            if sev != severity:
                continue
            threshold = _num(rate * cfg.budget)
            terms.append(
                f"(\n  {_ratio_record(long)}{{{sel}}} > {threshold}\n  and\n"
                f"  {_ratio_record(short)}{{{sel}}} > {threshold}\n)"
            )
        alerts.append({
            "alert": "StoicErrorBudgetBurn",
            "expr": "\nor\n".join(terms),
            "labels": {"severity": severity, **labels_team},
            "annotations": _annotations("StoicErrorBudgetBurn", cfg, severity),
        })
    alerts.append({
        "alert": "StoicHigh5xxRatio",
        "expr": f"stoic:http_5xx_ratio:rate5m{{{sel}}} > {_num(cfg.error_5xx_ratio)}",
        "for": "10m",
        "labels": {"severity": "ticket", **labels_team},
        "annotations": _annotations("StoicHigh5xxRatio", cfg, "ticket"),
    })
    alerts.append({
        "alert": "StoicHighLatencyP99",
        "expr": f"stoic:call_duration_seconds:p99_rate5m{{{sel}}} > {_num(cfg.latency_p99)}",
        "for": "10m",
        "labels": {"severity": "ticket", **labels_team},
        "annotations": _annotations("StoicHighLatencyP99", cfg, "ticket"),
    })
    alerts.append({
        "alert": "StoicCircuitBreakerOpen",
        "expr": f'max by (service, name) (stoic_circuit_breaker_state{{{sel},state="open"}}) == 1',
        "for": "5m",
        "labels": {"severity": "ticket", **labels_team},
        "annotations": _annotations("StoicCircuitBreakerOpen", cfg, "ticket"),
    })
    alerts.append({
        "alert": "StoicDeadLetterQueueGrowing",
        "expr": (
            "sum by (service, topic) "
            f'(increase(stoic_messages_total{{{sel},result="dead_lettered"}}[15m])) > 0'
        ),
        "for": "15m",
        "labels": {"severity": "ticket", **labels_team},
        "annotations": _annotations("StoicDeadLetterQueueGrowing", cfg, "ticket"),
    })
    alerts.append({
        "alert": "StoicHighRetryRatio",
        "expr": f"stoic:retry_ratio:rate5m{{{sel}}} > {_num(cfg.retry_ratio)}",
        "for": "15m",
        "labels": {"severity": "info", **labels_team},
        "annotations": _annotations("StoicHighRetryRatio", cfg, "info"),
    })
    return {
        "groups": [
            {"name": f"stoic-{cfg.service}-recording", "interval": "1m", "rules": records},
            {"name": f"stoic-{cfg.service}-alerts", "rules": alerts},
        ]
    }


_SUMMARIES = {
    "StoicErrorBudgetBurn": (
        "{service} is burning its error budget too fast",
        "Calls from {service} fail fast enough to exhaust the {slo} objective's error budget "
        "early ({severity}).",
    ),
    "StoicHigh5xxRatio": (
        "{service} answers too many requests with 5xx",
        "More than {ratio} of {service}'s HTTP responses over 5m were 5xx.",
    ),
    "StoicHighLatencyP99": (
        "{service}: p99 latency of {name} is above {latency}s",
        "The 99th percentile duration of calls through {name} stayed above {latency}s for 10m.",
    ),
    "StoicCircuitBreakerOpen": (
        "{service}: circuit breaker {name} is open",
        "Breaker {name} has been open for 5m: its dependency is failing and calls are shed.",
    ),
    "StoicDeadLetterQueueGrowing": (
        "{service}: dead-letter queue of {topic} is growing",
        "Messages on {topic} keep failing and are dead-lettered; inspect with stoic queue.",
    ),
    "StoicHighRetryRatio": (
        "{service}: {name} retries more than {retry} of its calls",
        "A high retry ratio on {name} signals a struggling dependency and extra load on it.",
    ),
}


def _annotations(
    alert: str, cfg: AlertConfig, severity: str, labels: dict[str, str] | None = None
) -> dict[str, str]:
    """Annotations as templates (for rules) or, given the alert's labels, expanded (for tests)."""
    def label(key: str) -> str:
        if labels is None:
            return "{{ $labels.%s }}" % key  # noqa: UP031 - a Go template, not a format
        return labels[key]

    values = {
        "service": cfg.service, "slo": _num(cfg.slo), "severity": severity,
        "ratio": _num(cfg.error_5xx_ratio), "latency": _num(cfg.latency_p99),
        "retry": _num(cfg.retry_ratio),
    }
    summary, description = _SUMMARIES[alert]
    fields = dict(values)
    for key in ("name", "topic"):
        if "{" + key + "}" in summary + description:
            fields[key] = label(key)
    return {"summary": summary.format(**fields), "description": description.format(**fields)}


def _alertmanager(cfg: AlertConfig) -> dict[str, Any]:
    team = cfg.owner
    receivers = [f"{team}-page", f"{team}-ticket", f"{team}-info", "default"]
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "service", "severity"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "12h",
            "routes": [
                {
                    "matchers": [f'team="{team}"'],
                    "receiver": f"{team}-ticket",
                    "routes": [
                        {
                            "matchers": ['severity="page"'], "receiver": f"{team}-page",
                            "group_wait": "10s", "repeat_interval": "1h",
                        },
                        {"matchers": ['severity="ticket"'], "receiver": f"{team}-ticket"},
                        {
                            "matchers": ['severity="info"'], "receiver": f"{team}-info",
                            "repeat_interval": "24h",
                        },
                    ],
                },
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['severity="page"'],
                "target_matchers": ['severity="ticket"'],
                "equal": ["alertname", "service"],
            },
        ],
        "receivers": [{"name": name} for name in receivers],
    }


# --- promtool unit tests -------------------------------------------------------------------


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _expect(
    cfg: AlertConfig, alert: str, severity: str, extra: dict[str, str]
) -> dict[str, Any]:
    labels = {"service": cfg.service, **extra, "severity": severity, "team": cfg.owner}
    return {"exp_labels": labels, "exp_annotations": _annotations(alert, cfg, severity, labels)}


def _calls(cfg: AlertConfig, ratio: float, minutes: int) -> list[Any]:
    """Call counters where exactly ``ratio`` of 1000 calls a minute fail."""
    base = {"service": cfg.service, "name": "payments"}
    failed = 1000.0 * ratio
    permanent = min(100.0, 1000.0 - failed)  # the caller's fault: counted, but not an error
    ok = 1000.0 - failed - permanent
    return [
        _series("stoic_calls_total", {**base, "outcome": "success"}, f"0+{_num(ok)}x{minutes}"),
        _series("stoic_calls_total", {**base, "outcome": "transient"},
                f"0+{_num(failed)}x{minutes}"),
        _series("stoic_calls_total", {**base, "outcome": "permanent"},
                f"0+{_num(permanent)}x{minutes}"),
    ]


def _tests(cfg: AlertConfig) -> dict[str, Any]:
    budget = cfg.budget
    tests: list[dict[str, Any]] = []
    # 1. fast burn (20x the budget, or everything failing): a page (when the objective
    #    allows one: 6x the budget must be below 100%) and a ticket, which Alertmanager
    #    inhibits while the page fires
    ratio = min(20 * budget, 1.0)
    expected = [_expect(cfg, "StoicErrorBudgetBurn", "page", {})] if ratio > 6 * budget else []
    expected.append(_expect(cfg, "StoicErrorBudgetBurn", "ticket", {}))
    tests.append({
        "interval": "1m",
        "input_series": _calls(cfg, ratio, 90),
        "alert_rule_test": [
            {"eval_time": "75m", "alertname": "StoicErrorBudgetBurn", "exp_alerts": expected},
        ],
    })
    # 2. slow burn (2x the budget): a ticket, not a page
    tests.append({
        "interval": "1m",
        "input_series": _calls(cfg, min(2 * budget, (1 + budget) / 2), 400),
        "alert_rule_test": [
            {"eval_time": "390m", "alertname": "StoicErrorBudgetBurn",
             "exp_alerts": [_expect(cfg, "StoicErrorBudgetBurn", "ticket", {})]},
        ],
    })
    # 3. within budget (half of it): nothing fires
    tests.append({
        "interval": "1m",
        "input_series": _calls(cfg, budget / 2, 400),
        "alert_rule_test": [
            {"eval_time": "390m", "alertname": "StoicErrorBudgetBurn", "exp_alerts": []},
        ],
    })
    # 4. the other alerts
    sel = {"service": cfg.service}
    bad_5xx = min(cfg.error_5xx_ratio * 2, 0.99) * 100
    buckets = [
        _series("stoic_call_duration_seconds_bucket",
                {**sel, "name": "payments", "le": repr(float(le))},
                "0+10x40" if le > cfg.latency_p99 * 1.5 else "0+0x40")
        for le in DURATION_BUCKETS
    ]
    buckets.append(_series("stoic_call_duration_seconds_bucket",
                           {**sel, "name": "payments", "le": "+Inf"}, "0+10x40"))
    retry_calls = 100.0
    tests.append({
        "interval": "1m",
        "input_series": [
            _series(_HTTP_REQUESTS, {**sel, "http_response_status_code": "500"},
                    f"0+{_num(bad_5xx)}x40"),
            _series(_HTTP_REQUESTS, {**sel, "http_response_status_code": "200"},
                    f"0+{_num(100 - bad_5xx)}x40"),
            *buckets,
            _series("stoic_circuit_breaker_state",
                    {**sel, "name": "payments", "state": "open"}, "1x40"),
            _series("stoic_circuit_breaker_state",
                    {**sel, "name": "payments", "state": "closed"}, "0x40"),
            _series("stoic_messages_total",
                    {**sel, "topic": "orders", "result": "dead_lettered"}, "0+1x40"),
            _series("stoic_calls_total", {**sel, "name": "search", "outcome": "success"},
                    f"0+{_num(retry_calls)}x40"),
            _series("stoic_retries_total", {**sel, "name": "search"},
                    f"0+{_num(min(cfg.retry_ratio * 2, 0.99) * retry_calls)}x40"),
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "StoicHigh5xxRatio",
             "exp_alerts": [_expect(cfg, "StoicHigh5xxRatio", "ticket", {})]},
            {"eval_time": "30m", "alertname": "StoicHighLatencyP99",
             "exp_alerts": [_expect(cfg, "StoicHighLatencyP99", "ticket", {"name": "payments"})]},
            {"eval_time": "30m", "alertname": "StoicCircuitBreakerOpen",
             "exp_alerts": [
                 _expect(cfg, "StoicCircuitBreakerOpen", "ticket", {"name": "payments"})
             ]},
            {"eval_time": "35m", "alertname": "StoicDeadLetterQueueGrowing",
             "exp_alerts": [
                 _expect(cfg, "StoicDeadLetterQueueGrowing", "ticket", {"topic": "orders"})
             ]},
            {"eval_time": "30m", "alertname": "StoicHighRetryRatio",
             "exp_alerts": [_expect(cfg, "StoicHighRetryRatio", "info", {"name": "search"})]},
            # a breaker that just opened has not been open for 5m yet
            {"eval_time": "3m", "alertname": "StoicCircuitBreakerOpen", "exp_alerts": []},
        ],
    })
    return {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}


_HEADER = {
    "rules.yml": "# Prometheus rules for {service}, generated by `stoic alerts render`.\n",
    "alertmanager.yml": (
        "# Alertmanager routes for team {team}, generated by `stoic alerts render`.\n"
        "# Add your integrations (pagerduty_configs, slack_configs, email_configs, ...)\n"
        "# to the receivers below.\n"
    ),
    "rules.test.yml": "# promtool unit tests: promtool test rules rules.test.yml\n",
}


def render(config: AlertConfig) -> dict[str, str]:
    """File name -> YAML text for ``rules.yml``, ``alertmanager.yml`` and ``rules.test.yml``."""
    import yaml

    documents = {
        "rules.yml": _rules(config),
        "alertmanager.yml": _alertmanager(config),
        "rules.test.yml": _tests(config),
    }
    out = {}
    for name, document in documents.items():
        header = _HEADER[name].format(service=config.service, team=config.owner)
        text = yaml.dump(document, Dumper=_block_dumper(yaml), sort_keys=False,
                         default_flow_style=False, width=100)
        out[name] = header + text
    return out


def _block_dumper(yaml: Any) -> Any:
    """A safe dumper writing multi-line strings (the rule expressions) as ``|`` block scalars,
    so each line of a PromQL expression stays a line in rules.yml instead of a quoted string
    with blank lines between its parts."""

    class BlockDumper(yaml.SafeDumper):  # type: ignore[misc,name-defined]
        pass

    def text(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    BlockDumper.add_representer(str, text)
    return BlockDumper


def write(config: AlertConfig, out: str | Path) -> list[Path]:
    """Render and write the files into directory ``out`` (created if needed)."""
    files = render(config)  # everything is rendered before anything is written
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

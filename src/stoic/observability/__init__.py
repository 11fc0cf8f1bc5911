"""Telemetry adapters: OpenTelemetry (``otel``), Prometheus (``prometheus``), JSON logs
(``logs``) and generated alert rules (``alerts``), plus a Grafana dashboard.

Each adapter subscribes to ``stoic.events`` when you switch it on and imports its optional
library only then, so importing this package costs nothing and needs no extra.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["dashboard"]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard for stoic's Prometheus metrics (import it in Grafana as JSON).

    It has ``datasource``, ``service`` and ``name`` (policy) variables, and one panel per
    metric: calls by outcome, error ratio, p50/p99 duration, retries per call, rejections,
    breaker state, messages and idempotent replays.
    """
    text = resources.files(__name__).joinpath("dashboard.json").read_text(encoding="utf-8")
    value: dict[str, Any] = json.loads(text)
    return value

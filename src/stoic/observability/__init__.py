"""Telemetry adapters: OpenTelemetry (``otel``), Prometheus (``prometheus``), JSON logs
(``logs``) and generated alert rules (``alerts``).

Each adapter subscribes to ``stoic.events`` when you switch it on and imports its optional
library only then, so importing this package costs nothing and needs no extra.
"""

from __future__ import annotations

__all__: list[str] = []

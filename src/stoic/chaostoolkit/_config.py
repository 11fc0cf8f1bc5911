"""Where the extension finds the proxy API and the process records (from the configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stoic.chaos.process import ProcessDirectory
from stoic.chaos.proxy import ProxyClient

__all__ = ["proxy_client", "proxy_url", "state_directory"]

DEFAULT_URL = "http://127.0.0.1:8474"


def proxy_url(configuration: Mapping[str, Any] | None) -> str:
    """``stoic_proxy_url``, else chaostoolkit-toxiproxy's keys, else 127.0.0.1:8474."""
    config = configuration or {}
    url = config.get("stoic_proxy_url") or config.get("toxiproxy_url")
    if url:
        return str(url)
    host = config.get("toxiproxy_host")
    if host:
        return f"http://{host}:{config.get('toxiproxy_port') or 8474}"
    return DEFAULT_URL


def proxy_client(configuration: Mapping[str, Any] | None) -> ProxyClient:
    return ProxyClient(proxy_url(configuration))


def state_directory(
    state_dir: str | None, configuration: Mapping[str, Any] | None
) -> ProcessDirectory:
    chosen = state_dir or (configuration or {}).get("stoic_state_dir")
    if not chosen:
        raise ValueError("no process records: pass state_dir or set configuration.stoic_state_dir")
    return ProcessDirectory(str(chosen))

"""The shop's services, each run as its own process: ``python -m stoic.demo.services NAME CFG``.

``payments``, ``inventory``, ``fulfillment`` and ``orders``; each module has ``build(cfg)``
returning its ASGI app.
"""

from __future__ import annotations

import importlib
from typing import Any

from .common import SERVICES

__all__ = ["build_app"]


def build_app(name: str, cfg: Any) -> Any:
    """The ASGI app of service ``name`` for configuration ``cfg``."""
    if name not in SERVICES:
        raise ValueError(f"service must be payments, inventory, fulfillment or orders, got {name!r}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.build(cfg)

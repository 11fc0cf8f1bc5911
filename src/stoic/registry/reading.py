"""Reading a policy file (TOML or YAML) and overlaying the ``STOIC_POLICIES__...`` environment."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["ENV_PREFIX", "SHORTHAND", "apply_environment", "env_value", "read_file", "toml_module"]

ENV_PREFIX = "STOIC_POLICIES__"

# A part given as a bare value means this field: ``timeout = 2.0`` is ``{seconds = 2.0}``.
SHORTHAND = {"timeout": "seconds", "bulkhead": "max_concurrent", "rate_limit": "rate"}


def read_file(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "<file>", source, f"cannot read it ({exc.strerror})") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(source, "<file>", source,
                              "YAML needs the yaml extra: pip install 'stoic[yaml]'") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, "<file>", source, f"not valid YAML: {exc}") from exc
    else:
        try:
            data = toml_module().loads(text)
        except ValueError as exc:  # tomllib.TOMLDecodeError names the line and column
            raise ConfigError(source, "<file>", source, f"not valid TOML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "<file>", type(data).__name__, "the top level must be a table")
    return data


def toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # Python 3.10
        import tomli  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ConfigError("<toml>", "<file>", None,
                          "TOML on Python 3.10 needs tomli: pip install tomli") from exc
    return tomli


def env_value(raw: str) -> Any:
    try:
        return toml_module().loads(f"v = {raw}")["v"]
    except ValueError:
        return raw


def apply_environment(
    policies: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, str]:
    """Overlay ``STOIC_POLICIES__...`` variables on ``policies``; dotted key -> variable name."""
    origins: dict[str, str] = {}
    by_lower = {name.lower(): name for name in policies}
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in variable[len(ENV_PREFIX):].split("__")]
        if len(path) not in (2, 3) or not all(path):
            raise ConfigError(f"environment {variable}", variable, environ[variable],
                              "expected STOIC_POLICIES__NAME__PART[__FIELD]")
        name = by_lower.get(path[0], path[0])
        table = policies.setdefault(name, {})
        if not isinstance(table, dict):
            continue  # reported when the table is built
        value = env_value(environ[variable])
        if len(path) == 2:
            table[path[1]] = value
        else:
            part = table.get(path[1])
            if not isinstance(part, dict):
                part = {} if part is None else {SHORTHAND.get(path[1], "value"): part}
                table[path[1]] = part
            part[path[2]] = value
        origins[".".join(["policies", name, *path[1:]])] = f"environment {variable}"
    return origins

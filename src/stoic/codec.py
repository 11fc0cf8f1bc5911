"""JSON in and out for everything stoic stores: idempotent results, messages, cached replies.

Nothing stoic stores is pickled, so a shared database or Redis can never become a way to run
code. ``encode`` turns a value into JSON text, with tagged objects for the types JSON lacks
(datetime, date, time, timedelta, UUID, Decimal, bytes, set, tuple, dataclasses, pydantic
models and types the application registers). ``decode`` turns it back. A tag is only ever
looked up in the registry; it is never imported or evaluated.

``Codec`` instances are independent; ``default_codec`` is the shared, named one that
``register`` adds to.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

# The one speed trick of this module: json's own C encoder (CPython's private
# ``c_make_encoder``), called directly so that encoding a payload skips json.dumps' Python
# layers. Benchmarks: benchmarks/idempotency.py (every stored reply is encoded) and
# benchmarks/queues.py (every published message). Everything else calls ``dumps``/``loads``.
try:  # the C encoder json itself uses; absent on some Python implementations
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - CPython always has it
    _c_make_encoder = None

from ._validate import non_empty
from .errors import CodecError

__all__ = ["Codec", "canonical", "decode", "default_codec", "encode", "register"]

_TAG = "__stoic__"

# Types json writes as they are and ``_tuples`` leaves alone (exact types: a subclass goes the
# slow way, since a registered subclass must win over the built-in).
_LEAVES: frozenset[type] = frozenset({str, int, float, bool, type(None)})


class Codec:
    """A JSON codec with a registry of extra types.

    ``register(cls, name, to_json, from_json)``: ``to_json(obj)`` returns something JSON can
    hold; ``from_json(data)`` rebuilds the object. Registered types win over the built-ins.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_type: dict[type, tuple[str, Callable[[Any], Any]]] = {}
        self._by_name: dict[str, Callable[[Any], Any]] = {}
        self._encoder = json.JSONEncoder(
            default=self._default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        self._decoder = json.JSONDecoder(object_hook=self._hook)
        self._canonical = json.JSONEncoder(
            default=self._default, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
            sort_keys=True,
        )
        # The fast path: a value made only of dicts, lists and _LEAVES (most payloads) needs
        # no ``_tuples`` copy. ``_leaves`` is None (no fast path) when a registered type takes
        # dicts or lists, or without json's C encoder.
        self._leaves: frozenset[type] | None = None if _c_make_encoder is None else _LEAVES
        self._write = _writer(self._encoder)
        self._write_canonical = _writer(self._canonical)

    def register(
        self,
        cls: type,
        name: str,
        to_json: Callable[[Any], Any],
        from_json: Callable[[Any], Any],
    ) -> None:
        """Teach the codec a type. ``name`` is stored in the JSON; keep it stable."""
        if not isinstance(cls, type):
            raise TypeError(f"cls must be a type, got {cls!r}")
        non_empty("name", name)
        with self._lock:
            self._by_type[cls] = (name, to_json)
            self._by_name[name] = from_json
            registered = self._by_type.keys()
            fast = _c_make_encoder is not None and dict not in registered and list not in registered
            self._leaves = _LEAVES - registered if fast else None

    def _default(self, obj: Any) -> Any:
        custom = self._by_type.get(type(obj))
        if custom is not None:
            return {_TAG: custom[0], "v": _tuples(custom[1](obj), self._by_type)}
        if isinstance(obj, _dt.datetime):
            return {_TAG: "datetime", "v": obj.isoformat()}
        if isinstance(obj, _dt.date):
            return {_TAG: "date", "v": obj.isoformat()}
        if isinstance(obj, _dt.time):
            return {_TAG: "time", "v": obj.isoformat()}
        if isinstance(obj, _dt.timedelta):
            return {_TAG: "timedelta", "v": obj.total_seconds()}
        if isinstance(obj, uuid.UUID):
            return {_TAG: "uuid", "v": str(obj)}
        if isinstance(obj, decimal.Decimal):
            return {_TAG: "decimal", "v": str(obj)}
        if isinstance(obj, (bytes, bytearray)):
            return {_TAG: "bytes", "v": base64.b64encode(obj).decode("ascii")}
        if isinstance(obj, (set, frozenset)):
            return {_TAG: "set", "v": sorted(obj, key=repr)}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        dump = getattr(obj, "model_dump", None)  # pydantic v2
        if callable(dump):
            return dump(mode="json")
        for base, (name, to_json) in self._by_type.items():
            if isinstance(obj, base):
                return {_TAG: name, "v": to_json(obj)}
        raise TypeError(f"{type(obj).__qualname__} is not JSON serializable")

    def encode(self, value: Any) -> str:
        """Value to JSON text. Raises ``CodecError`` naming the type it cannot encode."""
        return self._dump(value, self._write, self._encoder)

    def canonical(self, value: Any) -> str:
        """One JSON text per value: sorted keys, ASCII only, no spaces (for fingerprints).

        Two equal values always give the same text, so its hash identifies a request.
        Raises ``CodecError`` like ``encode``.
        """
        return self._dump(value, self._write_canonical, self._canonical)

    def _dump(self, value: Any, write: Any, encoder: json.JSONEncoder) -> str:
        try:
            leaves = self._leaves
            if leaves is not None and _plain(value, leaves):
                return "".join(write(value, 0))
            return encoder.encode(_tuples(value, self._by_type))
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"cannot encode value as JSON: {exc}") from exc

    def decode(self, text: str | bytes) -> Any:
        """JSON text back to a value. Raises ``CodecError`` on bad JSON or an unknown tag."""
        try:
            if isinstance(text, (bytes, bytearray)):
                text = text.decode("utf-8")
            return self._decoder.decode(text)
        except CodecError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"cannot decode stored JSON: {exc}") from exc

    def _hook(self, obj: dict[str, Any]) -> Any:
        tag = obj.get(_TAG)
        if tag is None or len(obj) != 2 or "v" not in obj:
            return obj
        value = obj["v"]
        custom = self._by_name.get(tag)
        if custom is not None:
            return custom(value)
        builtin = _BUILTIN_DECODERS.get(tag)
        if builtin is None:
            raise CodecError(f"unknown codec tag {tag!r}: register the type on this codec")
        return builtin(value)


def _tuples(value: Any, custom: dict[type, tuple[str, Callable[[Any], Any]]]) -> Any:
    # json turns tuples into lists silently, and never asks about subclasses of the types it
    # knows (an ``int`` subclass is written as a plain int). Tag both here, so a replay equals
    # the original and a registered type wins over the built-ins.
    kind = type(value)
    if custom and kind in custom:
        name, to_json = custom[kind]
        return {_TAG: name, "v": _tuples(to_json(value), custom)}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {_TAG: "tuple", "v": [_tuples(v, custom) for v in value]}
    if isinstance(value, list):
        return [_tuples(v, custom) for v in value]
    if isinstance(value, dict):
        return {k: _tuples(v, custom) for k, v in value.items()}
    return value


def _plain(value: Any, leaves: frozenset[type]) -> bool:
    """True when ``value`` is only exact dicts and lists of ``leaves``: ``_tuples`` would
    return an equal copy, so the copy is skipped. Checking a container's items is one C-level
    ``issuperset``; only nested containers cost a Python call. A cycle raises RecursionError,
    as ``_tuples`` does."""
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list:
        items = value
    else:
        return kind in leaves
    if leaves.issuperset(map(type, items)):
        return True
    for item in items:  # noqa: SIM110 - all() over a generator is a third slower here
        if type(item) not in leaves and not _plain(item, leaves):
            return False
    return True


def _writer(encoder: json.JSONEncoder) -> Any:
    """The C encoder behind ``encoder``, built once, for values ``_plain`` accepted.

    ``JSONEncoder.encode`` builds one per call, with a fresh dict of the containers it is
    inside to catch cycles. A plain value has no cycle (``_plain`` walked all of it) and never
    reaches ``default``, so one encoder without that dict serves every call and thread.
    ``writer(value, 0)`` returns the chunks of the text.
    """
    if _c_make_encoder is None:  # pragma: no cover - CPython always has it
        return None
    quote = json.encoder.encode_basestring_ascii if encoder.ensure_ascii else (
        json.encoder.encode_basestring)
    return _c_make_encoder(
        None, encoder.default, quote, None, encoder.key_separator, encoder.item_separator,
        encoder.sort_keys, encoder.skipkeys, encoder.allow_nan,
    )


_BUILTIN_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": _dt.datetime.fromisoformat,
    "date": _dt.date.fromisoformat,
    "time": _dt.time.fromisoformat,
    "timedelta": lambda v: _dt.timedelta(seconds=v),
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "bytes": lambda v: base64.b64decode(v),
    "set": set,
    "tuple": tuple,
}

default_codec = Codec()


def encode(value: Any) -> str:
    """Encode with the shared codec."""
    return default_codec.encode(value)


def canonical(value: Any) -> str:
    """Canonical JSON (sorted keys) with the shared codec, for fingerprints."""
    return default_codec.canonical(value)


def decode(text: str | bytes) -> Any:
    """Decode with the shared codec."""
    return default_codec.decode(text)


def register(
    cls: type, name: str, to_json: Callable[[Any], Any], from_json: Callable[[Any], Any]
) -> None:
    """Teach the shared codec a type (see ``Codec.register``)."""
    default_codec.register(cls, name, to_json, from_json)

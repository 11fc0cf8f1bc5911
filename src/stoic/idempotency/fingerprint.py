"""Fingerprints: a short digest that says "this is the same request" for a key's repeats.

A key says *which* operation; the fingerprint says *what* it was asked to do. A client that
reuses a key for a different request (a bug, or an attack) gets
``IdempotencyKeyMismatchError`` instead of somebody else's stored result.

The default fingerprint of a call is the SHA-256 of the canonical JSON (sorted keys, the
shared codec's types) of its bound arguments, with ``self``/``cls`` left out so a method's
fingerprint does not depend on the instance. Arguments the codec cannot encode raise
``CodecError`` that names the problem; pass ``fingerprint=`` with your own function then.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

from ..codec import Codec, default_codec

__all__ = ["Binder", "digest", "fingerprint_arguments", "fingerprint_request"]


def digest(data: str | bytes) -> str:
    """The hex SHA-256 of text (UTF-8) or bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


class Binder:
    """Binds a call's arguments to their parameter names, with defaults filled in.

    ``inspect.Signature.bind`` is general and slow; for the common signature (named
    parameters, no ``*args``/``**kwargs``) this binds with a dict and a zip, and falls back to
    ``Signature.bind`` (and its error messages) for anything else.
    """

    __slots__ = ("_all", "_defaults", "_names", "_simple", "signature")

    def __init__(self, signature: inspect.Signature | None) -> None:
        self.signature = signature
        params = list(signature.parameters.values()) if signature is not None else []
        plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self._simple = signature is not None and all(p.kind in plain for p in params)
        self._names = tuple(
            p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        self._all = frozenset(p.name for p in params)
        self._defaults = {
            p.name: p.default for p in params if p.default is not inspect.Parameter.empty
        }

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """Name -> value for every parameter; None when the function has no signature."""
        if self.signature is None:
            return None
        if self._simple and len(args) <= len(self._names):
            bound = dict(zip(self._names, args, strict=False))  # args may be fewer
            fast = True
            for name in kwargs:
                if name in bound or name not in self._all:
                    fast = False
                    break
            if fast:
                bound.update(kwargs)
                if len(bound) < len(self._all):
                    for name, default in self._defaults.items():
                        bound.setdefault(name, default)
                if len(bound) == len(self._all):
                    return bound
        full = self.signature.bind(*args, **kwargs)  # raises TypeError as a call would
        full.apply_defaults()
        return dict(full.arguments)


def fingerprint_arguments(
    bound: Mapping[str, Any] | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    codec: Codec = default_codec,
) -> str:
    """Digest of a call's arguments, bound to names so ``f(1)`` and ``f(x=1)`` agree.

    ``bound`` comes from ``Binder.bind``; without one (no signature) the raw positional and
    keyword arguments are hashed.
    """
    if bound is None:
        payload: Any = {"args": list(args), "kwargs": dict(kwargs)}
    else:
        payload = {name: value for name, value in bound.items() if name not in ("self", "cls")}
    return digest(codec.canonical(payload))


def fingerprint_request(method: str, path: str, query: str, body: bytes) -> str:
    """Digest of an HTTP request: method, path, query string and body bytes."""
    h = hashlib.sha256()
    for part in (method.upper().encode("ascii"), path.encode("utf-8"), query.encode("latin-1")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    h.update(body)
    return h.hexdigest()

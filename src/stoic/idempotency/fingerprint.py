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

__all__ = ["digest", "fingerprint_arguments", "fingerprint_request"]


def digest(data: str | bytes) -> str:
    """The hex SHA-256 of text (UTF-8) or bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def fingerprint_arguments(
    signature: inspect.Signature | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    codec: Codec = default_codec,
) -> str:
    """Digest of a call's arguments, bound to names so ``f(1)`` and ``f(x=1)`` agree."""
    if signature is None:
        payload: Any = {"args": list(args), "kwargs": dict(kwargs)}
    else:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        payload = {
            name: value for name, value in bound.arguments.items()
            if name not in ("self", "cls")
        }
    return digest(codec.canonical(payload))


def fingerprint_request(method: str, path: str, query: str, body: bytes) -> str:
    """Digest of an HTTP request: method, path, query string and body bytes."""
    h = hashlib.sha256()
    for part in (method.upper().encode("ascii"), path.encode("utf-8"), query.encode("latin-1")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    h.update(body)
    return h.hexdigest()

"""gRPC: by status code. Nothing here imports grpc; ``RpcError.code()`` is read by name."""

from __future__ import annotations

import grpc  # type: ignore[import-not-found, unused-ignore]

from ..outcome import Outcome, Verdict, register_default

__all__ = ["by_code"]

_CODES = {
    "UNAVAILABLE": Outcome.TRANSIENT,
    "ABORTED": Outcome.TRANSIENT,
    "RESOURCE_EXHAUSTED": Outcome.THROTTLED,
    "DEADLINE_EXCEEDED": Outcome.UNKNOWN,
    "UNKNOWN": Outcome.UNKNOWN,
    "INTERNAL": Outcome.UNKNOWN,
    "CANCELLED": Outcome.UNKNOWN,
}


def by_code(code_name: str) -> Verdict:
    """The verdict for a gRPC status code name; codes not listed are PERMANENT."""
    return Verdict(_CODES.get(code_name, Outcome.PERMANENT), None, f"gRPC {code_name}")


def _rpc_error(exc: BaseException) -> Verdict:
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else None
    return by_code(getattr(code, "name", str(code)))


register_default(grpc.RpcError, _rpc_error)

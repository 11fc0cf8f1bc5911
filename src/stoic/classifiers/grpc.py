"""gRPC: by status code. Nothing here imports grpc; ``RpcError.code()`` is read by name."""

from __future__ import annotations

from ..outcome import Outcome, Verdict, register_default

__all__ = ["by_code", "install"]

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


def install() -> None:
    """Register the gRPC classifier (called by stoic.outcome on first use)."""
    try:
        import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:  # only reached when something imports this module by hand
        return
    register_default(grpc.RpcError, _rpc_error)


"""gRPC: by status code, with the server's ``grpc-retry-pushback-ms`` trailer as retry_after.

Nothing here imports grpc; ``RpcError.code()`` is read by name.
"""

from __future__ import annotations

from ..outcome import Outcome, Verdict, register_default

__all__ = ["by_code", "install", "pushback"]

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


def pushback(exc: BaseException) -> float | None:
    """Seconds the server asked to wait in its ``grpc-retry-pushback-ms`` trailer.

    None without one (or when it is not an integer); negative when the server said "do not
    retry", as the gRPC retry design (A6) defines it.
    """
    trailers_fn = getattr(exc, "trailing_metadata", None)
    try:
        trailers = trailers_fn() if callable(trailers_fn) else None
    except Exception:  # some call objects raise before the call finished
        return None
    for key, value in trailers or ():  # (key, value) pairs, sync and grpc.aio alike
        if key == "grpc-retry-pushback-ms":
            try:
                return int(value) / 1000.0
            except (TypeError, ValueError):
                return None
    return None


def _rpc_error(exc: BaseException) -> Verdict:
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else None
    verdict = by_code(getattr(code, "name", str(code)))
    wait = pushback(exc)
    if wait is None:
        return verdict
    if wait < 0:
        return Verdict(Outcome.PERMANENT, None, f"{verdict.reason}, server pushback: do not retry")
    return Verdict(verdict.outcome, wait, f"{verdict.reason}, server pushback {wait:g} s")


def install() -> None:
    """Register the gRPC classifier (called by stoic.outcome on first use)."""
    try:
        import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:  # only reached when something imports this module by hand
        return
    register_default(grpc.RpcError, _rpc_error)


"""CircuitBreaker: stop calling a dependency that is failing, and find out when it is back.

A breaker watches the outcomes of recent calls in a sliding window (``CountWindow``: the last
N calls, or ``TimeWindow``: the last N seconds in one-second buckets). Once the window holds at
least ``minimum_calls`` calls and the failure rate (or the slow-call rate) reaches its
threshold, the breaker opens: for ``open_for`` seconds every call is rejected at once with
``CircuitOpenError`` carrying ``retry_after``, which spares the dependency and the caller the
wait. Then it goes half-open and lets at most ``half_open_calls`` trial calls through; their
failure and slow-call rates decide whether it closes again or re-opens (optionally for longer
each time, up to ``max_open_for``).

What counts as a failure is decided by ``stoic.classify``: TRANSIENT, THROTTLED and UNKNOWN
are the dependency failing; PERMANENT is not (a 404 or a bad argument says nothing about the
dependency's health). Calls the breaker rejects itself are never recorded. Cancellation is
not an outcome: a cancelled trial call gives its slot back without counting.

Calls through a closed breaker run concurrently: the lock is held only for the O(1) update of
the window after a call returns, never around the call. The closed path allocates nothing
and reads the clock only when something needs a duration (a ``slow_call_duration``, a
``TimeWindow`` or a subscribed event sink). A rejection builds a fresh, small exception each
time, so no traceback accumulates and rejecting costs constant time.

Breakers are named and registered in ``breakers`` (name -> breaker, read-only), the one
piece of global state here, for the CLI, health probes and metrics. With
``backend=stoic.state.RedisState(...)`` every process of a fleet shares opens and half-open
trials for breakers of the same name; see ``stoic.state``.

The package, by part: ``config`` (the frozen settings), ``windows`` (count and time windows
and their rings), ``machine`` (states, transitions, recording, admission), ``events`` (one
class per transition), ``registry`` (``breakers``), ``rejection`` (the cheap open error) and
``paths`` (``CircuitBreaker``: the call paths).
"""

from __future__ import annotations

from .config import BreakerConfig
from .events import (
    BreakerClosed,
    BreakerDisabled,
    BreakerForcedOpen,
    BreakerHalfOpened,
    BreakerOpened,
    BreakerTransitioned,
)
from .machine import BreakerState
from .paths import CircuitBreaker
from .registry import breakers, reset_breakers
from .windows import BreakerMetrics, CountWindow, TimeWindow

__all__ = [
    "BreakerClosed",
    "BreakerConfig",
    "BreakerDisabled",
    "BreakerForcedOpen",
    "BreakerHalfOpened",
    "BreakerMetrics",
    "BreakerOpened",
    "BreakerState",
    "BreakerTransitioned",
    "CircuitBreaker",
    "CountWindow",
    "TimeWindow",
    "breakers",
    "reset_breakers",
]

#: The old name of ``reset_breakers`` (tests written before the package split call it).
_reset_registry = reset_breakers

"""Backoff schedules for ``Retry``: ``constant``, ``linear``, ``exponential``.

Re-exported from ``stoic.policies.backoff`` so users write ``stoic.backoff.exponential(...)``.
"""

from .policies.backoff import Backoff, constant, exponential, linear

__all__ = ["Backoff", "constant", "exponential", "linear"]

"""Pipeline: policies composed once, outermost first.

``Pipeline(Retry(...), CircuitBreaker(...), Timeout(2))`` retries around a breaker around a
per-attempt timeout. The steps are folded from the inside out at construction, so a call
walks prebuilt closures and no per-call composition happens.
"""

from __future__ import annotations

from .base import AsyncStep, Policy, Step

__all__ = ["Pipeline"]


class Pipeline(Policy):
    """Compose ``policies``, the first one outermost. A Pipeline is itself a policy."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ValueError("policies must name at least one policy")
        for index, policy in enumerate(policies):
            if not isinstance(policy, Policy):
                raise ValueError(f"policies[{index}] must be a stoic policy, got {policy!r}")
        self.policies = policies
        self._compose()

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.policies))})"

    def wrap(self, inner: Step) -> Step:
        for policy in reversed(self.policies):
            inner = policy.wrap(inner)
        return inner

    def awrap(self, inner: AsyncStep) -> AsyncStep:
        for policy in reversed(self.policies):
            inner = policy.awrap(inner)
        return inner

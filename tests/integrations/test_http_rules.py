"""The shared HTTP rules: breaker names, idempotent policy variants (no I/O here)."""

from __future__ import annotations

import pytest

import stoic
from stoic.integrations._http import HostPolicies, host_name, idempotent_variant


@pytest.mark.parametrize(
    ("scheme", "host", "port", "name"),
    [
        ("http", "api.internal", None, "http:api.internal"),
        ("http", "api.internal", 80, "http:api.internal"),
        ("https", "api.internal", 443, "http:api.internal"),
        ("https", "api.internal", 8443, "http:api.internal:8443"),
        ("http", "127.0.0.1", 8001, "http:127.0.0.1:8001"),
    ],
)
def test_breaker_name_is_http_host_with_a_non_default_port(
    scheme: str, host: str, port: int | None, name: str
) -> None:
    assert host_name(scheme, host, port) == name


def test_idempotent_variant_marks_every_retry_in_a_pipeline_and_leaves_the_original() -> None:
    retry = stoic.Retry(attempts=2)
    timeout = stoic.Timeout(1.0)
    pipeline = stoic.Pipeline(retry, timeout)
    variant = idempotent_variant(pipeline)
    assert isinstance(variant, stoic.Pipeline)
    inner_retry, inner_timeout = variant.policies
    assert isinstance(inner_retry, stoic.Retry) and inner_retry.idempotent
    assert inner_retry.attempts == 2
    assert inner_timeout is timeout
    assert not retry.idempotent


def test_idempotent_variant_of_an_idempotent_retry_is_itself() -> None:
    retry = stoic.Retry(idempotent=True)
    assert idempotent_variant(retry) is retry


def test_idempotent_copy_retries_unknown_failures_and_the_original_does_not() -> None:
    retry = stoic.Retry(attempts=2, backoff=stoic.backoff.constant(0))
    calls = 0

    def lost_reply() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionResetError("reset by peer")

    with pytest.raises(ConnectionResetError):
        retry.call(lost_reply)
    assert calls == 1
    with pytest.raises(ConnectionResetError):
        idempotent_variant(retry).call(lost_reply)
    assert calls == 3


def test_host_policies_reuse_a_breaker_registered_under_the_host_name() -> None:
    mine = stoic.CircuitBreaker("http:shared.internal")
    hosts = HostPolicies(breaker=None, bulkhead=None)
    assert hosts.get("http:shared.internal") is mine
    other = hosts.get("http:other.internal")
    assert isinstance(other, stoic.CircuitBreaker) and other.name == "http:other.internal"
    assert stoic.breakers["http:other.internal"] is other

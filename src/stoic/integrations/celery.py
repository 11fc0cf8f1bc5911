"""Celery tasks that retry by stoic's rules, run once per idempotency key, and carry deadlines.

    @app.task(base=StoicTask, bind=True, retry_policy=stoic.Retry(max_attempts=5), idempotent=False)
    def charge(self, order_id): ...

    with stoic.deadline(30):
        charge.apply_async(("o-1",), idempotency_key="charge-o-1")

Celery's ``autoretry_for`` retries by exception type, the same way for every cause. A
``StoicTask`` asks ``stoic.Retry`` instead (``Retry.next_delay``, the very decision a
``Retry`` makes in a call): PERMANENT failures are never retried; UNKNOWN ones (the charge
may have gone through) only when the task is marked ``idempotent`` or carries an
idempotency key; TRANSIENT and THROTTLED ones after the policy's backoff, at least the
``Retry-After`` an error carries, within the policy's attempts, ``max_time`` (counted from
the first attempt, across retries) and retry budget. The retry is Celery's own
(``self.retry(countdown=...)``), so it survives a worker restart.

Sending from inside ``stoic.deadline`` stamps the task with the deadline (wall-clock
seconds, header ``stoic_deadline_at``) and Celery's ``expires``: a worker that gets the task
after the deadline does not run it, and a task that runs does so inside ``stoic.deadline``,
so its own calls (HTTP, database) stop in time and no retry is scheduled past it. The bound
``request_id`` travels too (``stoic_request_id``) and is bound while the task runs.

``idempotency_key`` (an ``apply_async`` option, or the ``idempotency_key`` header sent by
any producer) marks the task's outcome as safe to retry. With a ``store`` on the task class,
the task body runs once per key (``stoic.idempotent``): a duplicate delivery, or a second
send with the same key, gets the first run's result without running. Results must be JSON.

``breaker``, when set on the task class, is a policy (a ``stoic.CircuitBreaker``, a
``Bulkhead``, a ``Pipeline``) around each run: while it is open the task is not run and is
retried after the breaker's ``retry_after``.

``CeleryPublisher`` publishes a stoic ``Outbox``'s rows to Celery for ``OutboxRelay``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import celery  # type: ignore[import-untyped, import-not-found, unused-ignore]
from celery import exceptions as celery_exceptions  # type: ignore[import-untyped, import-not-found, unused-ignore]

from .. import context
from ..context import bind, deadline, remaining, using_idempotency_key
from ..errors import DeadlineExceeded
from ..outcome import Outcome
from ..policies.base import Policy
from ..policies.retry import Retry

__all__ = [
    "DEADLINE_HEADER",
    "FIRST_ATTEMPT_HEADER",
    "IDEMPOTENCY_HEADER",
    "REQUEST_ID_HEADER",
    "CeleryPublisher",
    "StoicTask",
]

#: Wall-clock seconds (``time.time()``) by which the task must have finished.
DEADLINE_HEADER = "stoic_deadline_at"
#: The task's idempotency key: its outcome is safe to retry, and with a store it runs once.
IDEMPOTENCY_HEADER = "idempotency_key"
#: The request id bound when the task was sent.
REQUEST_ID_HEADER = "stoic_request_id"
#: Wall-clock seconds of the first send, for ``Retry.max_time`` across retries.
FIRST_ATTEMPT_HEADER = "stoic_first_attempt_at"

# Celery's own control-flow exceptions: never a failure to classify.
_CONTROL = (celery_exceptions.Retry, celery_exceptions.Ignore, celery_exceptions.Reject)


def _header(request: Any, name: str) -> Any:
    headers = getattr(request, "headers", None)
    if isinstance(headers, Mapping) and name in headers:
        return headers[name]
    return getattr(request, name, None)


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class StoicTask(celery.Task):  # type: ignore[misc]
    """A Celery task base: stoic's retry decision, deadlines, idempotency keys, a breaker.

    Set these as task options (``@app.task(base=StoicTask, retry_policy=...)``) or on a
    subclass:

    - ``retry_policy``: the ``stoic.Retry`` deciding retries (default: 3 attempts,
      exponential backoff from 0.1 s capped at 5 s, full jitter).
    - ``idempotent``: the task may run twice with the same effect, so UNKNOWN failures are
      retried even without a key.
    - ``store``: an idempotency store (``stoic.idempotency.RedisStore``...): a keyed task
      runs once per key. ``idempotency_ttl`` and ``idempotency_lease`` as ``ttl`` and
      ``lease`` of ``stoic.idempotent``.
    - ``breaker``: a policy around each run (see the module docstring).
    """

    abstract = True
    retry_policy: Retry | None = None
    idempotent: bool = False
    store: Any = None
    idempotency_ttl: float = 86400.0
    idempotency_lease: float = 300.0
    breaker: Policy | None = None

    _stoic_policy: Retry | None = None
    _stoic_once: Any = None

    # --- sending ------------------------------------------------------------------------

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: Any = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: Any = None, **options: Any) -> Any:
        """Celery's ``apply_async``, plus ``idempotency_key=`` and the deadline and request id
        of the sending context. Refused with ``DeadlineExceeded`` once the deadline passed."""
        headers = dict(options.pop("headers", None) or {})
        key = options.pop("idempotency_key", None)
        if key is not None:
            if not isinstance(key, str) or not key:
                raise ValueError(f"idempotency_key must be a non-empty str, got {key!r}")
            headers[IDEMPOTENCY_HEADER] = key
        left = remaining()
        if left is not None:
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed before task {self.name} was sent; "
                                       f"it was not sent")
            now = time.time()
            at = _seconds(headers.get(DEADLINE_HEADER))
            if at is None or at > now + left:
                headers[DEADLINE_HEADER] = now + left
            if options.get("expires") is None:
                options["expires"] = left
        request_id = context.get("request_id")
        if request_id is not None:
            headers.setdefault(REQUEST_ID_HEADER, str(request_id))
        headers.setdefault(FIRST_ATTEMPT_HEADER, time.time())
        return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow,
                                   headers=headers, **options)

    # --- running ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        key = _header(request, IDEMPOTENCY_HEADER)
        if key is not None and not isinstance(key, str):
            key = str(key)
        at = _seconds(_header(request, DEADLINE_HEADER))
        left = None if at is None else at - time.time()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"task {self.name} arrived after its deadline; it was not run")
        with self._scope(request, key, left):
            try:
                return self._run(key, args, kwargs)
            except _CONTROL:
                raise
            except Exception as exc:
                first = _seconds(_header(request, FIRST_ATTEMPT_HEADER))
                elapsed = max(0.0, time.time() - first) if first is not None else 0.0
                delay = self._policy().next_delay((request.retries or 0) + 1, exc, elapsed=elapsed)
                if delay is None:
                    raise
                raise self.retry(exc=exc, countdown=delay, max_retries=None) from None

    @contextlib.contextmanager
    def _scope(self, request: Any, key: str | None, left: float | None) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(bind(request_id=_header(request, REQUEST_ID_HEADER)))
            if left is not None:
                stack.enter_context(deadline(left))
            if key is not None:
                stack.enter_context(using_idempotency_key(key))
            yield

    def _run(self, key: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        body = super().__call__
        if key is not None and self.store is not None:
            once = self._once()
            if self.breaker is None:
                return once.call(self._keyed, key, body, args, kwargs)
            return self.breaker.call(once.call, self._keyed, key, body, args, kwargs)
        if self.breaker is None:
            return body(*args, **kwargs)
        return self.breaker.call(body, *args, **kwargs)

    @staticmethod
    def _keyed(key: str, body: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return body(*args, **kwargs)

    def _policy(self) -> Retry:
        policy = self._stoic_policy
        if policy is None:
            policy = self.retry_policy
            if policy is None:
                policy = Retry(name=self.name)
            elif not isinstance(policy, Retry):
                raise ValueError(f"retry_policy of task {self.name} must be a stoic.Retry, got "
                                 f"{policy!r}")
            if self.idempotent and not policy.idempotent:
                policy = policy.replace(idempotent=True)
            type(self)._stoic_policy = policy
        return policy

    def _once(self) -> Any:
        once = self._stoic_once
        if once is None:
            from ..idempotency import Idempotent

            once = Idempotent(
                self.store, key=lambda key, body, args, kwargs: key,
                fingerprint=lambda key, body, args, kwargs: [list(args), kwargs],
                ttl=self.idempotency_ttl, lease=self.idempotency_lease,
                cache=(Outcome.SUCCESS, Outcome.PERMANENT), namespace=f"celery:{self.name}",
            )
            type(self)._stoic_once = once
        return once


class CeleryPublisher:
    """The publishing end of a broker, for ``OutboxRelay``: each row becomes a Celery task.

    The outbox topic is the task name; the row's payload is the task's single argument; the
    row id is the task id and its idempotency key, so a row relayed twice (the relay crashed
    between publishing and marking) runs once when the task is a ``StoicTask`` with a store.
    """

    def __init__(self, app: Any, **options: Any) -> None:
        if not isinstance(app, celery.Celery):
            raise ValueError(f"app must be a celery.Celery application, got {app!r}")
        self.app = app
        self.options = options

    def publish(self, topic: str, payload: Any, *, id: str | None = None,
                headers: Mapping[str, str] | None = None, delay: float = 0.0) -> str:
        """Send task ``topic`` with ``payload``; returns the task id."""
        from ..codec import decode
        from ..messaging.model import Encoded

        if isinstance(payload, Encoded):  # a stored outbox body: Celery needs the value
            payload = decode(payload.text)
        sent_headers = dict(headers or {})
        if id is not None:
            sent_headers.setdefault(IDEMPOTENCY_HEADER, id)
        result = self.app.send_task(
            topic, args=(payload,), task_id=id, headers=sent_headers,
            countdown=delay if delay > 0 else None, **self.options,
        )
        return str(result.id)

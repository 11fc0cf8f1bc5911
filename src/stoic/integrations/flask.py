"""A Flask extension: stoic's deadlines, request context and load shedding for a Flask app.

    app = Flask(__name__)
    app.config["STOIC_MAX_DEADLINE"] = 10.0
    Stoic(app, bulkhead=stoic.Bulkhead(32))

``Stoic`` wraps ``app.wsgi_app`` in ``stoic.integrations.wsgi.StoicMiddleware``, so every
request runs inside ``stoic.deadline`` (from ``X-Request-Timeout-Ms``), with its request id,
user id, service and version bound and its trace continued; a ``stoic.Rejected`` (a full
bulkhead, a dependency's open breaker) escaping a view is 503 with ``Retry-After``, a
``stoic.DeadlineExceeded`` 504. Flask turns a view's exceptions into a 500 before the
middleware sees them, so the extension registers error handlers giving these two answers.

Settings, from arguments or ``app.config``: ``STOIC_SERVICE`` (default: the app's name),
``STOIC_VERSION`` (default ``"0"``), ``STOIC_MAX_DEADLINE``, ``STOIC_DEADLINE_HEADER``,
``STOIC_REQUEST_ID_HEADER``. ``bulkhead``, ``user_id`` (``environ -> str | None``) and
``idempotency`` are arguments only: with an idempotency store, the app is also wrapped in
``stoic.integrations.wsgi.IdempotencyMiddleware`` (inside the deadline and shedding), so a
retried POST with the same ``Idempotency-Key`` runs once.
"""

from __future__ import annotations

from typing import Any

from ..errors import DeadlineExceeded, Rejected
from ..idempotency.store import Store
from ..policies.base import Policy
from .wsgi import IdempotencyMiddleware, StoicMiddleware, UserIdHook, refusal

__all__ = ["Stoic"]


def _refused(exc: Exception) -> Any:
    answer = refusal(exc)
    if answer is None:  # not registered for anything else
        raise exc
    status, text, retry_after = answer
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return text, status, headers


class Stoic:
    """The extension object: ``Stoic(app)`` or ``Stoic()`` then ``init_app(app)``.

    Args:
        app: the Flask application (or None, for ``init_app`` later).
        service, version, max_deadline: override the ``STOIC_*`` config values.
        bulkhead: a ``stoic.Bulkhead`` limiting concurrent requests.
        user_id: ``environ -> str | None``, the authenticated user for the context.
        idempotency: a ``stoic.idempotency`` store: honour ``Idempotency-Key`` on POST and
            PATCH (``IdempotencyMiddleware`` with its defaults).
    """

    def __init__(self, app: Any = None, *, service: str | None = None,
                 version: str | None = None, max_deadline: float | None = None,
                 bulkhead: Policy | None = None, user_id: UserIdHook | None = None,
                 idempotency: Store | None = None) -> None:
        self.service = service
        self.version = version
        self.max_deadline = max_deadline
        self.bulkhead = bulkhead
        self.user_id = user_id
        self.idempotency = idempotency
        self.middleware: StoicMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Wrap ``app.wsgi_app`` (configuration is read and validated now)."""
        config = app.config
        max_deadline = self.max_deadline
        if max_deadline is None:
            max_deadline = config.get("STOIC_MAX_DEADLINE")
        inner = app.wsgi_app
        if self.idempotency is not None:
            inner = IdempotencyMiddleware(inner, self.idempotency)
        self.middleware = StoicMiddleware(
            inner,
            self.service or config.get("STOIC_SERVICE") or app.name,
            self.version or config.get("STOIC_VERSION") or "0",
            config.get("STOIC_DEADLINE_HEADER", "X-Request-Timeout-Ms"),
            max_deadline,
            bulkhead=self.bulkhead,
            user_id=self.user_id,
            request_id_header=config.get("STOIC_REQUEST_ID_HEADER", "X-Request-ID"),
        )
        app.wsgi_app = self.middleware
        app.register_error_handler(Rejected, _refused)
        app.register_error_handler(DeadlineExceeded, _refused)
        app.extensions["stoic"] = self

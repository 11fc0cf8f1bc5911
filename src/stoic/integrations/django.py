"""Django middleware: stoic's deadlines, request context and load shedding, from settings.

    # settings.py
    MIDDLEWARE = ["stoic.integrations.django.StoicMiddleware", ...]   # first
    STOIC = {"SERVICE": "orders", "VERSION": "1.4.2", "MAX_DEADLINE": 10.0,
             "MAX_CONCURRENT": 32}

Each request runs inside ``stoic.deadline`` (from ``X-Request-Timeout-Ms``, capped by
``MAX_DEADLINE``), with ``request_id`` (from ``X-Request-ID`` or new, echoed in the
response), ``user_id`` (``USER_ID``: a callable or dotted path taking the ``request.META``
environ), ``service`` and ``version`` bound and the caller's trace continued, exactly as
``stoic.integrations.wsgi.StoicMiddleware`` does. A request that arrives with no time left is
answered 504 without running the view; with ``MAX_CONCURRENT`` a full server answers 503 with
``Retry-After``; a ``stoic.Rejected`` raised by a view (a dependency's open breaker) is 503
with ``Retry-After`` and a ``stoic.DeadlineExceeded`` 504, not a 500.

Settings keys (all optional but ``SERVICE``): ``SERVICE``, ``VERSION`` (default ``"0"``),
``MAX_DEADLINE``, ``SHED_WHEN_EXPIRED``, ``MAX_CONCURRENT``, ``DEADLINE_HEADER``,
``REQUEST_ID_HEADER``, ``USER_ID``.
"""

from __future__ import annotations

import contextvars
from typing import Any

from .. import context
from ..errors import Rejected
from .wsgi import Arrival, Edge, refusal

__all__ = ["StoicMiddleware"]

_KEYS = frozenset({"SERVICE", "VERSION", "MAX_DEADLINE", "SHED_WHEN_EXPIRED", "MAX_CONCURRENT",
                   "DEADLINE_HEADER", "REQUEST_ID_HEADER", "USER_ID"})


def _edge(config: Any) -> Edge:
    if not isinstance(config, dict):
        raise ValueError(f"settings.STOIC must be a dict, got {config!r}")
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ValueError(f"settings.STOIC has unknown key {unknown[0]!r}; known: "
                         f"{', '.join(sorted(_KEYS))}")
    user_id = config.get("USER_ID")
    if isinstance(user_id, str):
        from django.utils.module_loading import import_string

        user_id = import_string(user_id)
    bulkhead = None
    if config.get("MAX_CONCURRENT") is not None:
        from ..policies.bulkhead import Bulkhead

        bulkhead = Bulkhead(config["MAX_CONCURRENT"], name="django")
    return Edge(
        config.get("SERVICE", ""), config.get("VERSION", "0"),
        config.get("DEADLINE_HEADER", "X-Request-Timeout-Ms"), config.get("MAX_DEADLINE"),
        config.get("SHED_WHEN_EXPIRED", True), bulkhead, user_id,
        request_id_header=config.get("REQUEST_ID_HEADER", "X-Request-ID"),
    )


class StoicMiddleware:
    """A Django middleware configured by ``settings.STOIC`` (read and validated at start-up)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        from django.conf import settings

        self.get_response = get_response
        self.edge = _edge(getattr(settings, "STOIC", {}))

    def __call__(self, request: Any) -> Any:
        arrival = Arrival(self.edge, request.META)
        if arrival.expired:
            return self._answer(arrival.request_id, 504,
                                "deadline exceeded before the request was handled")
        scope = contextvars.copy_context()  # the request's own context, as in the WSGI twin
        return scope.run(self._handle, request, arrival)

    def _handle(self, request: Any, arrival: Arrival) -> Any:
        self.edge.enter(request.META, arrival)
        bulkhead = self.edge.bulkhead
        try:
            if bulkhead is None:
                response = self.get_response(request)
            else:
                response = bulkhead.call(self.get_response, request)
        except Rejected as exc:
            return self.process_exception(request, exc)
        response[self.edge.request_id_header] = arrival.request_id
        return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A view's ``Rejected`` is 503 with ``Retry-After``, its ``DeadlineExceeded`` 504."""
        answer = refusal(exception)
        if answer is None:
            return None
        status, text, retry_after = answer
        # runs inside the request's context: the view's exception, or the bulkhead's refusal
        return self._answer(context.get("request_id", ""), status, text, retry_after)

    def _answer(self, request_id: str, status: int, text: str,
                retry_after: int | None = None) -> Any:
        from django.http import HttpResponse

        response = HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")
        response[self.edge.request_id_header] = request_id
        if retry_after is not None:
            response["Retry-After"] = str(retry_after)
        return response

"""URLs of the Django project the integration tests serve (views in ``test_wsgi``'s terms)."""

from __future__ import annotations

import json
import time
from typing import Any

from django.http import HttpResponse
from django.urls import path

import stoic

HITS: list[dict[str, Any]] = []
DOWNSTREAM: dict[str, Any] = {}


def seen(request: Any) -> HttpResponse:
    HITS.append({"path": request.path})
    return HttpResponse(json.dumps({
        "remaining": stoic.remaining(), "request_id": stoic.context.get("request_id"),
        "user_id": stoic.context.get("user_id"),
    }), content_type="application/json")


def slow(request: Any) -> HttpResponse:
    HITS.append({"path": request.path})
    time.sleep(float(request.GET.get("s", "0.5")))
    return HttpResponse(b"slow")


def missing(request: Any) -> HttpResponse:
    HITS.append({"path": request.path})
    return HttpResponse(b"no such order", status=404)


def calls_down(request: Any) -> HttpResponse:
    HITS.append({"path": request.path})
    response = DOWNSTREAM["client"].get(DOWNSTREAM["url"])
    return HttpResponse(response.content, status=response.status_code)


CHARGES: list[bytes] = []


def pay(request: Any) -> HttpResponse:
    CHARGES.append(request.body)
    time.sleep(0.6)  # the charge is made; a client with a short timeout loses this reply
    return HttpResponse(json.dumps({"charged": len(CHARGES)}), status=201,
                        content_type="application/json")


def late(request: Any) -> HttpResponse:
    raise stoic.DeadlineExceeded("the view ran out of time")


urlpatterns = [
    path("seen", seen), path("slow", slow), path("missing", missing),
    path("down", calls_down), path("late", late), path("pay", pay),
]

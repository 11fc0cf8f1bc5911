"""stoic inside the HTTP libraries you already use.

- ``stoic.integrations.httpx``: ``ResilientTransport`` / ``ResilientAsyncTransport`` (extra
  ``stoic[http]``); ``stoic.http.Client`` / ``AsyncClient`` wrap them with defaults.
- ``stoic.integrations.requests``: ``ResilientAdapter`` to mount on a ``requests.Session``.
- ``stoic.integrations.asgi``: ``StoicMiddleware`` for Starlette, FastAPI or any ASGI app
  (extra ``stoic[asgi]``): incoming deadlines, request context, load shedding.
- ``stoic.integrations.aiohttp``: ``ResilientMiddleware`` for ``aiohttp.ClientSession``.
- ``stoic.integrations.grpc``: client and server interceptors, sync and ``grpc.aio``.
- ``stoic.integrations.wsgi``, ``.flask``, ``.django``: the server side for WSGI apps.
- ``stoic.integrations.celery``: ``StoicTask``, a task base class, and ``CeleryPublisher``.
- ``stoic.integrations.psycopg``, ``.sqlalchemy``, ``.sqlite``, ``.redis``: deadlines that
  reach the database and the queue.

Each module imports its library; this package imports none, so import the module you need.
"""

__all__: list[str] = []

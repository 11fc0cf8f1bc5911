"""A TCP fault proxy whose HTTP control API is compatible with Toxiproxy 2.x.

Existing Toxiproxy clients (``toxiproxy-python``, ``chaostoolkit-toxiproxy``, the Go client)
drive it unchanged: the same routes, JSON shapes, status codes and toxics
(see ``stoic.chaos.toxics``). It is asyncio, with h11 parsing the API's HTTP:

* ``stoic proxy`` (``stoic.chaos.cli``) serves the API on 127.0.0.1:8474 like Toxiproxy;
* ``ProxyServer`` runs the same server on a background thread, for tests and demos::

    with ProxyServer() as server:                       # API on a free port
        db = server.create("db", upstream="127.0.0.1:5432")
        connect(port=db.port)                           # through the proxy
        with db.toxic("latency", latency=200):          # every chunk 200 ms late
            ...

* ``ProxyClient`` drives a running one over HTTP (standard library only).

The parts, one module each: ``pipes`` (the TCP data path: connections, pipes, the no-toxic
fast path), ``model`` (proxies and the operations on them), ``routes`` (the Toxiproxy routes),
``server`` (the HTTP API on h11), ``client`` (``ProxyClient``, ``ProxyHandle``) and
``background`` (``ProxyServer``).
"""

from __future__ import annotations

from .background import ProxyServer
from .client import ProxyClient, ProxyControl, ProxyHandle
from .model import ApiError, Collection, Proxy
from .routes import TOXIPROXY_VERSION, dispatch
from .server import serve, start_api

__all__ = [
    "TOXIPROXY_VERSION",
    "ApiError",
    "Collection",
    "Proxy",
    "ProxyClient",
    "ProxyControl",
    "ProxyHandle",
    "ProxyServer",
    "dispatch",
    "serve",
    "start_api",
]

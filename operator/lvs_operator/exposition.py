"""Serving a Prometheus registry over HTTP: /metrics, /healthz, 404 elsewhere. Imports no
other module of the package; the agent and the keepalived container both serve with it.

prometheus_client's own `start_http_server` serves the metrics at every path and has no
health endpoint; this wraps the library's WSGI app (`make_wsgi_app`) and its threading
server instead of writing either anew.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from wsgiref import simple_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import prometheus_client
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

Health = Callable[[], str]
"""() -> "" while healthy, else why not (the 503 answer of /healthz)."""


def serve(host: str, port: int, registry: prometheus_client.CollectorRegistry, *,
          health: Health = lambda: "") -> simple_server.WSGIServer:
    """Serve `registry` at http://host:port/metrics and `health` at /healthz, from a
    thread ("" for `host`: every address; a host with ':' is IPv6).

    Returns:
        The running server; `shutdown()` and `server_close()` it to stop.

    Raises:
        OSError: when the address cannot be bound.
    """
    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = simple_server.make_server(
        host, port, app(prometheus_client.make_wsgi_app(registry), health), Server, _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def app(metrics_app: WSGIApplication, health: Health = lambda: "") -> WSGIApplication:
    """Return a WSGI app that hands /metrics to `metrics_app`, answers /healthz with 200 or
    503 (from `health`), and 404s the rest (the library's app would serve the metrics at
    any path)."""

    def answer(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return list(metrics_app(environ, start_response))
            except Exception as e:  # a failed scrape answers why, instead of wsgiref's 500
                log.exception("metrics collection failed")
                return _text(start_response, "500 Internal Server Error",
                             f"collecting metrics failed: {e}\n")
        if path == "/healthz":
            problem = health()
            if problem:
                return _text(start_response, "503 Service Unavailable", f"{problem}\n")
            return _text(start_response, "200 OK", "ok\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics\n")

    return answer


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _Handler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)

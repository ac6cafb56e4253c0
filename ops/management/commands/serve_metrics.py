"""Serve this host's process metrics on a port of their own, for hosts that run workers but no web process (robot
hosts, the GPU learner host: README "Running it on several hosts"). The web process's /metrics serves its own host's
processes and the fleet's facts; this serves the per-process files under METRICS_DIR only, under the same rule:
METRICS_ALLOWED_NETWORKS or `Authorization: Bearer METRICS_TOKEN`."""
from __future__ import annotations

from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.core.management.base import BaseCommand

from ops.access import monitoring_client


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # one line per scrape would drown the worker logs
        pass


def application():
    from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

    from core import metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics.DIRECTORY))
    inner = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        if not monitoring_client(environ):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"/metrics answers only METRICS_ALLOWED_NETWORKS or a METRICS_TOKEN bearer\n"]
        metrics.forget_dead_processes()
        return inner(environ, start_response)

    return app


class Command(BaseCommand):
    help = "Serve this host's per-process metrics (METRICS_DIR) at http://HOST:PORT/metrics"

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9464)

    def handle(self, *args, host, port, **options):
        if not settings.METRICS_ENABLED:
            self.stderr.write("metrics are off (METRICS_ENABLED=false): nothing to serve")
            return
        server = make_server(host, port, application(), server_class=_Server, handler_class=_QuietHandler)
        self.stdout.write(f"serving {settings.METRICS_DIR} at http://{host}:{port}/metrics")
        self.stdout.flush()
        server.serve_forever()

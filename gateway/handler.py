"""The robot API's ASGI handler: Django's request cycle in synchronous mode, one pooled-thread hop per request.

Django's ASGIHandler runs a synchronous project asynchronously: the request_started signal, each middleware's
request and response halves, the view and the response's close each cross from the event loop to a thread and back,
and the thread is started for that request (asgiref's ThreadSensitiveContext gives each request an executor of its
own). Every robot endpoint is synchronous (the ORM, Redis, the group-commit writer), so this handler reads the body
on the event loop as Django's does, then runs signal, middleware chain and view together on one thread of a pool
that lives as long as the process, and sends the response from the event loop. Uploads from several robots still
run side by side, so group commit still collects them (fleet.group_commit).

What it gives up: Django cancels an async view when its client disconnects; a synchronous view runs to its end
either way, here as before.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.test.utils import override_settings
from django.urls import set_script_prefix

log = logging.getLogger(__name__)


def _threads() -> int:
    """One fewer than the web process's database pool has connections, so the group-commit writer always finds one
    (an upload gives its own back before it waits on the writer); 8 when nothing pools."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    return max(1, pool.get("max_size", 8) - 1) if isinstance(pool, dict) else 8


class RobotApiHandler(ASGIHandler):
    # Each in the synchronous chain costs a function call, not a hop. Common: the Host header against
    # ALLOWED_HOSTS; X-Frame-Options and CSP: for the browsable docs at /api/v1/docs. Sessions, CSRF,
    # authentication, messages and login required mean nothing to a robot that authenticates with its token.
    middleware = ["django.middleware.security.SecurityMiddleware", "django.middleware.common.CommonMiddleware",
                  "django.middleware.clickjacking.XFrameOptionsMiddleware", "csp.middleware.CSPMiddleware"]

    def __init__(self):
        super().__init__()
        self._pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="robot-api")

    def load_middleware(self, is_async=False):
        with override_settings(MIDDLEWARE=self.middleware):
            super().load_middleware(is_async=False)  # the synchronous chain: no hop between middleware and view

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        job = self._pool.submit(self._respond, scope, body_file)
        try:
            response = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The server is shutting down: a view already running goes on reading the body, so it is closed when
            # the view is done (at once when the view never started).
            job.add_done_callback(lambda _: body_file.close())
            raise
        except BaseException:
            body_file.close()
            raise
        try:
            await self.send_response(response, send)
        finally:
            body_file.close()
            if response.streaming:  # read as it is sent: closed after, on whichever pool thread is free
                await asyncio.get_running_loop().run_in_executor(self._pool, response.close)

    def _respond(self, scope, body_file):
        # On this thread: a pool thread does not share the event loop's context (the prefix is context-local).
        set_script_prefix(get_script_prefix(scope))
        try:
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            response = error_response if request is None else self.get_response(request)
        except BaseException:
            close_old_connections()  # request_finished will not come: this thread's connection goes back now
            raise
        response._handler_class = self.__class__
        if response.streaming:
            # Closed only after it is sent, maybe by another thread: this thread's connection goes back now.
            close_old_connections()
            return response
        # Its content is in memory: closed now, on this thread (request_finished gives the thread's database
        # connection back to the pool), rather than by a second hop after it is sent. A receiver that fails does
        # not turn an answer given (an upload stored) into a server error.
        try:
            response.close()
        except Exception:
            log.exception("closing a robot API response failed")
            close_old_connections()
        return response

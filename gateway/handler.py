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
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse
from django.test.utils import override_settings
from django.urls import set_script_prefix


def _threads() -> int:
    """As many as the web process's database pool has connections, and at least 8 (a request waiting on the
    group-commit writer gives its connection back first)."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    return max(8, pool.get("max_size", 8) if isinstance(pool, dict) else 8)


class RobotApiHandler(ASGIHandler):
    # Only the security middleware: sessions, CSRF, authentication, messages and login required mean nothing to a
    # robot that authenticates with its token.
    middleware = ["django.middleware.security.SecurityMiddleware"]

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
        set_script_prefix(get_script_prefix(scope))
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self._pool, self._respond, scope, body_file)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client went away while the response was sent
            finally:
                if response.streaming:  # its content is read as it is sent: closed after
                    await loop.run_in_executor(self._pool, response.close)
        finally:
            body_file.close()

    def _respond(self, scope, body_file):
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            error_response.close()
            return error_response
        response = self.get_response(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size  # the server chunks the body itself
        if not response.streaming:
            # Its content is in memory: closed now, on this thread (request_finished gives the thread's database
            # connection back to the pool), rather than by a second hop after it is sent.
            response.close()
        return response

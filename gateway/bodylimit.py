"""The robot API's body limit at the ASGI boundary: Django's ASGI handler reads a whole request body (to memory, then
to a temporary file) before any view runs, so a limit checked in a view is paid for in bytes received and disk
written. This wrapper answers 413 before a body is read when its Content-Length is over the limit, and stops a
body sent without one (chunked) as soon as it streams past the limit.

The limit is API_MAX_EPISODE_BYTES, the largest body any robot endpoint takes (an episode upload); the view keeps
its own check for what reaches it by other roads (Django's test client)."""
from __future__ import annotations

import json

from django.conf import settings


async def _answer(send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    # Connection: close, since the rest of the body is never read: the connection cannot carry another request.
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        cap = settings.API_MAX_EPISODE_BYTES
        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _answer(send, 400, "bad_request", "Content-Length is not a number")
            if declared > cap:
                return await _answer(send, 413, "too_large",
                                     f"the request body is {declared} bytes; the robot API takes at most {cap}")
        # Counted whatever the length says: a server that follows chunked framing despite a Content-Length (h11
        # does) would otherwise let a body stream past it.
        received, refused = 0, False

        async def counted():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > cap:
                    refused = True
                    await _answer(send, 413, "too_large",
                                  f"the request body streamed past {cap} bytes, the most the robot API takes")
                    # Django's handler stops reading and answers nothing when the client has gone.
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

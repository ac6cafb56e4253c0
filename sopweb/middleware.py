"""Middleware of the robot API's handler (sopweb.asgi)."""
from __future__ import annotations

from django.middleware.security import SecurityMiddleware


class SecurityHeadersOnTheLoop(SecurityMiddleware):
    """Django's SecurityMiddleware (the HTTPS redirect, HSTS, nosniff, referrer and opener policies), with its two
    hooks run on the event loop. They only read settings and set headers; under ASGI, MiddlewareMixin runs each in
    a thread hop of its own, two per request, which a robot's upload paid in CPU (bench/api_ingest.py)."""

    async def __acall__(self, request):
        response = self.process_request(request) or await self.get_response(request)
        return self.process_response(request, response)

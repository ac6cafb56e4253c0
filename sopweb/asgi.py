import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")
os.environ.setdefault("DATABASE_POOL", "1")  # the web process borrows connections from a pool (settings.py)
# Django must be set up before the consumers (and the models they import) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

import fleet.routing  # noqa: E402
import gateway.routing  # noqa: E402
from gateway.bodylimit import BodyLimit  # noqa: E402
from gateway.handler import RobotApiHandler  # noqa: E402

# The robot API gets a handler of its own (gateway.handler): a short synchronous middleware chain, signal and view
# on one pooled thread per request, where Django's ASGI handler pays a thread hop for each of them on a thread started
# for the request; the people's stack (sessions, CSRF, authentication, messages, login required) means nothing to a
# robot that authenticates with its token (bench/api_ingest.py).
API_MIDDLEWARE = RobotApiHandler.middleware


# An oversized body is refused before Django's handler reads it (gateway.bodylimit).
robot_api_app = BodyLimit(RobotApiHandler())


async def http_app(scope, receive, send):
    app = robot_api_app if scope["path"].startswith("/api/v1/") else django_asgi_app
    await app(scope, receive, send)

# People's sockets carry a session cookie, so their Origin must be ours; robots' sockets carry a token instead (no
# cookie, so no cross-site request to forge) and robots send no Origin.
people = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(fleet.routing.websocket_urlpatterns)))
application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": URLRouter([*gateway.routing.websocket_urlpatterns, re_path(r"", people)]),
    }
)

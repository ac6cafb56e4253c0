import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")
# Django must be set up before the consumers (and the models they import) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

import fleet.routing  # noqa: E402
import gateway.routing  # noqa: E402

# People's sockets carry a session cookie, so their Origin must be ours; robots' sockets carry a token instead (no
# cookie, so no cross-site request to forge) and robots send no Origin.
people = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(fleet.routing.websocket_urlpatterns)))
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([*gateway.routing.websocket_urlpatterns, re_path(r"", people)]),
    }
)

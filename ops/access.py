"""Who may read the monitoring endpoints without a login (/metrics, /readyz's reasons, serve_metrics)."""
from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings


def monitoring_client(meta) -> bool:
    """A client in METRICS_ALLOWED_NETWORKS, or one presenting `Authorization: Bearer METRICS_TOKEN` (compared in
    constant time). `meta`: a request's META or a WSGI environ (the same keys)."""
    token = settings.METRICS_TOKEN
    presented = meta.get("HTTP_AUTHORIZATION", "")
    if token and presented.startswith("Bearer ") and hmac.compare_digest(presented[7:].strip().encode(),
                                                                          token.encode()):
        return True
    try:
        address = ipaddress.ip_address(meta.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)

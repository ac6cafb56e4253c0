"""Demo mode: the rule that keeps accounts with known passwords off anything but a demo on one's own machine.

- `seed_demo` creates the demo accounts (and marks them: `DemoAccount`) only in demo mode (SOPWEB_DEMO=1, which
  `make demo` sets); outside it, it refuses.
- `python -m sopweb.web` refuses to start (exit status 2, with the reason) when
  1. demo mode is on and the host it would listen on is not a loopback address (127.0.0.0/8, ::1, localhost), or
  2. demo mode is off and an active demo account exists (whatever DEBUG says).
  `manage.py retire_demo_accounts` deactivates them (audited), after which the server starts without demo mode.
"""
from __future__ import annotations

import ipaddress
import os

from django.conf import settings

# username -> (group, is superuser, is staff). The supervisor is staff: they edit the failure-mode taxonomy in the
# admin (their group's permissions decide what else the admin shows them).
DEMO_USERS = {
    "operator": ("operators", False, False),
    "supervisor": ("supervisors", False, True),
    "annotator": ("annotators", False, False),
    "admin": (None, True, True),
}


class DemoModeRequired(Exception):
    """Demo accounts were asked for outside demo mode."""


def demo_password(username: str) -> str:
    """A demo account's password: `<username>-demo`, or SOPWEB_DEMO_PASSWORD for all of them."""
    return os.environ.get("SOPWEB_DEMO_PASSWORD") or f"{username}-demo"


def require_demo_mode(what: str) -> None:
    if not settings.DEMO_MODE:
        raise DemoModeRequired(
            f"{what} creates accounts with known passwords and runs only in demo mode: set SOPWEB_DEMO=1 "
            "(make demo does), on a machine that serves only itself")


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def active_demo_accounts() -> list[str]:
    from accounts.models import DemoAccount

    return sorted(DemoAccount.objects.filter(user__is_active=True).values_list("user__username", flat=True))


def web_start_problem(host: str) -> str | None:
    """Why the web process must not start listening on `host`, or None (the rule is in this module's docstring)."""
    if settings.DEMO_MODE:
        if not is_loopback(host):
            return (f"demo mode (SOPWEB_DEMO) serves only on a loopback address, not on {host!r}: its accounts' "
                    "passwords are printed and known. Listen on 127.0.0.1, or leave demo mode: unset SOPWEB_DEMO "
                    "and run `python manage.py retire_demo_accounts`.")
        return None
    names = active_demo_accounts()
    if names:
        return (f"demo accounts with known passwords are active ({', '.join(names)}) and demo mode is off. "
                "Deactivate them with `python manage.py retire_demo_accounts` (or on the Users page), or run the "
                "demo with SOPWEB_DEMO=1 on 127.0.0.1 (make demo).")
    return None

"""Accounts on the real stack: the web command's demo rule, login lockouts through the real server (both login
pages, addresses from a trusted proxy)."""
from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.utils import timezone
from django.utils.crypto import get_random_string

from accounts.models import DemoAccount
from tests.conftest import PASSWORD, ROOT, free_port, make_user, process_env

pytestmark = pytest.mark.e2e


def server_password(*users) -> None:
    """The server keeps Django's default hashers: give it a PBKDF2 hash it can check (few iterations)."""
    for user in users:
        user.password = PBKDF2PasswordHasher().encode(PASSWORD, get_random_string(12), iterations=1000)
        user.save(update_fields=["password"])


def csrf_token(http: httpx.Client, path: str) -> str:
    page = http.get(path)
    assert page.status_code == 200, (path, page.status_code)
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


def attempt(server, path: str, username: str, password: str, address: str | None = None) -> httpx.Response:
    """One login through the real form at `path` (/login/ or /admin/login/), from `address` as a proxy in front of
    the server would say it (X-Forwarded-For), in a fresh browser."""
    headers = {"X-Forwarded-For": address} if address else {}
    with httpx.Client(base_url=f"http://{server.address}", headers=headers, timeout=30) as http:
        token = csrf_token(http, path)
        return http.post(path, data={"username": username, "password": password, "csrfmiddlewaretoken": token,
                                     "next": "/admin/" if path.startswith("/admin/") else "/"})


def locked(response: httpx.Response, minutes: int) -> bool:
    """The site's lockout page (not axes' bare text), saying how long to wait."""
    wait = f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    return response.status_code == 429 and "<h1>Login locked</h1>" in response.text and wait in response.text


def logged_in(response: httpx.Response) -> bool:
    return response.status_code == 302


# --- the web command's demo rule -----------------------------------------------------------------------------------


def run_web(host: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sopweb.web", "--host", host, "--port", str(free_port())],
                          cwd=ROOT, env=process_env(**env), capture_output=True, text=True, timeout=120)


def test_the_web_command_refuses_demo_accounts_outside_demo_mode_and_demo_mode_beyond_loopback(transactional_db):
    DemoAccount.objects.create(user=make_user("operator", "operators"))
    refused = run_web("127.0.0.1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refusing to start: demo accounts with known passwords are active (operator)" in refused.stderr
    refused = run_web("0.0.0.0", SOPWEB_DEMO="1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "demo mode (SOPWEB_DEMO) serves only on a loopback address, not on '0.0.0.0'" in refused.stderr


# --- login lockouts -------------------------------------------------------------------------------------------------


def test_an_account_is_locked_after_failures_from_any_addresses_on_both_login_pages(start_web, olivia, anna):
    root = User.objects.create_superuser("root", password=PASSWORD)
    server_password(olivia, anna, root)
    server = start_web(LOGIN_FAILURE_LIMIT=3, LOGIN_LOCKOUT_MINUTES=10)
    # Three wrong passwords for olivia, each from another address, on either login page.
    assert attempt(server, "/login/", "olivia", "wrong-1", "203.0.113.1").status_code == 200
    assert attempt(server, "/admin/login/", "olivia", "wrong-2", "203.0.113.2").status_code == 200
    assert locked(attempt(server, "/login/", "olivia", "wrong-3", "203.0.113.3"), 10)
    # The account is locked from any address and on both pages, even with the right password...
    assert locked(attempt(server, "/login/", "olivia", PASSWORD, "203.0.113.9"), 10)
    assert locked(attempt(server, "/admin/login/", "olivia", PASSWORD, "203.0.113.10"), 10)
    # ...while others log in from those addresses.
    assert logged_in(attempt(server, "/login/", "anna", PASSWORD, "203.0.113.9"))
    assert logged_in(attempt(server, "/admin/login/", "root", PASSWORD, "203.0.113.3"))
    # Once the cool-off has passed since the last attempt, the right password works again.
    from axes.models import AccessAttempt

    AccessAttempt.objects.filter(username="olivia").update(attempt_time=timezone.now() - timedelta(minutes=11))
    assert logged_in(attempt(server, "/login/", "olivia", PASSWORD, "203.0.113.9"))


def test_an_address_is_locked_after_failures_for_any_accounts(start_web, olivia, anna, sam):
    root = User.objects.create_superuser("root", password=PASSWORD)
    server_password(olivia, anna, sam, root)
    server = start_web(LOGIN_FAILURE_LIMIT=3, LOGIN_LOCKOUT_MINUTES=1)
    address = "198.51.100.7"
    assert attempt(server, "/admin/login/", "olivia", "wrong", address).status_code == 200
    assert attempt(server, "/login/", "anna", "wrong", address).status_code == 200
    assert locked(attempt(server, "/admin/login/", "sam", "wrong", address), 1)
    # The address is locked for every account, on both pages, even with the right password.
    assert locked(attempt(server, "/login/", "root", PASSWORD, address), 1)
    assert locked(attempt(server, "/admin/login/", "root", PASSWORD, address), 1)
    # The same accounts from another address are not locked (one failure each is under the limit).
    assert logged_in(attempt(server, "/login/", "anna", PASSWORD, "198.51.100.8"))
    assert logged_in(attempt(server, "/admin/login/", "root", PASSWORD, "198.51.100.8"))


def test_a_client_that_is_not_a_trusted_proxy_cannot_choose_its_address(start_web, olivia, anna, monkeypatch):
    server_password(olivia, anna)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.1")  # read by sopweb.web.command(), as the web command does
    server = start_web(LOGIN_FAILURE_LIMIT=2, LOGIN_LOCKOUT_MINUTES=5)
    # Each attempt claims another address, but the peer (127.0.0.1) is no trusted proxy: both count against it.
    assert attempt(server, "/login/", "olivia", "wrong", "203.0.113.21").status_code == 200
    assert locked(attempt(server, "/login/", "anna", "wrong", "203.0.113.22"), 5)
    assert locked(attempt(server, "/login/", "anna", PASSWORD, "203.0.113.23"), 5)

"""Accounts on the real stack: the web command's demo rule, login lockouts through the real server (both login
pages, addresses from a trusted proxy), and dashboard sockets closed when their session ends or loses its
permission."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
import websockets
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.utils import timezone
from django.utils.crypto import get_random_string

from accounts.models import DemoAccount
from core.events import broadcast
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


# --- dashboard sockets ----------------------------------------------------------------------------------------------


class Person:
    """A browser of `user` on the real server: logged in through the form, its session cookie, its CSRF token."""

    def __init__(self, server, user):
        self.server = server
        self.http = httpx.Client(base_url=f"http://{server.address}", timeout=30)
        response = self.http.post("/login/", data={"username": user.username, "password": PASSWORD,
                                                   "csrfmiddlewaretoken": csrf_token(self.http, "/login/")})
        assert logged_in(response), response.text

    def post(self, path: str, **data) -> httpx.Response:
        token = csrf_token(self.http, "/accounts/password/")  # any page with a form carries the token
        return self.http.post(path, data={"csrfmiddlewaretoken": token, **data})

    def socket(self):
        cookie = "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())
        return websockets.connect(f"ws://{self.server.address}/ws/fleet/", open_timeout=10,
                                  additional_headers={"Cookie": cookie, "Origin": f"http://{self.server.address}"})


async def close_code(ws, timeout: float) -> int | None:
    """Read (and drop) whatever arrives until the server closes the socket; its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_logout_deactivation_and_a_password_change_close_sockets_at_once(start_web, olivia, sam):
    """The periodic re-check is an hour away here: what closes the sockets is the session message over Redis."""
    oscar = make_user("oscar", "operators")
    server_password(olivia, sam, oscar)
    server = start_web(WS_PERMISSION_RECHECK_SECONDS=3600)
    olivia_browser, olivia_laptop, supervisor, oscar_browser = (
        Person(server, olivia), Person(server, olivia), Person(server, sam), Person(server, oscar))

    async def scenario():
        async with olivia_browser.socket() as a, olivia_laptop.socket() as b, supervisor.socket() as s, \
                oscar_browser.socket() as o:
            # Logging out closes that session's socket only.
            assert (await asyncio.to_thread(olivia_browser.post, "/logout/")).status_code == 302
            assert await close_code(a, 10) == 4401
            # A supervisor deactivates olivia: her other session's socket closes.
            response = await asyncio.to_thread(supervisor.post, f"/accounts/users/{olivia.pk}/deactivate/",
                                               reason="left")
            assert response.status_code == 302
            assert await close_code(b, 10) == 4401
            # oscar changes his password: his sockets close (his pages reload with the session the change kept).
            new = "a-much-longer-passphrase-7"
            response = await asyncio.to_thread(oscar_browser.post, "/accounts/password/", old_password=PASSWORD,
                                               new_password1=new, new_password2=new)
            assert response.status_code == 302
            assert await close_code(o, 10) == 4401
            # The supervisor's socket never closed: it still hears the fleet.
            await asyncio.to_thread(broadcast, "robot.status", {"robot": 5, "status": "paused"})
            while True:
                events = json.loads(await asyncio.wait_for(s.recv(), 10))["events"]
                if {"event": "robot.status", "data": {"robot": 5, "status": "paused"}} in events:
                    break

    asyncio.run(scenario())


def test_a_demoted_user_and_an_expired_session_are_closed_at_the_next_recheck(start_web, olivia, sam):
    server_password(olivia, sam)
    server = start_web(WS_PERMISSION_RECHECK_SECONDS=1)
    olivia_browser, supervisor = Person(server, olivia), Person(server, sam)
    session_key = supervisor.http.cookies["sessionid"]

    def demote():
        User.objects.get(pk=olivia.pk).groups.clear()

    def expire():  # as if SESSION_IDLE_TIMEOUT had passed without a request
        Session.objects.filter(session_key=session_key).update(expire_date=timezone.now() - timedelta(seconds=1))

    async def scenario():
        async with olivia_browser.socket() as o, supervisor.socket() as s:
            await asyncio.to_thread(demote)
            assert await close_code(o, 15) == 4403
            await asyncio.to_thread(expire)
            assert await close_code(s, 15) == 4401

    asyncio.run(scenario())


def test_a_deactivated_users_open_dashboard_goes_to_the_login_page(browser_session, olivia, sam):
    from accounts.services import deactivate

    session = browser_session(olivia)
    page = session.page
    page.goto(session.base_url + "/fleet/")
    page.wait_for_selector("#live-state.on", timeout=15000)  # the socket is open
    deactivate(olivia, sam, reason="left")
    # The socket closes with 4401 and live.js reloads the page, which now asks for a login.
    page.wait_for_url("**/login/?next=/fleet/", timeout=15000)
    assert "Log in" in page.content() and not session.console_errors

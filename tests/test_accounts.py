"""Accounts in-process: demo mode, deactivation, password change, idle sessions (the real server's side, lockouts
and sockets, is tests/test_accounts_stack.py)."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from accounts.demo import is_loopback, web_start_problem
from accounts.middleware import LAST_SEEN
from accounts.models import DemoAccount
from core.models import AuditEvent
from tests.conftest import PASSWORD, make_user


def log_in(client: Client, username: str, password: str):
    return client.post(reverse("login"), {"username": username, "password": password})


def logged_in(client: Client) -> bool:
    response = client.get(reverse("home"))
    return not (response.status_code == 302 and response["Location"].startswith(reverse("login")))


# --- demo mode --------------------------------------------------------------------------------------------------


def test_seed_demo_refuses_outside_demo_mode(db, settings):
    settings.DEMO_MODE = False
    with pytest.raises(CommandError, match="only in demo mode: set SOPWEB_DEMO=1"):
        call_command("seed_demo", robots=0, stdout=open("/dev/null", "w"))
    assert not User.objects.filter(username__in=["admin", "operator"]).exists()


def test_seed_demo_in_demo_mode_marks_its_accounts_and_prints_only_live_demo_passwords(db, settings, capsys):
    settings.DEMO_MODE = True
    call_command("seed_demo", robots=0)
    assert "admin       password: admin-demo" in capsys.readouterr().out
    assert set(DemoAccount.objects.values_list("user__username", flat=True)) == {
        "operator", "supervisor", "annotator", "admin"}
    admin = User.objects.get(username="admin")
    admin.set_password("a-real-password-now")
    admin.save()
    call_command("seed_demo", robots=0)  # idempotent; a changed password is not printed
    out = capsys.readouterr().out
    assert "admin       (its password was changed)" in out and "a-real-password-now" not in out
    assert User.objects.filter(username="admin").count() == 1


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("10.0.0.5", False), ("fleet.example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_web_start_rule(db, settings):
    settings.DEMO_MODE = False
    assert web_start_problem("0.0.0.0") is None  # no demo accounts: serve anywhere
    settings.DEMO_MODE = True
    assert web_start_problem("127.0.0.1") is None
    assert "serves only on a loopback address, not on '0.0.0.0'" in web_start_problem("0.0.0.0")
    call_command("seed_demo", robots=0, quiet=True)
    settings.DEMO_MODE = False
    problem = web_start_problem("127.0.0.1")  # outside demo mode, even on loopback and whatever DEBUG says
    assert "demo accounts with known passwords are active (admin, annotator, operator, supervisor)" in problem
    assert "retire_demo_accounts" in problem
    call_command("retire_demo_accounts", stdout=open("/dev/null", "w"))
    assert web_start_problem("0.0.0.0") is None
    assert not User.objects.filter(username="admin", is_active=True).exists()  # deactivated, not deleted
    assert AuditEvent.objects.filter(verb="user.deactivate", actor=None, reason="leaving demo mode").count() == 4


def test_a_plain_user_named_admin_is_not_a_demo_account(db, settings):
    settings.DEMO_MODE = False
    make_user("admin")
    assert web_start_problem("0.0.0.0") is None


# --- the users page and deactivation -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["olivia", "anna", "oscar"])
def test_only_supervisors_may_manage_users(client, request, who, sam):
    person = request.getfixturevalue(who)
    client.force_login(person)
    assert client.get(reverse("users")).status_code == 403
    assert client.post(reverse("user-deactivate", args=[sam.pk]), {"reason": "x"}).status_code == 403
    assert client.post(reverse("user-reactivate", args=[sam.pk]), {"reason": "x"}).status_code == 403
    sam.refresh_from_db()
    assert sam.is_active and not AuditEvent.objects.filter(verb__startswith="user.").exists()
    assert "Users</a>" not in client.get(reverse("episodes")).content.decode()


def test_anonymous_users_are_sent_to_log_in(client, db):
    response = client.get(reverse("users"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_a_supervisor_deactivates_a_user_whose_sessions_end_and_who_cannot_log_in(client, sam, olivia):
    theirs = Client()
    assert log_in(theirs, "olivia", PASSWORD).status_code == 302 and logged_in(theirs)
    client.force_login(sam)
    page = client.get(reverse("users")).content.decode()
    assert 'data-user="olivia"' in page and "Users</a>" in page
    response = client.post(reverse("user-deactivate", args=[olivia.pk]), {"reason": "left the team"}, follow=True)
    assert "olivia is deactivated" in response.content.decode()
    olivia.refresh_from_db()
    assert not olivia.is_active and User.objects.filter(pk=olivia.pk).exists()
    event = AuditEvent.objects.get(verb="user.deactivate")
    assert (event.actor, event.object_id, event.reason) == (sam, str(olivia.pk), "left the team")
    assert event.details == {"sessions_ended": 1}
    assert not logged_in(theirs)
    assert not any(s.get_decoded().get("_auth_user_id") == str(olivia.pk) for s in Session.objects.all())
    refused = log_in(Client(), "olivia", PASSWORD)
    assert refused.status_code == 200 and "didn't match" in refused.content.decode()
    # Deactivating again changes nothing and says why; reactivating gives the account back, audited.
    response = client.post(reverse("user-deactivate", args=[olivia.pk]), {"reason": ""}, follow=True)
    assert "olivia is already deactivated" in response.content.decode()
    client.post(reverse("user-reactivate", args=[olivia.pk]), {"reason": "came back"})
    olivia.refresh_from_db()
    assert olivia.is_active and AuditEvent.objects.filter(verb="user.reactivate", reason="came back").exists()
    assert log_in(Client(), "olivia", PASSWORD).status_code == 302


def test_supervisors_cannot_deactivate_themselves_or_a_superuser(client, sam):
    root = User.objects.create_superuser("root", password=PASSWORD)
    client.force_login(sam)
    response = client.post(reverse("user-deactivate", args=[sam.pk]), {"reason": ""}, follow=True)
    assert "you cannot deactivate your own account" in response.content.decode()
    response = client.post(reverse("user-deactivate", args=[root.pk]), {"reason": ""}, follow=True)
    assert "only a superuser may deactivate the superuser root" in response.content.decode()
    assert User.objects.filter(is_active=False).count() == 0
    assert client.post(reverse("user-deactivate", args=[root.pk]), {"reason": "x" * 2001}).status_code == 400
    assert client.post(reverse("user-deactivate", args=[987654]), {"reason": ""}).status_code == 404
    assert client.get(reverse("user-deactivate", args=[root.pk])).status_code == 405


def test_the_supervisors_role_holds_manage_users(sam, olivia):
    assert User.objects.get(pk=sam.pk).has_perm("accounts.manage_users")
    assert not User.objects.get(pk=olivia.pk).has_perm("accounts.manage_users")


# --- password change ----------------------------------------------------------------------------------------------


def test_every_user_changes_their_password_and_the_old_one_stops_working(client, anna):
    assert log_in(client, "anna", PASSWORD).status_code == 302
    other = Client()
    assert log_in(other, "anna", PASSWORD).status_code == 302
    page = client.get(reverse("review-queue")).content.decode()
    assert f'href="{reverse("password_change")}"' in page  # linked from the header
    form = client.get(reverse("password_change"))
    assert form.status_code == 200 and "Change your password" in form.content.decode()
    wrong = client.post(reverse("password_change"), {"old_password": "nope", "new_password1": "x",
                                                     "new_password2": "x"})
    assert wrong.status_code == 200 and "Your old password was entered incorrectly" in wrong.content.decode()
    new = "a-much-longer-passphrase-7"
    response = client.post(reverse("password_change"), {"old_password": PASSWORD, "new_password1": new,
                                                        "new_password2": new})
    assert response.status_code == 302 and response["Location"] == reverse("password_change_done")
    assert logged_in(client)  # this session stays
    assert not logged_in(other)  # the others end
    assert log_in(Client(), "anna", PASSWORD).status_code == 200
    assert log_in(Client(), "anna", new).status_code == 302


def test_the_password_page_needs_a_login(client, db):
    response = client.get(reverse("password_change"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


# --- idle sessions ------------------------------------------------------------------------------------------------


def session_of(client: Client):
    return Session.objects.get(session_key=client.cookies[django_settings.SESSION_COOKIE_NAME].value)


def test_an_idle_session_is_logged_out(client, olivia):
    assert log_in(client, "olivia", PASSWORD).status_code == 302
    assert logged_in(client)
    row = session_of(client)
    data = row.get_decoded()
    assert time.time() - data[LAST_SEEN] < 60
    # As if SESSION_IDLE_TIMEOUT had passed since: the stored last use is that old.
    data[LAST_SEEN] -= django_settings.SESSION_IDLE_TIMEOUT + 1
    row.session_data = Session.objects.encode(data)
    row.save()
    assert not logged_in(client)
    assert not Session.objects.filter(pk=row.pk).exists()


def test_use_slides_the_expiry_and_an_expired_row_is_logged_out(client, olivia):
    assert log_in(client, "olivia", PASSWORD).status_code == 302
    assert logged_in(client)
    row = session_of(client)
    timeout = django_settings.SESSION_IDLE_TIMEOUT
    assert abs((row.expire_date.timestamp() - time.time()) - timeout) < 30
    data = row.get_decoded()
    data[LAST_SEEN] -= 120  # last refreshed two minutes ago: the next use moves the expiry on
    row.session_data = Session.objects.encode(data)
    row.expire_date -= timedelta(seconds=120)
    row.save()
    assert logged_in(client)
    refreshed = session_of(client)
    assert abs((refreshed.expire_date.timestamp() - time.time()) - timeout) < 30
    # The database itself expires an idle session (what sockets re-check): the row's expiry has passed.
    Session.objects.filter(pk=refreshed.pk).update(expire_date=refreshed.expire_date.replace(year=2000))
    assert not logged_in(client)


def test_the_idle_timeout_is_the_session_cookie_age():
    assert django_settings.SESSION_COOKIE_AGE == django_settings.SESSION_IDLE_TIMEOUT

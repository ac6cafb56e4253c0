"""Seed a demo installation: the default tasks, simulated robots, and one user per role. Demo mode only
(SOPWEB_DEMO=1, which `make demo` sets): the users' passwords are known and printed (accounts/demo.py)."""
from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.demo import DEMO_USERS, DemoModeRequired, demo_password, require_demo_mode
from accounts.models import DemoAccount
from fleet import control
from fleet.models import Robot, Task


def task_title(env_name: str) -> str:
    return env_name.removesuffix("-v3").replace("-", " ").capitalize()


class Command(BaseCommand):
    help = "Demo mode only: create the default tasks, demo robots and a demo user for every role (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--robots", type=int, default=4, help="simulated robots to create (default 4)")
        host, port = os.environ.get("WEB_HOST", "127.0.0.1"), os.environ.get("WEB_PORT", "8000")
        parser.add_argument("--url", default=f"http://{host}:{port}", help="the URL to print")
        parser.add_argument("--quiet", action="store_true", help="do not print the URL and logins")

    @transaction.atomic
    def handle(self, *args, robots: int, url: str, quiet: bool = False, **options):
        try:
            require_demo_mode("seed_demo")
        except DemoModeRequired as exc:
            raise CommandError(str(exc)) from None
        if robots < 0:
            self.stderr.write("--robots must be 0 or more")
            raise SystemExit(2)
        tasks = []
        for env_name in settings.FLEET_TASKS:
            task, _ = Task.objects.get_or_create(env_name=env_name, defaults={"title": task_title(env_name)})
            tasks.append(task)
        for i in range(1, robots + 1):
            if not Robot.objects.filter(name=f"sim-{i:02d}").exists():
                control.add(f"sim-{i:02d}", tasks)  # on the deployed version, if the fleet has one

        logins = []
        for username, (group, superuser, staff) in DEMO_USERS.items():
            password = demo_password(username)
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff, user.is_superuser = staff, superuser
                user.save()
                if group:
                    user.groups.add(Group.objects.get(name=group))
            DemoAccount.objects.get_or_create(user=user)  # the web command refuses it outside demo mode
            if quiet:
                continue
            if not user.is_active:
                shown = "(deactivated)"
            elif created or user.check_password(password):
                shown = f"password: {password}"
            else:
                shown = "(its password was changed)"
            logins.append((username, group or "superuser", shown))

        if quiet:
            return
        self.stdout.write(self.style.SUCCESS(f"\nsopweb is starting at {url}\n"))
        self.stdout.write("Demo logins (demo mode, this machine only; demo passwords: change them before "
                          "anything real):")
        for username, role, shown in logins:
            self.stdout.write(f"  {role:<12} {username:<11} {shown}")
        self.stdout.write("")

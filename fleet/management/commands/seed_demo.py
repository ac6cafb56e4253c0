"""Seed a demo installation: the default tasks, simulated robots, and one user per role."""
from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction

from fleet import control
from fleet.models import Robot, Task

# username -> (group, is superuser, is staff). Passwords: "<username>-demo" unless SOPWEB_DEMO_PASSWORD is set.
# The supervisor is staff: they edit the failure-mode taxonomy in the admin (their group's permissions decide
# what else the admin shows them).
DEMO_USERS = {
    "operator": ("operators", False, False),
    "supervisor": ("supervisors", False, True),
    "annotator": ("annotators", False, False),
    "admin": (None, True, True),
}


def task_title(env_name: str) -> str:
    return env_name.removesuffix("-v3").replace("-", " ").capitalize()


class Command(BaseCommand):
    help = "Create the default tasks, demo robots and a demo user for every role (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--robots", type=int, default=4, help="simulated robots to create (default 4)")
        host, port = os.environ.get("WEB_HOST", "127.0.0.1"), os.environ.get("WEB_PORT", "8000")
        parser.add_argument("--url", default=f"http://{host}:{port}", help="the URL to print")
        parser.add_argument("--quiet", action="store_true", help="do not print the URL and logins")

    @transaction.atomic
    def handle(self, *args, robots: int, url: str, quiet: bool = False, **options):
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

        shared_password = os.environ.get("SOPWEB_DEMO_PASSWORD")
        logins = []
        for username, (group, superuser, staff) in DEMO_USERS.items():
            password = shared_password or f"{username}-demo"
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff, user.is_superuser = staff, superuser
                user.save()
                if group:
                    user.groups.add(Group.objects.get(name=group))
            logins.append((username, group or "superuser", password))

        if quiet:
            return
        self.stdout.write(self.style.SUCCESS(f"\nsopweb is starting at {url}\n"))
        self.stdout.write("Demo logins (demo passwords: change them before anything real):")
        for username, role, password in logins:
            self.stdout.write(f"  {role:<12} {username:<11} password: {password}")
        self.stdout.write("")

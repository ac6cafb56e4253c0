"""`make demo`'s remote robot: enrolled once (on the fleet's tasks and version), started, and its token written to
a file only its client reads (var/demo-robot.token, mode 600). The token is never printed."""
from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from fleet import control
from fleet.models import Robot, Task
from gateway import credentials

NAME = "remote-01"


class Command(BaseCommand):
    help = "Enrol and start the demo's remote robot; write its token for the robot client process."

    def add_arguments(self, parser):
        parser.add_argument("--token-file", type=Path, default=Path(settings.VAR_DIR) / "demo-robot.token")

    def handle(self, *args, token_file: Path, **options):
        robot = Robot.objects.filter(name=NAME).first()
        if robot is None:
            robot = control.add(NAME, list(Task.objects.filter(enabled=True)), None, kind=Robot.Kind.REMOTE)
        control.start_if_never_commanded(robot, reason="demo start")  # one an operator stopped stays stopped
        current = token_file.read_text().strip() if token_file.exists() else ""
        found = credentials.authenticate(current) if current else None
        if found is None or found.robot_id != robot.pk:
            _, token = credentials.rotate(robot, None, reason="demo start")
            token_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(token)
            os.chmod(token_file, 0o600)
        self.stdout.write(f"remote robot {robot.name} ready; its client reads its token from {token_file}")

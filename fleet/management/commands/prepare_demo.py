"""Everything `make demo` needs before the processes start: users, tasks, robots, demonstrations, a base policy
deployed to the fleet, and the robots started. Each step is cached: a second start redoes nothing."""
from __future__ import annotations

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from fleet import control
from fleet.control import schedule_episode
from fleet.models import Robot


class Command(BaseCommand):
    help = "Seed the demo, generate demonstrations, pretrain and deploy the base policy, start the robots."

    def handle(self, *args, **options):
        call_command("seed_demo", "--quiet", stdout=self.stdout)
        call_command("generate_demos", "--per-task", str(settings.LEARNER_BASE_DEMOS), stdout=self.stdout)
        call_command("pretrain_base", "--if-none", "--deploy", stdout=self.stdout)
        for robot in Robot.objects.filter(retired=False):
            if robot.enabled:
                if robot.in_process:
                    schedule_episode(robot.pk)  # started in an earlier run: pick its chain of episodes up again
            else:
                control.start(robot, None, reason="demo start")
        self.stdout.write(f"{Robot.objects.filter(enabled=True).count()} robots started")
        call_command("learner", "start", "--if-none", stdout=self.stdout)
        call_command("seed_demo", stdout=self.stdout)  # idempotent; prints the URL and the logins last

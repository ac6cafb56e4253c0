"""Everything `make demo` needs before the processes start: users, tasks, robots, demonstrations, a base policy
deployed to the fleet, and the robots started. Each step is cached: a second start redoes nothing, and a robot
an operator stopped stays stopped."""
from __future__ import annotations

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from fleet import control
from fleet.control import schedule_episode
from fleet.models import Robot


def start_robots() -> str:
    """Start the robots nobody has started or stopped yet (the first start-up), and pick up the chains of episodes
    of those left started; a robot someone stopped stays stopped. Returns what it did, in a line."""
    started, resumed, kept = [], [], []
    for robot in Robot.objects.filter(retired=False).order_by("name"):
        if control.start_if_never_commanded(robot, reason="demo start"):
            started.append(robot.name)
        elif robot.enabled:
            if robot.in_process:
                schedule_episode(robot.pk)  # started in an earlier run: pick its chain of episodes up again
            resumed.append(robot.name)
        else:
            kept.append(robot.name)
    parts = [f"{len(started) + len(resumed)} robots started"]
    if started:
        parts.append(f"first start: {', '.join(started)}")
    if kept:
        parts.append(f"left stopped, as someone left them: {', '.join(kept)}")
    return "; ".join(parts)


class Command(BaseCommand):
    help = "Seed the demo, generate demonstrations, pretrain and deploy the base policy, start the robots."

    def handle(self, *args, **options):
        call_command("seed_demo", "--quiet", stdout=self.stdout)
        call_command("generate_demos", "--per-task", str(settings.LEARNER_BASE_DEMOS), stdout=self.stdout)
        call_command("pretrain_base", "--if-none", "--deploy", stdout=self.stdout)
        self.stdout.write(start_robots())
        call_command("learner", "start", "--if-none", stdout=self.stdout)
        call_command("seed_demo", stdout=self.stdout)  # idempotent; prints the URL and the logins last

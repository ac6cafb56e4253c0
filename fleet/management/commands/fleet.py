"""Fleet control from the command line: the same audited model methods as the operator's buttons."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.audit import IllegalTransition
from fleet import control
from fleet.models import Robot, Task

REASON = "why, for the audit log (optional)"


class Command(BaseCommand):
    help = "Add, remove, start, stop, pause, resume or take over robots, assign their tasks, or list the fleet."

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="username", help="record this user as the actor in the audit log")
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every robot with its state, tasks and version")
        add = sub.add_parser("add", help="add simulated robots")
        add.add_argument("names", nargs="+")
        add.add_argument("--tasks", nargs="*", help="task names (default: every enabled task)")
        add.add_argument("--reason", default="", help=REASON)
        remove = sub.add_parser("remove", help="remove stopped robots (retired if they have episodes)")
        remove.add_argument("names", nargs="+")
        remove.add_argument("--reason", default="", help=REASON)
        tasks = sub.add_parser("set-tasks", help="assign tasks to a robot")
        tasks.add_argument("name")
        tasks.add_argument("tasks", nargs="+")
        tasks.add_argument("--reason", default="", help=REASON)
        for action in ("start", "stop", "pause", "resume", "takeover"):
            cmd = sub.add_parser(action, help=f"{Robot.COMMANDS[action].lower()} robots (--all: every robot whose "
                                              "state allows it)")
            cmd.add_argument("names", nargs="*")
            cmd.add_argument("--all", action="store_true")
            cmd.add_argument("--reason", default="", help=REASON)

    def handle(self, *args, action: str, username=None, **options):
        actor = None
        if username:
            actor = get_user_model().objects.filter(username=username).first()
            if actor is None:
                raise CommandError(f"no user named {username!r}")
        if action == "list":
            for robot in Robot.objects.filter(retired=False).select_related("policy_version"):
                tasks = ",".join(robot.tasks.values_list("env_name", flat=True)) or "-"
                self.stdout.write(f"{robot.name:<16} {robot.State(robot.state).label:<20} "
                                  f"{robot.policy_version or '-'!s:<6} {tasks}")
            return
        reason = options.get("reason", "")
        if action == "add":
            task_rows = self._tasks(options["tasks"])
            for name in options["names"]:
                try:
                    control.add(name, task_rows, actor, reason=reason)
                except ValueError as exc:
                    raise CommandError(str(exc)) from None
                self.stdout.write(f"added {name}")
            return
        if action == "set-tasks":
            self._robots([options["name"]])[0].set_tasks(self._tasks(options["tasks"]), actor, reason=reason)
            return
        everyone = options.get("all", False)
        robots = self._robots(options["names"], everyone)
        if everyone:  # the whole fleet: every robot whose state allows it, the others left as they are
            robots = [robot for robot in robots if robot.refusal(action) is None]
        refused = 0
        for robot in robots:
            try:
                control.COMMANDS[action](robot, actor, reason=reason)
            except IllegalTransition as exc:
                self.stderr.write(str(exc))
                refused += 1
                continue
            self.stdout.write(f"{action}: {robot.name} ({robot.State(robot.state).label})")
        if refused:
            raise CommandError(f"{refused} of {len(robots)} robot(s) refused {action}")

    def _robots(self, names: list[str], everyone: bool = False) -> list[Robot]:
        if everyone:
            return list(Robot.objects.filter(retired=False))
        if not names:
            raise CommandError("name some robots, or pass --all")
        robots = {r.name: r for r in Robot.objects.filter(name__in=names, retired=False)}
        unknown = [name for name in names if name not in robots]
        if unknown:
            raise CommandError(f"unknown robot(s): {', '.join(unknown)}")
        return [robots[name] for name in names]

    def _tasks(self, names) -> list[Task]:
        if not names:
            return list(Task.objects.filter(enabled=True))
        rows = {t.env_name: t for t in Task.objects.filter(env_name__in=names)}
        unknown = [name for name in names if name not in rows]
        if unknown:
            raise CommandError(f"unknown task(s): {', '.join(unknown)}")
        return [rows[name] for name in names]

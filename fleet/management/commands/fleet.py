"""Fleet control from the command line: the same audited model methods as the operator's buttons."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.audit import IllegalTransition
from fleet import control
from fleet.models import Robot, Task


class Command(BaseCommand):
    help = "Add, remove, start, stop, pause, resume robots, assign their tasks, or list the fleet."

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="username", help="record this user as the actor in the audit log")
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every robot with its status, tasks and version")
        add = sub.add_parser("add", help="add simulated robots")
        add.add_argument("names", nargs="+")
        add.add_argument("--tasks", nargs="*", help="task names (default: every enabled task)")
        remove = sub.add_parser("remove", help="remove robots (retired if they have episodes)")
        remove.add_argument("names", nargs="+")
        tasks = sub.add_parser("set-tasks", help="assign tasks to a robot")
        tasks.add_argument("name")
        tasks.add_argument("tasks", nargs="+")
        for action in ("start", "stop", "pause", "resume"):
            cmd = sub.add_parser(action, help=f"{action} robots (--all: the whole fleet)")
            cmd.add_argument("names", nargs="*")
            cmd.add_argument("--all", action="store_true")
            cmd.add_argument("--reason", default="")

    def handle(self, *args, action: str, username=None, **options):
        actor = None
        if username:
            actor = get_user_model().objects.filter(username=username).first()
            if actor is None:
                raise CommandError(f"no user named {username!r}")
        if action == "list":
            for robot in Robot.objects.filter(retired=False).select_related("policy_version"):
                tasks = ",".join(robot.tasks.values_list("env_name", flat=True)) or "-"
                state = "started" if robot.enabled else "stopped"
                self.stdout.write(f"{robot.name:<16} {robot.status:<8} {state:<8} {robot.policy_version or '-'!s:<6} "
                                  f"{tasks}")
            return
        if action == "add":
            task_rows = self._tasks(options["tasks"])
            for name in options["names"]:
                try:
                    control.add(name, task_rows, actor)
                except ValueError as exc:
                    raise CommandError(str(exc)) from None
                self.stdout.write(f"added {name}")
            return
        if action == "set-tasks":
            self._robots([options["name"]])[0].set_tasks(self._tasks(options["tasks"]), actor)
            return
        robots = self._robots(options["names"], options.get("all", False))
        for robot in robots:
            try:
                control.COMMANDS[action](robot, actor, reason=options.get("reason", ""))
            except IllegalTransition as exc:
                self.stderr.write(str(exc))
                continue
            self.stdout.write(f"{action}: {robot.name}")

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

"""Import a LeRobot dataset of state-based episodes as a task's offline demonstrations (review/dataset_import.py)."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet.models import Task
from review.dataset_import import DatasetError, import_dataset


class Command(BaseCommand):
    help = ("Read a LeRobot dataset (format v3.0 or v2.1) of state-based episodes (observation.state, action) and "
            "store them as offline demonstrations of a task, validated like every episode: one bad episode and "
            "nothing is stored. Importing the same episodes again stores nothing new.")

    def add_arguments(self, parser):
        parser.add_argument("path", help="the dataset's folder (the one holding meta/info.json)")
        parser.add_argument("--task", required=True, help="the task the episodes demonstrate (e.g. pick-place-v3)")
        parser.add_argument("--assume-success", action="store_true",
                            help="the dataset has no next.success column: take every episode as a successful "
                                 "demonstration, succeeding at its last step")

    def handle(self, *args, path: str, task: str, assume_success: bool, **options):
        task_row = Task.objects.filter(env_name=task).first()
        if task_row is None:
            known = ", ".join(Task.objects.order_by("env_name").values_list("env_name", flat=True)) or "none"
            raise CommandError(f"unknown task {task!r} (known: {known})")
        if not Path(path).is_dir():
            raise CommandError(f"{path} is not a folder")
        try:
            report = import_dataset(Path(path), task_row, assume_success=assume_success)
        except DatasetError as exc:
            raise CommandError(f"{exc}; nothing was imported") from None
        self.stdout.write(self.style.SUCCESS(
            f"imported {report.created} of {report.episodes} episodes ({report.frames} frames, LeRobot "
            f"{report.format}) as offline demonstrations of {task}"
            + (f"; {report.skipped} were already here" if report.skipped else "")))

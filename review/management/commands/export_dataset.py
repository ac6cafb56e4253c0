"""Export labelled episodes as a LeRobot dataset (format v3.0, or v2.1 with --format; see review/export.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet.models import Task
from review.export import VERSIONS, export_dataset, labels_to_export
from review.models import EpisodeLabel


class Command(BaseCommand):
    help = "Write labelled episodes as a LeRobot dataset folder (format v3.0 by default; review/export.py)."

    def add_arguments(self, parser):
        parser.add_argument("out", help="the dataset folder to create (must not exist)")
        parser.add_argument("--task", help="only this task (e.g. pick-place-v3)")
        parser.add_argument("--disposition", default="keep,relabel",
                            help="comma-separated dispositions to include (default keep,relabel; add exclude to "
                                 "export excluded episodes too, as recorded)")
        parser.add_argument("--zip", action="store_true", help="also write OUT.zip")
        parser.add_argument("--format", default="v3.0", choices=VERSIONS,
                            help="the LeRobot format: v3.0 (lerobot 0.4 and later, the default) or v2.1")

    def handle(self, *args, out: str, task: str | None, disposition: str, zip: bool, format: str = "v3.0",
               **options):
        dispositions = [d.strip() for d in disposition.split(",") if d.strip()]
        unknown = set(dispositions) - set(EpisodeLabel.Disposition.values)
        if unknown or not dispositions:
            raise CommandError(f"--disposition takes {', '.join(EpisodeLabel.Disposition.values)}; "
                               f"got {disposition!r}")
        task_row = None
        if task:
            task_row = Task.objects.filter(env_name=task).first()
            if task_row is None:
                raise CommandError(f"unknown task {task!r}")
        labels = labels_to_export(task_row, dispositions)
        if not labels.exists():
            raise CommandError("no labelled episode matches: nothing to export")
        try:
            info = export_dataset(labels, Path(out), version=format)
        except FileExistsError as exc:
            raise CommandError(str(exc)) from None
        if zip:
            archive = shutil.make_archive(str(Path(out)), "zip", root_dir=Path(out).parent, base_dir=Path(out).name)
            self.stdout.write(f"wrote {archive}")
        self.stdout.write(self.style.SUCCESS(
            f"exported {info['total_episodes']} episodes, {info['total_frames']} frames, {info['total_tasks']} "
            f"task(s) to {out}"))

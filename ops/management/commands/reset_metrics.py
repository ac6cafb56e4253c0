"""Empty METRICS_DIR before the processes start (prometheus_client's multiprocess mode keeps one file per process id;
a new start begins from zero, as Prometheus expects of a restarted target). `make demo` runs it first; a process
manager runs it before it starts sopweb's processes (e.g. ExecStartPre)."""
from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Delete the per-process metric files under METRICS_DIR (run it while no sopweb process runs)."

    def handle(self, *args, **options):
        folder = settings.METRICS_DIR
        removed = 0
        if folder.is_dir():
            for path in folder.glob("*.db"):
                path.unlink(missing_ok=True)
                removed += 1
        self.stdout.write(f"metrics: {removed} file(s) removed from {folder}")

"""DESIGN: torch and MuJoCo stay out of the web process's import graph (they cost seconds and hundreds of MB)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

WEB = """
import sys, django
django.setup()
import sopweb.asgi, sopweb.urls, fleet.views, learner.views, fleet.consumers, fleet.admin, learner.admin
import actors.runner, actors.tasks, fleet.control, fleet.ingest, fleet.tasks, learner.tasks  # reached lazily
import review.views, review.tasks, review.export, review.admin  # replay status, retry, export
heavy = sorted(m for m in ("torch", "mujoco", "metaworld", "gymnasium") if m in sys.modules)
print("HEAVY:", ",".join(heavy))
"""


def test_the_web_process_never_imports_torch_or_mujoco():
    result = subprocess.run([sys.executable, "-c", WEB], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, DJANGO_SETTINGS_MODULE="sopweb.settings"))
    assert result.returncode == 0, result.stderr
    assert "HEAVY: \n" in result.stdout + "\n", result.stdout

"""Shared set-up for benchmarks that need the database: a private `<name>_bench` database, migrated, empty.

Run benchmarks under the launcher so the embedded services exist:
    .venv/bin/python -m sopweb.embedded run -- .venv/bin/python bench/ingest.py
"""
from __future__ import annotations

import os
import statistics
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=UserWarning)


def setup(db_suffix: str = "_bench") -> None:
    from sopweb import embedded

    url = os.environ.get("DATABASE_URL") or embedded.read_state().get("DATABASE_URL")
    if not url:
        sys.exit("no database: run under `python -m sopweb.embedded run --` or set DATABASE_URL")
    parts = urlsplit(url)
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=parts.path.rstrip("/") + db_suffix))
    os.environ.setdefault("REDIS_URL", embedded.read_state().get("REDIS_URL", ""))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("ensure_database")
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def percentile(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def median(values) -> float:
    return statistics.median(values)


def start_web(name: str, workers: int = 1, **env):
    """The product's web process (sopweb/web.py: uvicorn) on a free port, its log in var/bench-<name>-web.log.
    Returns (process, "host:port"); stop it with stop_web."""
    import socket
    import subprocess
    import time

    from sopweb.web import command

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(ROOT / "var" / f"bench-{name}-web.log", "wb")
    proc = subprocess.Popen([sys.executable, *command("127.0.0.1", port, workers)], cwd=ROOT,
                            env=dict(os.environ, **{k: str(v) for k, v in env.items()}), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.1)
    sys.exit(f"the web process did not start (var/bench-{name}-web.log)")


def stop_web(proc) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)

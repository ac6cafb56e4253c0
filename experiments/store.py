"""Where experiments keep what they measured (EXPERIMENTS_DIR):

    runs/<spec key>-r<repeat>.json    one finished run's record: the cache (a sweep resumes with what is missing)
    work/<spec key>-r<repeat>/        its kept checkpoints, its processes' logs
    sweeps/<sweep>[-quick].json       a sweep's summary across repeats
    reports/<sweep>[-quick].html      its self-contained report

The records and summaries are small JSON files meant to be kept (and committed, for the README's figures); `work/`
and the reports can be made again.
"""
from __future__ import annotations

import fcntl
import json
import re
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

NAME = re.compile(r"^[a-z]+(-quick)?$")


def root() -> Path:
    return Path(settings.EXPERIMENTS_DIR)


def run_name(key: str, repeat: int) -> str:
    return f"{key}-r{repeat}"


def record_path(key: str, repeat: int) -> Path:
    return root() / "runs" / f"{run_name(key, repeat)}.json"


def work_dir(key: str, repeat: int) -> Path:
    return root() / "work" / run_name(key, repeat)


def sweep_name(sweep: str, quick: bool) -> str:
    return sweep + ("-quick" if quick else "")


def summary_path(name: str) -> Path:
    return root() / "sweeps" / f"{name}.json"


def report_path(name: str) -> Path:
    return root() / "reports" / f"{name}.html"


def write_json(path: Path, data) -> None:
    """Atomically: a sweep interrupted while writing never leaves half a record for the cache to trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_record(key: str, repeat: int) -> dict | None:
    path = record_path(key, repeat)
    return json.loads(path.read_text()) if path.exists() else None


def summaries() -> list[dict]:
    """Every sweep summary, newest first (the Experiments page)."""
    folder = root() / "sweeps"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        if NAME.match(path.stem):
            data = json.loads(path.read_text())
            data["name"] = path.stem
            data["has_report"] = report_path(path.stem).exists()
            found.append(data)
    return sorted(found, key=lambda s: s.get("generated", ""), reverse=True)


def summary(name: str) -> dict | None:
    if not NAME.match(name):
        return None
    path = summary_path(name)
    return json.loads(path.read_text()) if path.exists() else None


class Busy(Exception):
    pass


@contextmanager
def exclusive():
    """One sweep at a time: runs share the experiments' Redis database and the machine's cores."""
    root().mkdir(parents=True, exist_ok=True)
    with open(root() / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another sweep is running (it holds {root() / '.lock'})") from None
        yield

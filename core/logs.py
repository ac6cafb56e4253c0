"""Logging filters the settings attach to Django's request loggers."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pythonjsonlogger.json


class ClientErrorsOnOneLine(logging.Filter):
    """A refused request (any 4xx: 403, 404, 405, ...) is one log line: Django logs a refusal it raised as an
    exception (PermissionDenied, Http404) with its traceback, ~35 lines that say nothing about a server fault and
    bury the ones that do. Server errors (5xx) keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and status < 500:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


# The context a record may carry (`log.info(..., extra={"robot": ..., ...})`), kept as fields of its JSON object.
CONTEXT_KEYS = ("robot", "episode", "version", "task", "task_id", "alert", "webhook")


def process_name() -> str:
    """What this process is, for log lines: SOPWEB_PROCESS if set, else the Celery worker's queues or beat, the web
    process, or the manage.py command."""
    import os
    import sys

    if os.environ.get("SOPWEB_PROCESS"):
        return os.environ["SOPWEB_PROCESS"]
    argv = sys.argv
    if any(arg.endswith(("celery", "celery/__main__.py")) for arg in argv[:3]):  # `celery ...`, `python -m celery`
        if "beat" in argv:
            return "beat"
        if "-Q" in argv and argv.index("-Q") + 1 < len(argv):
            return "worker:" + argv[argv.index("-Q") + 1]
        return "worker"
    if argv and argv[0].endswith("manage.py") and len(argv) > 1:
        return f"manage.py {argv[1]}"
    if any("sopweb.web" in arg or "uvicorn" in arg for arg in argv):
        return "web"
    return os.path.basename(argv[0] or "python")


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """LOG_FORMAT=json: one JSON object per line (python-json-logger) with timestamp (ISO 8601, UTC), level,
    process (process_name) and pid, logger, message, the context keys a record carries (CONTEXT_KEYS, and any other
    `extra`), and the traceback as `exc_info` when there is one."""

    def __init__(self, *args, **kwargs):
        super().__init__("{levelname}{name}{message}", style="{",
                         rename_fields={"levelname": "level", "name": "logger"},
                         static_fields={"process": process_name()}, json_ensure_ascii=False, json_default=str)

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["timestamp"] = datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat()
        log_data["pid"] = record.process

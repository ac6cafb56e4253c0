"""Logging filters the settings attach to Django's request loggers."""
from __future__ import annotations

import logging


class ClientErrorsOnOneLine(logging.Filter):
    """A refused request (any 4xx: 403, 404, 405, ...) is one log line: Django logs a refusal it raised as an
    exception (PermissionDenied, Http404) with its traceback, ~35 lines that say nothing about a server fault and
    bury the ones that do. Server errors (5xx) keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and status < 500:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

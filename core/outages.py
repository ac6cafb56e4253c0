"""Outages of the services underneath (Redis, PostgreSQL) as one process sees them: logged once, retried with
back-off and jitter."""
from __future__ import annotations

import logging
import random
import threading
import time

log = logging.getLogger(__name__)


class Outage:
    """One process's view of a dependency being unreachable: the first failure logs one warning, the recovery one
    line with the outage's length, and the failures between log nothing (a reconnect loop would otherwise write a
    line per attempt). `delay()` is the next wait of a reconnect loop: exponential with full jitter, so processes
    that lost the server together do not come back in step."""

    def __init__(self, what: str, base: float = 0.5, cap: float = 30.0):
        self.what, self.base, self.cap = what, base, cap
        self.since: float | None = None  # epoch seconds of the first failure of the current outage
        self.failures = 0
        self.next_try = 0.0  # monotonic: before it, `due()` says wait
        self._lock = threading.Lock()

    def failed(self, exc: BaseException | None = None, logger: logging.Logger = log) -> None:
        with self._lock:
            self.failures += 1
            first = self.since is None
            if first:
                self.since = time.time()
            self.next_try = time.monotonic() + self.delay()
        if first:
            logger.warning("%s unreachable (%s); retrying with back-off, quiet until it answers", self.what,
                           f"{type(exc).__name__}: {exc}" if exc else "no answer")

    def ok(self, logger: logging.Logger = log) -> None:
        if self.since is None:
            return
        with self._lock:
            since, self.since, self.failures = self.since, None, 0
        if since is not None:
            logger.info("%s reachable again after %.1f s", self.what, time.time() - since)

    def due(self) -> bool:
        """Whether to try now: always outside an outage; in one, once its back-off has passed."""
        return self.since is None or time.monotonic() >= self.next_try

    def delay(self) -> float:
        return random.uniform(self.base, min(self.cap, self.base * 2 ** min(self.failures, 16)))

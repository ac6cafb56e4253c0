"""Exactly one beat across hosts: celery-redbeat keeps the schedule in Redis and lets only the holder of a lock
send periodic tasks; every other beat waits, ready to take over within BEAT_LOCK_SECONDS of the holder's death.

RedBeat's own scheduler ends its process when it finds its lock gone (Redis was away longer than the lock lasts, or
another beat took over meanwhile); under a process manager that stops everything with one process (honcho, `make
demo`) that would take the installation down. This one goes back to waiting for the lock instead, and sends
nothing until it holds it again, so there is still never more than one sender; and it writes the schedule to Redis
again, which a Redis restarted without persistence has lost."""
from __future__ import annotations

import logging
import time

import redis
from redbeat import RedBeatScheduler

log = logging.getLogger(__name__)


_REDIS_TROUBLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Scheduler(RedBeatScheduler):
    def tick(self, *args, **kwargs):
        try:
            return super().tick(*args, **kwargs)
        except (redis.exceptions.LockError, *_REDIS_TROUBLE) as exc:
            log.warning("beat: cannot renew the beat lock (%s: Redis away, or another beat took over): sending "
                        "nothing until it holds the lock again", type(exc).__name__)
            self._hold_lock_again()
            return 0

    def _hold_lock_again(self) -> None:
        """Back to the lock: still ours after a blip, or taken again once it is free (a standby's wait). Then the
        schedule is written again: a Redis that restarted without persistence lost it with the lock."""
        while True:
            try:
                if self.lock.owned() or self.lock.acquire(blocking=True):
                    self.setup_schedule()
                    log.info("beat: holds the beat lock")
                    return
            except _REDIS_TROUBLE:
                time.sleep(min(self.max_interval, 2.0))

"""`python -m learner.service`: the learner as the Procfile runs it.

LEARNER_WORLD_SIZE = 1: the Celery worker of the `learner` queue, which trains in slices (learner.loop).
LEARNER_WORLD_SIZE = N > 1: `torchrun --standalone --nproc-per-node N -m learner.service group`, a data-parallel
group (learner.distributed) whose rank 0 runs the slices one after another and whose other ranks follow it.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time

log = logging.getLogger("learner.service")

IDLE_POLL_SECONDS = 2.0


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")
    import django

    django.setup()


def main(argv: list[str]) -> None:
    if argv[:1] == ["group"]:
        return group()
    _setup()
    from django.conf import settings

    world = settings.LEARNER_WORLD_SIZE
    if world <= 1:
        command = [sys.executable, "-m", "celery", "-A", "sopweb", "worker", "-Q", "learner", "-n", "learner@%h",
                   "--concurrency", "1", "--loglevel", "INFO", "-E"]
    else:
        torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
        command = [torchrun, "--standalone", "--nnodes", "1", "--nproc-per-node", str(world), "-m", "learner.service",
                   "group"]
    os.execv(command[0], command)


def group() -> None:
    """One rank of the group: rank 0 leads (learner.loop's slices, back to back), the others follow it."""
    _die_with_torchrun()
    _setup()
    from learner import distributed, loop

    team = distributed.init()
    if team.rank != 0:
        team.follow()
        return

    def stop(*_):  # torchrun passes SIGTERM to every rank: the followers simply end, rank 0 lets its lease go
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("data-parallel learner: %d processes, rank 0 leads", team.world)
    while True:
        result = loop.run_slice(token=None)
        if result.startswith(("no active run", "busy", "waiting", "lease lost")):
            team.idle()
            time.sleep(IDLE_POLL_SECONDS)


def _die_with_torchrun() -> None:
    """torchrun starts each rank in a session of its own: were torchrun killed (SIGKILL, the OOM killer), its ranks
    would live on, and rank 0 would keep the learner's lease from the service started next. Linux's parent-death
    signal ends a rank with its torchrun."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("this system cannot end the learner's ranks with torchrun; stop them with it")
    if os.getppid() == 1:  # torchrun died before the line above
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Exactly one beat sends periodic tasks however many run (celery-redbeat, sopweb/beat.py): two beats on the same
Redis send each period's task once, from one of them; when that one dies, the other takes over."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from datetime import datetime

from tests.conftest import ROOT, process_env, stop_process, wait_for

SENT = re.compile(r"^(\S+ \S+) INFO celery.beat Scheduler: Sending due task sweep-robots ", re.M)


def start_beat(log, **env):
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "sopweb", "beat", "--loglevel", "INFO"],
                                cwd=ROOT, env=process_env(**env), stdout=out, stderr=subprocess.STDOUT)


def sends(log) -> list[datetime]:
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp in SENT.findall(log.read_text())]


def test_two_beats_send_each_period_once_and_the_standby_takes_over(transactional_db, tmp_path):
    env = {"FLEET_SWEEP_INTERVAL": 1, "BEAT_LOCK_SECONDS": 3}
    logs = [tmp_path / "beat-a.log", tmp_path / "beat-b.log"]
    beats = [start_beat(logs[0], **env), start_beat(logs[1], **env)]
    try:
        wait_for(lambda: len(sends(logs[0])) + len(sends(logs[1])) >= 6, 60, "six sweeps sent")
        counts = [len(sends(log)) for log in logs]
        assert 0 in counts, f"both beats sent: {counts}"  # one holds the lock, the other waits
        active = counts.index(max(counts))
        times = sends(logs[active])
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert min(gaps) > 0.5, gaps  # once per one-second period, never twice
        standby = 1 - active
        beats[active].send_signal(signal.SIGKILL)  # no clean release: the lock must expire
        beats[active].wait()
        wait_for(lambda: len(sends(logs[standby])) >= 3, 60, "the standby beat to take over")
        assert sends(logs[standby])[0] > times[-1]
        assert len(sends(logs[active])) == len(times)  # the dead one sent nothing more
    finally:
        for beat in beats:
            stop_process(beat)

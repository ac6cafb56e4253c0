"""Exactly one beat sends periodic tasks however many run (celery-redbeat, sopweb/beat.py): two beats on the same
Redis send each period's task once, from one of them; when that one dies, the other takes over."""
from __future__ import annotations

import re
import signal
from datetime import datetime

from tests.conftest import BeatProcess, wait_for

SENT = re.compile(r"^(\S+ \S+) INFO celery.beat Scheduler: Sending due task sweep-robots ", re.M)


def sends(log) -> list[datetime]:
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp in SENT.findall(log.read_text())]


def test_two_beats_send_each_period_once_and_the_standby_takes_over(transactional_db, tmp_path):
    env = {"FLEET_SWEEP_INTERVAL": 1, "BEAT_LOCK_SECONDS": 3}
    beats = [BeatProcess(tmp_path, "beat-a", **env), BeatProcess(tmp_path, "beat-b", **env)]
    logs = [b.log for b in beats]
    try:
        wait_for(lambda: len(sends(logs[0])) + len(sends(logs[1])) >= 6, 60, "six sweeps sent")
        counts = [len(sends(log)) for log in logs]
        assert 0 in counts, f"both beats sent: {counts}"  # one holds the lock, the other waits
        active = counts.index(max(counts))
        times = sends(logs[active])
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert min(gaps) > 0.5, gaps  # once per one-second period, never twice
        standby = 1 - active
        beats[active].proc.send_signal(signal.SIGKILL)  # no clean release: the lock must expire
        beats[active].proc.wait()
        wait_for(lambda: len(sends(logs[standby])) >= 3, 60, "the standby beat to take over")
        assert sends(logs[standby])[0] > times[-1]
        assert len(sends(logs[active])) == len(times)  # the dead one sent nothing more
    finally:
        for beat in beats:
            beat.stop()

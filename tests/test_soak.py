"""The soak's quick mode on the real processes (bench/soak.py --quick): 16 robots at real-time pace and 50 people's
dashboards for two minutes, with no error of any kind and no episode lost or stored twice.

It takes 3 to 5 minutes on the 2-core machine, by its load. On a host so overloaded that a fresh actor process's
warm-up outlives the episode task's soft time limit (120 s; about 35 s here at a load average of 8-10) it fails,
and says why: the first episodes are lost (docs/backlog.md, Actors and robots)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# It starts the web process, the workers and beat (through the bench), and needs the machine to itself: it runs
# after the suite's parallel streams (bin/test-suite).
pytestmark = [pytest.mark.e2e, pytest.mark.alone]


def figure(output: str, name: str) -> float:
    """The number on the bench's line `name: N ...`."""
    match = re.search(rf"^{re.escape(name)}: (-?[0-9.]+)", output, re.MULTILINE)
    assert match, f"no {name!r} line in the output:\n{output}"
    return float(match.group(1))


def test_two_minutes_of_sixteen_robots_and_fifty_dashboards_lose_no_episode_and_meet_no_error():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    run = subprocess.run([sys.executable, "bench/soak.py", "--quick"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    output = run.stdout
    assert run.returncode == 0, output + run.stderr[-5000:]

    assert figure(output, "errors") == 0, output
    assert figure(output, "lost episodes") == 0, output
    assert figure(output, "episodes stored more than once") == 0, output
    # Memory is reported, not held to the 10 % goal: two minutes put the baseline 48 s in, while each actor process
    # still builds the scenes of the tasks it has not run yet and the render worker may not have rendered yet, so
    # the growth says more about warm-up than about leaks (the goal is for `--minutes 30`, baseline at minute 5).
    # Only a doubling, which no warm-up explains, fails here.
    assert output.splitlines()[-1].startswith("memory growth: "), output
    assert figure(output, "memory growth") < 100, output

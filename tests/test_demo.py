"""`make demo` from nothing: embedded services, migrations, demo users, every process; Ctrl-C leaves nothing behind."""
from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e  # the whole `make demo`, every process of the Procfile


def log_in(base: str, username: str, password: str, opener=None) -> tuple[str, str]:
    """Log in through the real login form; returns (final URL, page) of the landing page."""
    opener = opener or urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(f"{base}/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    body = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    response = opener.open(f"{base}/login/", data=body.encode(), timeout=10)
    return response.geturl(), response.read().decode()


def group_alive(pgid: int) -> list[str]:
    result = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(pgid)], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_make_demo_serves_every_role_and_ctrl_c_stops_everything(tmp_path):
    var = tmp_path / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # A small base policy: this is about the processes, not the learning (bench/demo_learning.py times that), and
    # the default's minute of pretraining grows to minutes on a machine the rest of the suite keeps busy.
    env.update(SOPWEB_VAR_DIR=str(var), WEB_PORT=str(port), ACTOR_CONCURRENCY="1", WORKER_CONCURRENCY="1",
               LEARNER_BASE_DEMOS="1", LEARNER_BASE_STEPS="100")
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(["make", "--no-print-directory", "demo"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def serving():
            assert demo.poll() is None, log.read_text()
            try:
                return urllib.request.urlopen(f"{base}/login/", timeout=2).status == 200
            except OSError:
                return False

        wait_for(serving, 180, "the demo to serve its login page", interval=0.5)
        printed = log.read_text()
        assert f"sopweb is starting at {base}" in printed
        for username, landing in [("operator", "/fleet/"), ("supervisor", "/fleet/"),
                                  ("annotator", "/review/"), ("admin", "/fleet/")]:
            password = re.search(rf"{username}\s+password: (\S+)", printed).group(1)
            url, page = log_in(base, username, password)
            assert urllib.parse.urlsplit(url).path == landing, (username, url)
            assert f'class="who">{username}' in page
            assert 'data-mode="continuous"' in page  # a fresh demo deploys every version: the fleet learns
        processes = ("actors", "learner", "worker", "background", "beat", "robot")
        wait_for(lambda: all(f"{name}.1" in log.read_text() for name in processes), 60,
                 "every process in the Procfile to start")
        # Beside the in-process robots, one robot runs its own episodes over the API; its tile says so.
        operator = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        log_in(base, "operator", re.search(r"operator\s+password: (\S+)", printed).group(1), operator)
        assert 'badge remote' in operator.open(f"{base}/fleet/", timeout=10).read().decode()

        def remote_episodes():
            snapshot = json.loads(operator.open(f"{base}/fleet/snapshot.json", timeout=10).read())
            return any(r["kind"] == "remote" and r["outcomes"] for r in snapshot["robots"])

        wait_for(remote_episodes, 120, "the remote robot's first episodes", interval=2)
        assert "sopr_" not in log.read_text()  # the token is never printed or logged, by sopweb or the client
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            demo.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise

    wait_for(lambda: not group_alive(demo.pid), 30, "every demo process to exit")
    assert not (var / "postgres" / "postmaster.pid").exists()
    assert not (var / "redis" / "redis.pid").exists()
    assert not (var / "run" / "services.json").exists()

"""The embedded default: a private PostgreSQL and Redis under var/, shared by launchers, stopped by the last one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.e2e  # starts real PostgreSQL and Redis servers

# The child a launcher runs: report the URLs it was given, prove both services answer, wait to be released.
CHILD = """
import json, os, sys, time, pathlib
import psycopg, redis
out = pathlib.Path(sys.argv[1])
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    backend = conn.execute("select pg_postmaster_start_time()::text").fetchone()[0]
redis.Redis.from_url(os.environ["REDIS_URL"]).ping()
out.write_text(json.dumps({"db": os.environ["DATABASE_URL"], "redis": os.environ["REDIS_URL"], "pg_started": backend}))
while not out.with_suffix(".release").exists():
    time.sleep(0.05)
"""


class Launcher:
    def __init__(self, var: Path, name: str):
        self.report = var.parent / f"{name}.json"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env["SOPWEB_VAR_DIR"] = str(var)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sopweb.embedded", "run", "--", sys.executable, "-c", CHILD, str(self.report)],
            cwd=ROOT, env=env, start_new_session=True,
        )

    def urls(self) -> dict:
        wait_for(lambda: self.report.exists() or self.proc.poll() is not None, 120, "the launcher's child")
        assert self.proc.poll() is None, "launcher exited early"
        return json.loads(self.report.read_text())

    def release(self) -> int:
        self.report.with_suffix(".release").touch()
        return self.proc.wait(60)


def services_running(var: Path) -> tuple[bool, bool]:
    pg = (var / "postgres" / "postmaster.pid").exists()
    redis_pid = var / "redis" / "redis.pid"
    alive = False
    if redis_pid.exists():
        try:
            os.kill(int(redis_pid.read_text()), 0)
            alive = True
        except (ProcessLookupError, ValueError):
            pass
    return pg, alive


@pytest.fixture
def var(tmp_path):
    path = tmp_path / "var"
    yield path
    # Never leave servers behind, whatever the test did.
    subprocess.run([sys.executable, "-m", "sopweb.embedded", "stop"], cwd=ROOT,
                   env=dict(os.environ, SOPWEB_VAR_DIR=str(path)), capture_output=True)


def test_two_launchers_share_one_set_of_services_and_the_last_one_stops_them(var):
    first = Launcher(var, "first")
    a = first.urls()
    assert "host=" + str(var / "postgres") in a["db"]  # data and socket under var/postgres
    second = Launcher(var, "second")
    b = second.urls()
    assert a == b  # same servers, same start time: reused, not restarted

    assert first.release() == 0
    assert services_running(var) == (True, True)  # the second launcher still needs them
    with psycopg.connect(b["db"]) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    assert second.release() == 0
    assert services_running(var) == (False, False)


def test_a_killed_launcher_does_not_keep_services_alive_forever(var):
    victim = Launcher(var, "victim")
    first_urls = victim.urls()
    os.killpg(victim.proc.pid, signal.SIGKILL)  # the launcher and its child, no clean-up at all
    victim.proc.wait()

    survivor = Launcher(var, "survivor")
    urls = survivor.urls()
    assert urls["db"] == first_urls["db"]  # the orphaned servers were reused, not corrupted
    assert survivor.release() == 0
    assert services_running(var) == (False, False)


def test_data_survives_a_restart(var):
    first = Launcher(var, "one")
    url = first.urls()["db"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table kept (v int)")
        conn.execute("insert into kept values (42)")
    r = redis.Redis.from_url(first.urls()["redis"])
    r.set("kept", "yes")
    r.save()
    first.release()

    again = Launcher(var, "two")
    urls = again.urls()
    with psycopg.connect(urls["db"]) as conn:
        assert conn.execute("select v from kept").fetchone() == (42,)
    assert redis.Redis.from_url(urls["redis"]).get("kept") == b"yes"
    again.release()


def test_configured_urls_start_nothing(tmp_path):
    """With DATABASE_URL and REDIS_URL set (here: this machine's own servers), nothing is started under var/."""
    db_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url = "redis://127.0.0.1:6379/0"
    try:
        psycopg.connect(db_url, connect_timeout=2).close()
        redis.Redis.from_url(redis_url, socket_timeout=2).ping()
    except (psycopg.Error, redis.RedisError):
        pytest.skip("this machine has no PostgreSQL/Redis of its own on the default ports")
    var = tmp_path / "var"
    out = tmp_path / "child.json"
    out.with_suffix(".release").touch()
    result = subprocess.run(
        [sys.executable, "-m", "sopweb.embedded", "run", "--", sys.executable, "-c", CHILD, str(out)],
        cwd=ROOT, env=dict(os.environ, SOPWEB_VAR_DIR=str(var), DATABASE_URL=db_url, REDIS_URL=redis_url),
        timeout=60,
    )
    assert result.returncode == 0
    assert json.loads(out.read_text())["db"] == db_url
    assert not (var / "postgres").exists() and not (var / "redis").exists()


def test_the_child_exit_code_is_passed_through(var):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run([sys.executable, "-m", "sopweb.embedded", "run", "--", "sh", "-c", "exit 3"],
                            cwd=ROOT, env=dict(env, SOPWEB_VAR_DIR=str(var)), timeout=120)
    assert result.returncode == 3
    assert services_running(var) == (False, False)


def test_the_embedded_redis_refuses_clients_without_its_password(var):
    from urllib.parse import urlsplit

    launcher = Launcher(var, "one")
    url = launcher.urls()["redis"]
    parts = urlsplit(url)
    assert parts.password and len(parts.password) >= 32
    password_file = var / "redis" / "password"
    assert password_file.read_text() == parts.password and password_file.stat().st_mode & 0o077 == 0
    assert (var / "run" / "services.json").stat().st_mode & 0o077 == 0
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=parts.hostname, port=parts.port, socket_timeout=5).ping()
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        redis.Redis(host=parts.hostname, port=parts.port, password="guess", socket_timeout=5).ping()
    assert redis.Redis.from_url(url).ping()
    status = subprocess.run([sys.executable, "-m", "sopweb.embedded", "status"], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, SOPWEB_VAR_DIR=str(var)))
    assert parts.password not in status.stdout + status.stderr and ":***@127.0.0.1" in status.stdout
    assert launcher.release() == 0


def embedded_status(var: Path) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "sopweb.embedded", "status"], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, SOPWEB_VAR_DIR=str(var)), timeout=60)
    return result.returncode, json.loads(result.stdout)["health"]


def test_the_launcher_starts_a_crashed_server_again_and_status_tells_the_truth(var):
    """SIGKILL the embedded Redis, then the embedded PostgreSQL: the launcher that runs the command starts each
    again on the same address and data, and the clients' URLs keep working. A stopped (SIGSTOP) Redis runs but
    does not answer: `status` says so and exits 1; it is left alone, not restarted."""
    launcher = Launcher(var, "one")
    urls = launcher.urls()
    r = redis.Redis.from_url(urls["redis"], socket_timeout=2)
    r.set("kept", "yes")
    r.save()
    assert embedded_status(var) == (0, {"postgres": "up", "redis": "up"})

    redis_pid = int((var / "redis" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)

    def redis_back():
        try:
            return redis.Redis.from_url(urls["redis"], socket_timeout=1).get("kept") == b"yes"
        except redis.RedisError:
            return False

    wait_for(redis_back, 30, "the launcher to start Redis again on its old port")
    assert int((var / "redis" / "redis.pid").read_text()) != redis_pid

    pg_pid = int((var / "postgres" / "postmaster.pid").read_text().split()[0])
    os.kill(pg_pid, signal.SIGKILL)

    def postgres_back():
        try:
            with psycopg.connect(urls["db"], connect_timeout=2) as conn:
                return conn.execute("select 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    wait_for(postgres_back, 90, "the launcher to start PostgreSQL again")
    assert embedded_status(var) == (0, {"postgres": "up", "redis": "up"})

    stalled = int((var / "redis" / "redis.pid").read_text())
    os.kill(stalled, signal.SIGSTOP)
    try:
        code, health = embedded_status(var)
        assert code == 1 and health == {"postgres": "up", "redis": "not answering"}
    finally:
        os.kill(stalled, signal.SIGCONT)
    assert int((var / "redis" / "redis.pid").read_text()) == stalled  # left alone
    assert launcher.release() == 0
    assert services_running(var) == (False, False)

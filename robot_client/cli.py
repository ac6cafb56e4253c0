"""sopweb-robot run --url URL [--token-file F | --token T] [--tasks a,b] [--realtime-factor X] [--state-dir D]

The token is read from SOPWEB_ROBOT_TOKEN, else --token-file, else --token (a command line is visible to other
users of the machine: prefer the first two). It is never printed or logged.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sopweb-robot", description="A simulated robot on sopweb's robot API.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run episodes until stopped")
    run.add_argument("--url", required=True, help="sopweb's address, e.g. http://127.0.0.1:8000")
    run.add_argument("--token", help="the robot's token (prefer SOPWEB_ROBOT_TOKEN or --token-file)")
    run.add_argument("--token-file", type=Path)
    run.add_argument("--tasks", help="comma-separated: run only these of the assigned tasks")
    run.add_argument("--realtime-factor", type=float, default=1.0, help="1: real time; 0: as fast as possible")
    run.add_argument("--state-dir", type=Path, help="checkpoints and the outbox (default ./var/robot-client)")
    run.add_argument("--episodes", type=int, help="stop after this many episodes")
    run.add_argument("--no-socket", action="store_true", help="poll the assignment instead of listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s robot %(levelname)s %(message)s")
    # httpx would log every request's URL, a presigned checkpoint URL's signature included: the client logs what
    # it does itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = os.environ.get("SOPWEB_ROBOT_TOKEN") or (
        args.token_file.read_text().strip() if args.token_file else None) or args.token
    if not token:
        parser.error("no token: set SOPWEB_ROBOT_TOKEN, or pass --token-file or --token")
    if args.realtime_factor < 0:
        parser.error("--realtime-factor must be 0 or more")
    from robot_client.api import Api, Refused
    from robot_client.robot import Robot

    api = Api(args.url, token)
    robot = Robot(api, args.state_dir or Path("var/robot-client"),
                  tasks=args.tasks.split(",") if args.tasks else None, realtime_factor=args.realtime_factor,
                  use_socket=not args.no_socket)
    signal.signal(signal.SIGTERM, lambda *_: robot.stopping.set())
    try:
        robot.run(args.url, token, max_episodes=args.episodes)
    except Refused as exc:
        print(f"sopweb-robot: refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        api.close()
    return 0

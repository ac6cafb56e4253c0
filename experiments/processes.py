"""The system's Celery processes, started the way honcho starts the Procfile's (each in its own session), with the
CPU each one used: for the experiments (one system per run) and the benchmarks that run the whole system."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Process:
    """One Celery process (worker or beat) of the system, in its own process group."""

    def __init__(self, name: str, command: list[str], env: dict, log_dir: Path):
        self.name = name
        with open(log_dir / f"{name}.log", "wb") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._seen: dict[int, int] = {}  # pid -> CPU ticks when last read (children that exit keep their last)

    @classmethod
    def worker(cls, name: str, queues: str, concurrency: int, env: dict, log_dir: Path,
               prefix: str = "bench") -> Process:
        return cls(name, [sys.executable, "-m", "celery", "-A", "sopweb", "worker", "-Q", queues,
                          "--concurrency", str(concurrency), "-n", f"{prefix}-{name}@%h",
                          "--without-mingle", "--without-gossip", "--loglevel", "INFO"], env, log_dir)

    @classmethod
    def beat(cls, env: dict, log_dir: Path) -> Process:
        return cls("beat", [sys.executable, "-m", "celery", "-A", "sopweb", "beat", "--loglevel", "INFO"], env, log_dir)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every process of its session so far — pool children, and the ffmpeg
        encoders renders start in process groups of their own. A process that starts and exits between two
        readings is missed: callers read every few seconds."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[3]) == self.proc.pid:  # its session
                self._seen[int(entry)] = int(fields[11]) + int(fields[12])
        return sum(self._seen.values()) / CLOCK_TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.cpu_seconds()
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def exit_on_sigterm() -> None:
    """SIGTERM ends this process the way Ctrl-C does: `finally` blocks run, so a sweep stopped with `kill` stops its
    run and the run stops the system's processes and drops its database, instead of leaving them behind."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll `condition` until it returns something true (returned), or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")

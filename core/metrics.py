"""What each process counts and times for Prometheus (prometheus_client in multiprocess mode).

Every process that does work (web, actors, learner, default and background workers) writes its counters, histograms
and gauges into memory-mapped files under METRICS_DIR, one set per process id; the web process's `/metrics`
(ops.views) adds them up at scrape time. So a counter is exact whichever process counted: N episodes ingested by
two workers raise `sopweb_episodes_ingested_total` by exactly N. What lives in the database or the broker (robots by
state, heartbeat ages, the deployed version, queue depths) is read at scrape time instead (ops.collectors), never
copied into a process's memory where it would go stale.

The directory is chosen before prometheus_client is imported (it reads PROMETHEUS_MULTIPROC_DIR at import);
`sopweb.embedded run` and the test stacks give each system a fresh one. With METRICS_ENABLED off, every function
here returns at once: the bench (bench/metrics_overhead.py) measures what counting costs against that.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

ENABLED: bool = settings.METRICS_ENABLED
DIRECTORY = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.METRICS_DIR)))
DIRECTORY.mkdir(parents=True, exist_ok=True)

import prometheus_client  # noqa: E402  (after the directory is in the environment)
from prometheus_client import values  # noqa: E402

if values.ValueClass is values.MutexValue:
    # Something imported prometheus_client before the directory was set: metrics made from here on still go to files.
    values.ValueClass = values.MultiProcessValue()

# Latency buckets from a millisecond to half a minute (ingestion is ~1-10 ms; renders take seconds).
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

EPISODES_INGESTED = prometheus_client.Counter(
    "sopweb_episodes_ingested", "Episodes stored, by task, source and outcome (autonomous: succeeded with no "
    "intervention; assisted: succeeded with one; failed)", ["task", "source", "outcome"])
INGEST_SECONDS = prometheus_client.Histogram(
    "sopweb_ingest_seconds", "Time to validate and store one episode", buckets=_FAST)
INGEST_GROUP_SIZE = prometheus_client.Histogram(
    "sopweb_ingest_group_size", "Episodes committed together by group commit (fleet.group_commit), per commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
INGEST_REJECTIONS = prometheus_client.Counter(
    "sopweb_ingest_rejections", "Episodes refused, by reason", ["reason"])
LEARNER_STEPS = prometheus_client.Counter("sopweb_learner_steps", "Gradient steps the learner took")
LEARNER_SAMPLES_PER_SECOND = prometheus_client.Gauge(
    "sopweb_learner_samples_per_second", "Training samples per second, over the latest metric window",
    multiprocess_mode="mostrecent")
LEARNER_LOSS = prometheus_client.Gauge("sopweb_learner_loss", "The learner's latest training loss",
                                       multiprocess_mode="mostrecent")
LEARNER_ONLINE_SHARE = prometheus_client.Gauge(
    "sopweb_learner_online_share", "The resampler's online share omega_on per task", ["task"],
    multiprocess_mode="mostrecent")
LEARNER_STALENESS = prometheus_client.Gauge(
    "sopweb_learner_staleness_versions", "Mean policy-version lag of the online samples trained on",
    multiprocess_mode="mostrecent")
VERSIONS_PUBLISHED = prometheus_client.Counter("sopweb_versions_published", "Policy versions published")
WEBSOCKET_CLIENTS = prometheus_client.Gauge(
    "sopweb_websocket_clients", "Open websockets, by kind (dashboard, robot)", ["kind"], multiprocess_mode="livesum")
EVENT_LAG_SECONDS = prometheus_client.Histogram(
    "sopweb_live_event_lag_seconds", "From a live event's publication to its sending on a dashboard's socket",
    buckets=_FAST)
REPLAY_RENDER_SECONDS = prometheus_client.Histogram(
    "sopweb_replay_render_seconds", "Time to render one episode's replay video", buckets=_SLOW)


def outcome(succeeded: bool, intervened: bool) -> str:
    """The outcome label of an episode: autonomous, assisted or failed."""
    return "failed" if not succeeded else ("assisted" if intervened else "autonomous")


def episode_ingested(task: str, source: str, succeeded: bool, intervened: bool) -> None:
    if ENABLED:
        EPISODES_INGESTED.labels(task, source, outcome(succeeded, intervened)).inc()


@contextmanager
def timing(histogram):
    """Observe the block's duration in `histogram` (when it raised too: a refusal costs time as well)."""
    if not ENABLED:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - start)


def rejected(reason: str) -> None:
    """An episode was refused: counted here, and in the alert rules' per-minute tally (ops.rules reads it; kept
    with metrics off too)."""
    if ENABLED:
        INGEST_REJECTIONS.labels(reason).inc()
    from core import bus

    def tally():
        key = bus.rejections_key(int(time.time() // 60))
        with bus.client().pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 3600)
            pipe.execute()

    bus.degrade(tally)


def learner_step() -> None:
    if ENABLED:
        LEARNER_STEPS.inc()


def learner_window(samples_per_second: float, loss: float, staleness: float | None,
                   online_shares: dict[str, float]) -> None:
    """The learner's latest metric window; staleness is None while it has trained on no online sample."""
    if not ENABLED:
        return
    LEARNER_SAMPLES_PER_SECOND.set(samples_per_second)
    LEARNER_LOSS.set(loss)
    if staleness is not None:
        LEARNER_STALENESS.set(staleness)
    for task, share in online_shares.items():
        LEARNER_ONLINE_SHARE.labels(task).set(share)


def version_published() -> None:
    if ENABLED:
        VERSIONS_PUBLISHED.inc()


def socket_opened(kind: str) -> None:
    if ENABLED:
        WEBSOCKET_CLIENTS.labels(kind).inc()


def socket_closed(kind: str) -> None:
    if ENABLED:
        WEBSOCKET_CLIENTS.labels(kind).dec()


def events_sent(items: list[dict]) -> None:
    """Dashboard deltas just sent: each published one carries its publication time (core.events)."""
    if not ENABLED:
        return
    now = time.time()
    for item in items:
        at = item.get("at")
        if isinstance(at, (int, float)):
            EVENT_LAG_SECONDS.observe(max(0.0, now - at))


def forget_dead_processes() -> None:
    """Live gauges (open sockets) of processes that ended without saying so (a killed web worker) stop counting:
    run before each scrape. Counters and histograms of dead processes stay: what they counted happened."""
    if not ENABLED:
        return
    import re

    from prometheus_client import multiprocess

    for path in DIRECTORY.glob("gauge_live*_*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(DIRECTORY))
        except PermissionError:
            pass  # alive, another user's


def process_exited(pid: int | None = None) -> None:
    """A process ended: its live gauges (open sockets) stop counting."""
    if ENABLED:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), str(DIRECTORY))

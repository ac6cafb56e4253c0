"""The Celery broker is a choice: CELERY_BROKER_URL names RabbitMQ (or another Redis) apart from REDIS_URL. The same
checks run on the default Redis broker and, where a RabbitMQ answers on 127.0.0.1:5672 (RABBITMQ_URL overrides), on
a private virtual host of it made for this test run; where none does, the RabbitMQ cases are skipped and say why."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.utils import timezone

from core import bus
from fleet.models import Robot
from tests.conftest import wait_for

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rabbitmq_vhost():
    """A virtual host of this run's own on the local RabbitMQ (rabbitmqctl), deleted after: queues named `default`,
    `actors`, ... never meet a demo's or the other test stream's."""
    if not _reachable(RABBITMQ_URL):
        pytest.skip(f"no RabbitMQ answers at {urlsplit(RABBITMQ_URL).netloc.split('@')[-1]}: the RabbitMQ broker "
                    "cases are not run (set RABBITMQ_URL to one)")
    vhost = f"sopweb-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{uuid.uuid4().hex[:8]}"
    user = urlsplit(RABBITMQ_URL).username or "guest"
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"], check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"a RabbitMQ answers but this run cannot make a private virtual host with rabbitmqctl ({exc})")
    yield urlunsplit(urlsplit(RABBITMQ_URL)._replace(path="/" + vhost))
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


def forget_queues(app) -> None:
    """The producer's queues and routes are made again from the configuration on next use."""
    for cached in ("queues", "router", "default_queue", "send_task_message"):
        app.amqp.__dict__.pop(cached, None)


@contextlib.contextmanager
def broker_for_everything(settings, url: str):
    """This process's Celery producer, and every process started afterwards (CELERY_BROKER_URL), on `url`."""
    from sopweb.celery import app
    from sopweb.settings import celery_queues

    amqp = urlsplit(url).scheme.startswith("amqp")
    previous = (app.conf.broker_url, app.conf.task_queue_max_priority, app.conf.task_queues,
                os.environ.get("CELERY_BROKER_URL"))
    app.conf.broker_url = settings.CELERY_BROKER_URL = url
    app.conf.task_queue_max_priority = 10 if amqp else None
    app.conf.task_queues = celery_queues(amqp)
    forget_queues(app)
    app._pool = app.amqp._producer_pool = None
    os.environ["CELERY_BROKER_URL"] = url
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.task_queue_max_priority, app.conf.task_queues, saved = previous
        forget_queues(app)
        app._pool = app.amqp._producer_pool = None
        if saved is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved


def purge(queue: str) -> None:
    """Empty a queue of the broker (declared first, as the product declares it: RabbitMQ knows no queue before)."""
    from sopweb.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        declared = app.amqp.queues[queue]
        declared.bind(channel).declare()
        channel.queue_purge(queue)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, settings):
    if request.param == "redis":
        yield "redis", settings.CELERY_BROKER_URL
        return
    url = request.getfixturevalue("rabbitmq_vhost")
    with broker_for_everything(settings, url):
        yield "rabbitmq", url


def test_a_worker_on_the_broker_runs_what_beat_and_views_queue(broker, start_worker, db):
    from fleet.tasks import sweep_robots

    kind, url = broker
    silent = Robot.objects.create(name=f"silent-{kind}", enabled=True, status=Robot.Status.RUNNING,
                                  last_heartbeat=timezone.now() - timezone.timedelta(minutes=10),
                                  status_changed_at=timezone.now() - timezone.timedelta(minutes=10))
    start_worker("control", queues="control")
    sweep_robots.delay()
    wait_for(lambda: Robot.objects.get(pk=silent.pk).status == Robot.Status.OFFLINE, 60,
             f"the sweep to run on a worker over {kind}")


def test_a_render_a_person_waits_for_jumps_the_queue_on_either_broker(broker, start_worker, db, settings):
    """review.models.render_priority gives each broker the numbers it takes first: queued behind three render-ahead
    jobs, the person's render is taken first."""
    from review.models import render_priority
    from tests.celery_probe import record

    kind, url = broker
    settings.BROKER_IS_AMQP = kind == "rabbitmq"
    key, queue = f"test:priority:{uuid.uuid4().hex}", "background"  # the product's queue, declared as workers do
    purge(queue)
    for n in range(3):
        record.apply_async((key, f"ahead-{n}"), queue=queue, priority=render_priority(urgent=False))
    record.apply_async((key, "now"), queue=queue, priority=render_priority(urgent=True))
    start_worker("prio", queues=queue, include="tests.celery_probe")
    wait_for(lambda: bus.client().llen(key) == 4, 60, "the four jobs")
    assert bus.client().lrange(key, 0, 0) == [b"now"], bus.client().lrange(key, 0, -1)


def test_queue_depths_and_readiness_read_the_broker(broker, client, db):
    from ops.collectors import queue_depths
    from tests.celery_probe import record

    kind, url = broker
    purge("background")
    for n in range(3):
        record.apply_async(("test:nobody", str(n)), queue="background")  # no worker serves it here
    try:
        assert queue_depths()["background"] == 3
        ready = client.get("/readyz").json()
        assert ready["checks"]["broker"]["ok"], ready
    finally:
        purge("background")

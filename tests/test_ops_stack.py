"""Operations readiness on the real stack: counters summed exactly over worker processes and served by the web
process; /readyz following Redis down and back; an alert rule run by beat firing once on a real success drop (a bad
version on MuJoCo robots), its webhook signed, retried after a 500, and resolved when the fleet recovers; the webhook
pages in Chromium."""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid

import pytest
from django.core.management import call_command
from django.utils import timezone

from fleet import control
from fleet.models import AUTONOMOUS_SUCCESS, Episode, Robot, Task
from governance import decisions
from governance.models import Alert
from learner.models import PolicyVersion
from ops import webhooks
from ops.models import WebhookDelivery, WebhookEndpoint
from tests.conftest import publish_random_policy, wait_for
from tests.test_governance import make_version
from tests.test_ops import Receiver

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
INGESTED = "sopweb_episodes_ingested_total"


def get(address: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ingested(address: str) -> float:
    status, body = get(address, "/metrics")
    assert status == 200, body
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith(INGESTED + "{"))


def test_twenty_episodes_from_two_worker_processes_raise_the_counter_by_exactly_twenty(start_worker, start_web,
                                                                                      tasks):
    robot = Robot.objects.create(name="sim-counted")
    version = make_version(1)
    web = start_web()
    before = ingested(web.address)
    # The second logs JSON lines (LOG_FORMAT=json), as a log pipeline would read them.
    workers = [start_worker(f"ingest-{n}", queues=f"ingest-{n}", include="tests.celery_probe",
                            **({"LOG_FORMAT": "json"} if n else {})) for n in (0, 1)]
    from tests.celery_probe import ingest_one

    for i in range(20):
        ingest_one.apply_async((str(uuid.uuid4()), tasks[0].env_name, robot.pk, version.pk, i % 3 == 0),
                               queue=f"ingest-{i % 2}")
    wait_for(lambda: Episode.objects.filter(robot=robot).count() == 20, 60, "the workers to store 20 episodes")
    pids = {episode.meta["pid"] for episode in Episode.objects.filter(robot=robot)}
    assert len(pids) == 2 and {w.proc.pid for w in workers} == pids  # two processes did it, ten each
    assert ingested(web.address) - before == 20
    workers[0].stop()  # a process that ended still counted what it did
    assert ingested(web.address) - before == 20
    status, body = get(web.address, "/metrics")
    assert b'sopweb_episodes_ingested_total{outcome="failed",source="online",task="pick-place-v3"}' in body
    records = [json.loads(line) for line in workers[1].log.read_text().splitlines() if line.startswith("{")]
    ready = [r for r in records if r["message"].endswith("ready.")]
    assert ready and ready[0]["process"] == "worker:ingest-1" and ready[0]["level"] == "INFO"
    assert all({"timestamp", "level", "process", "pid", "logger", "message"} <= set(r) for r in records)


def test_readyz_answers_503_while_redis_is_stopped_and_200_once_it_is_back(own_redis, start_web):
    web = start_web(HEALTH_TIMEOUT_SECONDS=1)
    status, body = get(web.address, "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ok", body
    own_redis.kill()
    status, body = get(web.address, "/readyz")
    assert status == 503, body
    checks = json.loads(body)["checks"]
    assert not checks["redis"]["ok"] and not checks["broker"]["ok"] and checks["database"]["ok"]
    assert get(web.address, "/healthz")[0] == 200  # the process itself is up
    own_redis.start()
    status, body = wait_for(lambda: (r := get(web.address, "/readyz"))[0] == 200 and r, 30, "/readyz to recover")
    assert json.loads(body)["status"] == "ok"


def test_a_success_drop_fires_one_signed_webhook_retried_after_a_500_and_resolves_on_recovery(
        start_worker, beat, sam, tmp_path):
    task = Task.objects.create(env_name="button-press-topdown-v3", title="Button press", max_steps=150)
    robots = []
    for name in ("sim-a", "sim-b"):
        robot = Robot.objects.create(name=name)
        robot.tasks.set([task])
        robots.append(robot)
    # v1 is cloned from ten expert demonstrations (it presses the button nearly every time); v2 is untrained.
    call_command("generate_demos", "--per-task", "10", stdout=io.StringIO())
    call_command("pretrain_base", "--demos-per-task", "10", "--steps", "1500", "--deploy", stdout=io.StringIO())
    v1 = PolicyVersion.objects.get(state=PolicyVersion.State.DEPLOYED)
    receiver = Receiver(statuses=(500, 200))
    try:
        hook = WebhookEndpoint.objects.create(name="ops", url=receiver.url, kinds=["success_drop"])
        rules_env = {"ALERT_CHECK_SECONDS": 1, "ALERT_SUCCESS_WINDOW": 10, "ALERT_SUCCESS_BASELINE": 40,
                     "ALERT_SUCCESS_MIN_BASELINE": 10, "ALERT_SUCCESS_MARGIN": 0, "WEBHOOK_RETRY_SECONDS": 0.5,
                     "ALERT_LEARNER_IDLE_MINUTES": 0}
        start_worker("actors", queues="actors", concurrency=2, FLEET_REALTIME_FACTOR=0)
        start_worker("control", queues="control,default", **rules_env)
        beat(**rules_env)
        for robot in robots:
            control.start(robot, sam)
        online = Episode.objects.filter(source=Episode.Source.ONLINE, task=task)
        # Enough of them that the baseline stays clear of the drop even with a window's worth of v2 in it: 0 of 10
        # has a Wilson upper end of 0.28; 30 episodes at 0.8 and 9 failures, a lower end of 0.46.
        wait_for(lambda: online.filter(policy_version=v1).count() >= 30, 240, "30 episodes of the good version")
        assert not Alert.objects.filter(kind=Alert.Kind.SUCCESS_DROP).exists()
        good = online.filter(policy_version=v1)
        rate = good.filter(AUTONOMOUS_SUCCESS).count() / good.count()
        assert rate >= 0.7, f"the good version succeeded alone in only {rate:.0%} of its episodes: no baseline to drop from"

        v2 = publish_random_policy(2, [task.env_name], seed=3)
        deployed_at = timezone.now()
        decisions.deploy_to_fleet(v2, sam, reason="a bad version, on purpose")
        wait_for(lambda: online.filter(policy_version=v2).count() >= 10, 120, "ten episodes of the bad version")
        bad = online.filter(policy_version=v2)
        assert bad.filter(AUTONOMOUS_SUCCESS).count() <= 1, "the untrained version succeeded alone"
        def seen():  # what the rule sees, newest first: version and S(uccess alone) or F
            rows = online.order_by("-finished_at", "-id").values_list(
                "policy_version__number", "outcome", "intervention_steps", "intervention_count")
            return " ".join(f"v{n}{'S' if o == 'success' and not s and not c else 'F'}" for n, o, s, c in rows[:100])

        try:
            alert = wait_for(lambda: Alert.objects.filter(kind=Alert.Kind.SUCCESS_DROP).first(), 240,
                             "the success-drop rule to fire")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}: {seen()}") from None
        # Checks interleave with episodes: v2's first failures may sit in either window (under load, enough of them
        # reach the baseline to bring its rate down to a half). What it must show is the rule's drop: the recent
        # interval's upper end below the baseline's lower end.
        recent, baseline = alert.details["recent"], alert.details["baseline"]
        assert alert.subject == task.env_name and alert.created_at > deployed_at, alert.details
        assert recent["high"] < baseline["low"] and recent["rate"] < baseline["rate"], (alert.details, seen())
        posts = receiver.wait(2, timeout=60)
        assert [p["status"] for p in posts[:2]] == [500, 200] and posts[0]["body"] == posts[1]["body"]
        assert webhooks.verify(hook.secret, posts[1]["body"], posts[1]["headers"]["X-Sopweb-Signature"])
        assert json.loads(posts[1]["body"])["alert"]["id"] == alert.pk

        decisions.roll_back(v2, sam, reason="back to the good one")
        wait_for(lambda: Alert.objects.get(pk=alert.pk).resolved_at is not None, 240, "the incident to resolve")
        resolved = receiver.wait(3, timeout=60)[2]
        assert json.loads(resolved["body"])["event"] == "resolved"
        assert webhooks.verify(hook.secret, resolved["body"], resolved["headers"]["X-Sopweb-Signature"])
        for robot in robots:
            control.stop(robot, sam)
        # Once per incident: one alert, one fired delivery (two attempts), one resolved delivery.
        assert Alert.objects.filter(kind=Alert.Kind.SUCCESS_DROP).count() == 1
        fired = WebhookDelivery.objects.get(event="fired")
        assert fired.status == "delivered" and fired.attempts == 2
        assert WebhookDelivery.objects.get(event="resolved").status == "delivered"
        assert len(receiver.requests) == 3
    finally:
        receiver.close()


def test_the_webhook_pages_in_chromium(browser_session, start_worker, sam):
    receiver = Receiver(statuses=(503, 200))
    try:
        start_worker("default", queues="default", WEBHOOK_RETRY_SECONDS=0.5)
        session = browser_session(sam)
        page = session.page
        page.goto(session.base_url + "/")
        page.click("nav >> text=Webhooks")
        page.fill("input[name=name]", "ops-channel")
        page.fill("input[name=url]", receiver.url)
        page.check("input[name=kinds][value=success_drop]")
        page.check("input[name=kinds][value=auto_rollback]")
        page.click("form.webhook-form button[type=submit]")
        secret = page.inner_text("#webhook-secret").strip()
        endpoint = WebhookEndpoint.objects.get()
        assert secret == endpoint.secret and secret.startswith("whsec_")
        session.screenshot("secret")
        page.click("text=Webhooks >> nth=-1")
        row = page.locator(f'tr[data-webhook="{endpoint.pk}"]')
        session.screenshot("list")
        assert "…" + secret[-4:] in row.inner_text() and secret not in page.content()
        row.locator("button", has_text="Send test").click()
        page.wait_for_selector("table.deliveries")
        wait_for(lambda: WebhookDelivery.objects.filter(status="delivered").exists(), 30, "the test delivery")
        page.reload()
        delivered = page.locator("tr.delivery-delivered")
        assert delivered.count() == 1
        text = delivered.inner_text()
        assert "test" in text and "HTTP 503" in text and "HTTP 200" in text
        session.screenshot("deliveries")
        assert webhooks.verify(secret, receiver.requests[-1]["body"],
                               receiver.requests[-1]["headers"]["X-Sopweb-Signature"])
        assert session.console_errors == []
    finally:
        receiver.close()


def test_a_host_without_a_web_process_serves_its_workers_metrics(start_worker, tasks):
    """serve_metrics: what a robot host's workers counted, without the web process, under the same access rule."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port, process_env, stop_process

    robot, version = Robot.objects.create(name="sim-remote-host"), make_version(1)
    start_worker("ingest", queues="ingest-host", include="tests.celery_probe")
    from tests.celery_probe import ingest_one

    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "serve_metrics", "--port", str(port)], cwd=ROOT,
                              env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "serving" in server.stdout.readline()
        before = ingested(f"127.0.0.1:{port}")
        for _ in range(3):
            ingest_one.apply_async((str(uuid.uuid4()), tasks[0].env_name, robot.pk, version.pk, True),
                                   queue="ingest-host")
        wait_for(lambda: Episode.objects.filter(robot=robot).count() == 3, 60, "three episodes")
        assert ingested(f"127.0.0.1:{port}") - before == 3
        assert get(f"127.0.0.1:{port}", "/other")[0] == 404
    finally:
        stop_process(server)

"""Operations readiness in-process: the alert rules, webhook signing and retries against a real local receiver,
/metrics's access rule and what it counts, /healthz and /readyz, JSON logs, and the supervisors' webhook pages.
The same on the real stack (worker processes, beat, actors) is in test_ops_stack.py."""
from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from core import metrics
from core.models import AuditEvent
from fleet.models import Robot
from governance.models import Alert
from ops import rules, webhooks
from ops.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.test_governance import make_episode, make_version

K = Alert.Kind


def clear_rejections():
    from core import bus

    bus.client().delete(*[bus.rejections_key(int(time.time() // 60) - n) for n in range(60)])


@pytest.fixture(autouse=True)
def quiet_redis_inputs():
    """The rules read Redis as well as the database, and Redis is shared by this stream's earlier tests: tasks no
    worker took (an episode scheduled for a robot) and uploads refused (the gateway's fuzz corpus) would fire rules
    these tests do not expect. Each test starts with every watched queue empty and no refusal counted."""
    from ops.collectors import QUEUES
    from sopweb.celery import app

    with app.connection_for_write() as connection:
        for queue in QUEUES:
            connection.default_channel.queue_purge(queue)
    clear_rejections()


class Receiver:
    """A local HTTP server standing in for Slack: it records each POST (headers, raw body) and answers with the
    next status of `statuses` (the last one repeats)."""

    def __init__(self, statuses=(200,)):
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        self.arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"receiver trouble")
                with receiver.arrived:
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                    receiver.arrived.notify_all()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"the receiver got {len(self.requests)} of {count} POSTs"
                self.arrived.wait(left)
        return self.requests

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=(200,)):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def fleet_rows(tasks):
    from core import bus

    stale = list(bus.client().scan_iter("sopweb:rules:*"))  # an earlier test's "seen at the previous check"
    if stale:
        bus.client().delete(*stale)
    robot = Robot.objects.create(name="sim-1")
    robot.tasks.set(tasks)
    return robot, make_version(1), tasks[0]


def episodes(robot, version, task, outcomes: str, start=None):
    """One online episode per character: A autonomous success, H success with help, F failure; oldest first."""
    start = start or timezone.now() - timedelta(hours=1)
    for i, code in enumerate(outcomes):
        make_episode(robot, version, task, success=code in "AH", helped=code == "H", seed=i,
                     started_at=start + timedelta(seconds=i))


# --- alert rules -------------------------------------------------------------------------------------------------


def test_a_success_drop_fires_once_and_resolves_itself_when_success_recovers(fleet_rows, settings):
    robot, version, task = fleet_rows
    settings.ALERT_SUCCESS_WINDOW, settings.ALERT_SUCCESS_BASELINE, settings.ALERT_SUCCESS_MIN_BASELINE = 20, 60, 20
    settings.ALERT_SUCCESS_MARGIN = 0.05
    episodes(robot, version, task, "A" * 40)
    assert rules.check() == {"fired": 0, "resolved": 0}
    # Successes the expert rescued are not autonomous: twenty of them look like failures to this rule.
    episodes(robot, version, task, "H" * 10 + "F" * 10, start=timezone.now() - timedelta(minutes=30))
    assert rules.check()["fired"] == 1
    alert = Alert.objects.get(kind=K.SUCCESS_DROP)
    assert alert.subject == task.env_name and alert.resolved_at is None and alert.status == Alert.Status.ACTIVE
    assert alert.details["recent"]["successes"] == 0 and alert.details["baseline"]["successes"] == 40
    assert alert.details["recent"]["high"] < alert.details["baseline"]["low"] - 0.05
    assert rules.check()["fired"] == 0 and Alert.objects.filter(kind=K.SUCCESS_DROP).count() == 1  # once
    # Half recovered: still below the baseline's interval, still open.
    episodes(robot, version, task, "A" * 10, start=timezone.now() - timedelta(minutes=20))
    assert rules.check() == {"fired": 0, "resolved": 0}
    episodes(robot, version, task, "A" * 10, start=timezone.now() - timedelta(minutes=10))
    assert rules.check() == {"fired": 0, "resolved": 1}
    alert.refresh_from_db()
    assert alert.resolved_at is not None and alert.status == Alert.Status.ACTIVE  # shown until acknowledged
    verbs = list(AuditEvent.objects.filter(object_type="governance.alert", object_id=str(alert.pk))
                 .values_list("verb", flat=True))
    assert sorted(verbs) == ["alert.raise", "alert.resolve"]
    # The baseline now includes the drop: the same dip again is a new incident only once it is one.
    assert rules.check() == {"fired": 0, "resolved": 0}


def test_a_drop_faster_than_the_checks_still_fires(fleet_rows, settings):
    """Eighty failures between two checks: the last window and the baseline before it are all failures by then,
    so the rule reads everything that arrived since its previous check as recent."""
    robot, version, task = fleet_rows
    settings.ALERT_SUCCESS_WINDOW, settings.ALERT_SUCCESS_BASELINE, settings.ALERT_SUCCESS_MIN_BASELINE = 20, 60, 20
    episodes(robot, version, task, "A" * 40, start=timezone.now() - timedelta(hours=2))
    assert rules.check()["fired"] == 0
    episodes(robot, version, task, "F" * 80)
    assert rules.check()["fired"] == 1
    details = Alert.objects.get(kind=K.SUCCESS_DROP).details
    assert details["recent"] | {"low": 0, "high": 0} == {"successes": 0, "episodes": 80, "rate": 0, "low": 0, "high": 0}
    assert details["baseline"]["successes"] == details["baseline"]["episodes"] == 40
    # The next check, with nothing new, reads the last window again: still a drop, still one incident.
    assert rules.check() == {"fired": 0, "resolved": 0}


def test_a_dip_inside_the_intervals_does_not_fire(fleet_rows, settings):
    robot, version, task = fleet_rows
    settings.ALERT_SUCCESS_WINDOW, settings.ALERT_SUCCESS_BASELINE, settings.ALERT_SUCCESS_MIN_BASELINE = 20, 100, 20
    # 0.9 baseline, then 14 of 20 (0.7): a raw difference of 20 points, but the intervals overlap.
    episodes(robot, version, task, ("A" * 9 + "F") * 10 + "A" * 14 + "F" * 6)
    assert rules.check()["fired"] == 0
    assert not Alert.objects.exists()


def test_a_silent_robot_fires_and_resolves_when_it_reports_again(fleet_rows, settings):
    robot, _, _ = fleet_rows
    settings.FLEET_HEARTBEAT_TIMEOUT = 30
    Robot.objects.filter(pk=robot.pk).update(enabled=True, status=Robot.Status.RUNNING,
                                             last_heartbeat=timezone.now() - timedelta(seconds=90))
    Robot.objects.create(name="stopped-long-ago", enabled=False, last_heartbeat=timezone.now() - timedelta(days=1))
    assert rules.check()["fired"] == 1
    alert = Alert.objects.get(kind=K.ROBOT_SILENT)
    assert alert.subject == "sim-1" and "silent for 90 s" in alert.message
    robot.refresh_from_db()
    robot.heartbeat(Robot.Status.RUNNING)
    assert rules.check() == {"fired": 0, "resolved": 1}
    assert Alert.objects.get(pk=alert.pk).resolved_at is not None


def test_a_learner_that_publishes_nothing_while_data_arrives_fires(fleet_rows, settings):
    robot, version, task = fleet_rows
    settings.ALERT_LEARNER_IDLE_MINUTES = 10
    type(version).objects.filter(pk=version.pk).update(created_at=timezone.now() - timedelta(minutes=30))
    assert rules.check()["fired"] == 0  # no data arrives: nothing to learn from
    episodes(robot, version, task, "AF", start=timezone.now() - timedelta(minutes=1))
    assert rules.check()["fired"] == 1
    assert "published nothing for 10 minutes while 2 episodes arrived" in Alert.objects.get(kind=K.LEARNER_IDLE).message
    make_version(2)
    assert rules.check()["resolved"] == 1


def test_rejected_uploads_above_the_rate_fire(db, settings):
    settings.ALERT_REJECTIONS_PER_MINUTE, settings.ALERT_REJECTIONS_MINUTES = 2.0, 5
    for _ in range(10):
        metrics.rejected("too_large")
    assert rules.check()["fired"] == 0  # 10 in 5 minutes: 2 a minute, not above
    metrics.rejected("untrusted")
    assert rules.check()["fired"] == 1
    assert "11 episodes were refused" in Alert.objects.get(kind=K.INGEST_REJECTIONS).message
    clear_rejections()
    assert rules.check()["resolved"] == 1


def test_a_queue_backlog_fires_and_clears(db, settings):
    from sopweb.celery import app

    settings.ALERT_QUEUE_DEPTH = 3
    for _ in range(4):
        app.send_task("review.render_ahead", queue="background")  # no worker serves it in this test
    try:
        assert rules.check()["fired"] == 1
        assert Alert.objects.get(kind=K.QUEUE_BACKLOG).subject == "background"
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge("background")
    assert rules.check()["resolved"] == 1


def test_two_checks_at_once_open_one_incident(transactional_db, fleet_rows):
    from tests.conftest import at_the_same_instant

    robot, _, _ = fleet_rows
    Robot.objects.filter(pk=robot.pk).update(enabled=True, status=Robot.Status.OFFLINE)
    results = at_the_same_instant(*[lambda: Alert.open_incident(K.ROBOT_SILENT, "sim-1", "silent")] * 4)
    assert sum(isinstance(r, Alert) for r in results) == 1 and all(r is None or isinstance(r, Alert) for r in results)
    assert Alert.objects.filter(kind=K.ROBOT_SILENT).count() == 1


# --- webhooks ------------------------------------------------------------------------------------------------------


def endpoint(url: str, kinds=(K.SUCCESS_DROP, K.AUTO_ROLLBACK), **fields) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(name="ops-channel", url=url, kinds=list(kinds), **fields)


def test_a_fired_alert_is_posted_signed_and_a_server_error_is_retried(transactional_db, receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    hook = receiver(statuses=(500, 200))
    target = endpoint(hook.url)
    endpoint("http://127.0.0.1:9/never", kinds=[K.ROBOT_SILENT])  # wants another kind: gets nothing
    alert = Alert.raise_alert("success of pick-place-v3 dropped", kind=K.SUCCESS_DROP, subject="pick-place-v3")
    delivery = WebhookDelivery.objects.get()  # created on commit, one per endpoint that wants the kind
    assert delivery.endpoint == target and delivery.event == "fired" and delivery.alert == alert
    assert webhooks.attempt(delivery.pk, 0) == settings.WEBHOOK_RETRY_SECONDS  # 500: again after the back-off
    assert webhooks.attempt(delivery.pk, 0) is None  # a repeated message for attempt 1 does nothing
    assert webhooks.attempt(delivery.pk, 1) is None  # 200: delivered
    posts = hook.wait(2)
    assert [p["status"] for p in posts] == [500, 200] and posts[0]["body"] == posts[1]["body"]
    body = posts[1]["body"]
    assert webhooks.verify(target.secret, body, posts[1]["headers"]["X-Sopweb-Signature"])
    assert not webhooks.verify("whsec_another", body, posts[1]["headers"]["X-Sopweb-Signature"])
    payload = json.loads(body)
    assert payload["event"] == "fired" and payload["alert"]["kind"] == "success_drop"
    assert payload["text"].startswith("[sopweb ERROR] autonomous success dropped — pick-place-v3")
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 2
    rows = list(WebhookAttempt.objects.filter(delivery=delivery))
    assert [r.status_code for r in rows] == [500, 200] and rows[0].retry_at is not None and rows[1].ok
    alert.resolve("back to normal")
    resolved = WebhookDelivery.objects.get(event="resolved")
    webhooks.attempt(resolved.pk, 0)
    assert json.loads(hook.wait(3)[2]["body"])["alert"]["resolved_at"] is not None


def test_a_webhook_url_never_reaches_the_logs_and_a_resolution_waits_for_its_firing(db, receiver, settings, caplog):
    hook = receiver(statuses=(429, 200, 200))
    target = endpoint(hook.url)
    alert = Alert.objects.create(message="m", kind=K.SUCCESS_DROP, subject="pick-place-v3")
    fired = webhooks.enqueue(target, webhooks.alert_body(alert, "fired"), event="fired", alert=alert)
    resolved = webhooks.enqueue(target, webhooks.alert_body(alert, "resolved"), event="resolved", alert=alert)
    with caplog.at_level(logging.DEBUG):
        assert webhooks.attempt(resolved.pk, 0) == settings.WEBHOOK_RETRY_SECONDS  # waits: nothing sent
        assert hook.requests == []
        assert webhooks.attempt(fired.pk, 0) == settings.WEBHOOK_RETRY_SECONDS  # 429 without Retry-After
        webhooks.attempt(fired.pk, 1)
        webhooks.attempt(resolved.pk, 0)
    assert [json.loads(r["body"])["event"] for r in hook.wait(3)] == ["fired", "fired", "resolved"]
    assert "secret-path" not in caplog.text and "/hooks/" not in caplog.text
    assert webhooks._retry_after("120") == 120 and webhooks._retry_after("Wed, 21 Oct 2015") == 0


def test_a_lost_delivery_message_is_sent_again_by_the_stale_sweep(db, receiver, monkeypatch):
    hook = receiver()
    delivery = webhooks.enqueue(endpoint(hook.url), "{}", event="test")  # its message never left (no commit here)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=1,  # claimed by a worker that died mid-POST
                                                          created_at=timezone.now() - timedelta(minutes=5))
    sent = []
    monkeypatch.setattr("ops.tasks.deliver_webhook.delay", lambda *args: sent.append(args))
    assert webhooks.requeue_stale() == 1 and sent == [(delivery.pk, 0)]  # the claimed attempt is given back
    assert webhooks.requeue_stale() == 1  # still nobody on it: sent again, and the copies claim one attempt
    assert [webhooks.attempt(*message) for message in sent] == [None, None]
    assert len(hook.wait(1)) == 1 and WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered"
    assert webhooks.requeue_stale() == 0  # delivered: nothing left to send


def test_a_refusal_is_final_and_an_unreachable_receiver_gives_up_after_the_last_attempt(db, receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    refusing = endpoint(receiver(statuses=(404,)).url)
    delivery = webhooks.enqueue(refusing, "{}", event="test")
    assert webhooks.attempt(delivery.pk, 0) is None
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "failed"
    closed = endpoint("http://127.0.0.1:9/closed")  # nothing listens on the discard port
    delivery = webhooks.enqueue(closed, "{}", event="test")
    assert webhooks.attempt(delivery.pk, 0) is not None
    assert webhooks.attempt(delivery.pk, 1) is None
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 2
    assert all(row.status_code is None and "Connect" in row.error for row in delivery.attempt_rows.all())


# --- /metrics, /healthz, /readyz -----------------------------------------------------------------------------------


def scrape(client, **headers) -> dict[str, float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    values = {}
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_count_ingested_episodes_exactly_and_read_the_fleet(client, tasks, settings,
                                                                   django_capture_on_commit_callbacks):
    from datetime import datetime
    from datetime import timezone as tz

    from fleet.ingest import EpisodeRejected, ingest_episode
    from tests.factories import make_arrays

    robot = Robot.objects.create(name="sim-metrics", enabled=True, status=Robot.Status.RUNNING,
                                 last_heartbeat=timezone.now())
    version = make_version(7, state="deployed")
    key = 'sopweb_episodes_ingested_total{outcome="%s",source="online",task="pick-place-v3"}'
    before = scrape(client)
    now = datetime.now(tz.utc)
    committed = django_capture_on_commit_callbacks(execute=True)
    committed.__enter__()
    for i, success_at in enumerate((None, 30, 30)):
        arrays = make_arrays(steps=50, success_at=success_at)
        if i == 2:
            arrays["intervention"][:] = False
            arrays["intervention_source"][:] = 0
        ingest_episode(uuid=f"00000000-0000-0000-0000-00000000000{i}", task="pick-place-v3", seed=i,
                       outcome="success" if success_at else "timeout", arrays=arrays, started_at=now,
                       finished_at=now, robot_id=robot.pk, policy_version_id=version.pk)
    with pytest.raises(EpisodeRejected):
        ingest_episode(uuid="not-a-uuid", task="pick-place-v3", seed=0, outcome="timeout", arrays=make_arrays(),
                       started_at=now, finished_at=now)
    committed.__exit__(None, None, None)
    after = scrape(client)
    delta = lambda name: after.get(name, 0) - before.get(name, 0)  # noqa: E731
    assert delta(key % "failed") == 1 and delta(key % "assisted") == 1 and delta(key % "autonomous") == 1
    assert delta('sopweb_ingest_rejections_total{reason="invalid"}') == 1
    assert delta("sopweb_ingest_seconds_count") == 4
    assert after["sopweb_deployed_version"] == 7
    assert after['sopweb_robots{state="policy"}'] == 1
    assert 0 <= after['sopweb_robot_heartbeat_age_seconds{kind="sim",robot="sim-metrics"}'] < 60
    assert 'sopweb_celery_queue_depth{queue="actors"}' in after


def test_metrics_answer_only_allowed_networks_or_the_token(client, db, settings):
    import ipaddress

    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    assert client.get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "a-long-metrics-token-0123"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token-0123456789").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer a-long-metrics-token-0123").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    settings.METRICS_ENABLED = False
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 404


def test_health_endpoints_need_no_login_and_name_what_is_down(client, db, settings):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    assert {name for name, check in ready.json()["checks"].items() if check["ok"]} == {
        "database", "migrations", "redis", "broker"}
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    settings.HEALTH_TIMEOUT_SECONDS = 0.5
    down = client.get("/readyz")
    assert down.status_code == 503 and down.json()["status"] == "unavailable"
    assert not down.json()["checks"]["redis"]["ok"] and "Connection" in down.json()["checks"]["redis"]["error"]
    outside = client.get("/readyz", REMOTE_ADDR="203.0.113.9")  # not a monitoring network: no host names, no why
    assert outside.status_code == 503 and outside.json()["checks"]["redis"] == {
        "ok": False, "ms": outside.json()["checks"]["redis"]["ms"]}
    assert client.post("/readyz").status_code == 405


def test_json_logs_carry_the_context(capsys):
    from core.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sopweb.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("stored episode %s", "abc", extra={"robot": "sim-1", "episode": "abc", "version": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert first["message"] == "stored episode abc" and first["level"] == "WARNING"
    assert first["logger"] == "sopweb.test.json" and first["robot"] == "sim-1" and first["version"] == 3
    assert first["timestamp"].endswith("+00:00") and first["process"] and first["pid"]
    assert "ValueError: boom" in second["exc_info"]


# --- the webhook pages -----------------------------------------------------------------------------------------------


def test_a_supervisor_adds_a_webhook_sees_its_secret_once_and_sends_a_test(client, sam, olivia, receiver,
                                                                            django_capture_on_commit_callbacks):
    hook = receiver()
    client.force_login(olivia)
    assert client.get("/ops/webhooks/").status_code == 403
    assert client.post("/ops/webhooks/", {"name": "x", "url": hook.url, "kinds": ["success_drop"]}).status_code == 403
    client.force_login(sam)
    bad = client.post("/ops/webhooks/", {"name": "x", "url": "ftp://example.com/x", "kinds": ["success_drop"]})
    assert bad.status_code == 400 and b"http:// or https://" in bad.content
    bad = client.post("/ops/webhooks/", {"name": "x", "url": hook.url, "kinds": ["no_such_kind"]})
    assert bad.status_code == 400 and not WebhookEndpoint.objects.exists()
    made = client.post("/ops/webhooks/", {"name": "ops-channel", "url": hook.url,
                                          "kinds": ["success_drop", "auto_rollback"], "active": "on"})
    assert made.status_code == 200 and made["Cache-Control"] == "no-store"
    target = WebhookEndpoint.objects.get()
    assert target.secret.encode() in made.content and target.created_by == sam
    listing = client.get("/ops/webhooks/").content.decode()
    assert target.secret not in listing and target.secret_hint in listing
    assert "secret-path" not in listing and "http://127.0.0.1:" in listing  # the URL's path may be a secret
    assert AuditEvent.objects.filter(verb="webhook.create").count() == 1
    with pytest.MonkeyPatch.context() as patch:
        sent = []
        patch.setattr("ops.tasks.deliver_webhook.delay", lambda *args: sent.append(args))
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/ops/webhooks/{target.pk}/test/")
    assert response.status_code == 302 and response["Location"] == f"/ops/webhooks/{target.pk}/deliveries/"
    delivery = WebhookDelivery.objects.get(event="test")
    assert sent == [(delivery.pk, 0)]
    webhooks.attempt(delivery.pk, 0)
    assert webhooks.verify(target.secret, hook.wait(1)[0]["body"], hook.requests[0]["headers"]["X-Sopweb-Signature"])
    log_page = client.get(f"/ops/webhooks/{target.pk}/deliveries/").content.decode()
    assert "delivered" in log_page and "HTTP 200" in log_page
    edit = client.get(f"/ops/webhooks/{target.pk}/").content.decode()
    assert "secret-path" not in edit and target.secret not in edit  # the stored URL is not sent back
    saved = client.post(f"/ops/webhooks/{target.pk}/", {"name": "renamed", "url": "", "kinds": ["robot_silent"]})
    assert saved.status_code == 302
    target.refresh_from_db()
    assert target.url == hook.url and target.name == "renamed" and target.kinds == ["robot_silent"]
    assert not target.active  # an unticked box is a paused endpoint


def test_the_grafana_dashboard_plots_only_metrics_the_product_exposes(client, db):
    import re
    from pathlib import Path

    import prometheus_client

    from tests.conftest import ROOT

    dashboard = json.loads(Path(ROOT / "deploy" / "grafana" / "sopweb-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|total|count|sum)$", "", name) for expr in exprs
            for name in re.findall(r"\bsopweb_[a-z_]+", expr)}
    declared = {getattr(metrics, name)._name for name in dir(metrics)
                if isinstance(getattr(metrics, name), prometheus_client.metrics.MetricWrapperBase)}
    scraped = {line.split()[2] for line in client.get("/metrics").content.decode().splitlines()
               if line.startswith("# TYPE sopweb_")}  # every family, with samples or not
    exposed = declared | {re.sub(r"_(bucket|total|count|sum|created)$", "", name) for name in scraped}
    assert len(used) >= 15 and used <= exposed, used - exposed


def test_refused_uploads_are_counted_by_reason(client, tasks, olivia, settings):
    import uuid as uuid_lib

    from tests.test_gateway import episode_params, payload, remote_robot

    version = make_version(1, state="deployed")
    robot, token = remote_robot("remote-counted", tasks, olivia)
    from fleet import control

    control.assign_version(robot, version, olivia, reason="test")
    before = scrape(client)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    settings.API_MAX_EPISODE_BYTES = 2048
    big = client.put(f"/api/v1/episodes/{uuid_lib.uuid4()}", data=b"\0" * 4096,
                     content_type="application/octet-stream", QUERY_STRING=urlencode(episode_params(1)), **auth)
    assert big.status_code == 413
    settings.API_MAX_EPISODE_BYTES = 8 * 1024 * 1024
    stale = client.put(f"/api/v1/episodes/{uuid_lib.uuid4()}", data=payload(),
                       content_type="application/octet-stream", QUERY_STRING=urlencode(episode_params(9)), **auth)
    assert stale.status_code == 422 and stale.json()["error"] == "untrusted", stale.content
    after = scrape(client)
    for reason in ("too_large", "untrusted"):
        key = f'sopweb_ingest_rejections_total{{reason="{reason}"}}'
        assert after.get(key, 0) - before.get(key, 0) == 1, reason

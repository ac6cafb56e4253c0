"""The robot gateway over HTTP against the real web process: enrolment, tokens, assignment, checkpoints, uploads."""
from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import pytest
from django.utils import timezone

from core import bus
from core.models import AuditEvent
from fleet import control
from fleet.models import Episode, Robot, Task
from fleet.sim import episode_data
from gateway import credentials
from gateway.models import RobotToken
from governance.decisions import deploy_to_fleet
from tests.conftest import publish_random_policy, session_cookie
from tests.factories import TASK_NAMES, make_arrays


def api(address: str, token: str | None = None, **headers) -> httpx.Client:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=f"http://{address}", headers=headers, timeout=30)


def remote_robot(name: str, tasks, actor=None) -> tuple[Robot, str]:
    robot = control.add(name, tasks, actor, kind=Robot.Kind.REMOTE)
    _, token = credentials.issue(robot, actor)
    return robot, token


def episode_params(version_number: int, **overrides) -> dict:
    now = timezone.now()
    return {"task": "pick-place-v3", "seed": 11, "outcome": "failure", "version": version_number,
            "started_at": (now - timedelta(seconds=3)).isoformat(), "finished_at": now.isoformat(), **overrides}


def payload(**arrays_overrides) -> bytes:
    return episode_data.encode({**make_arrays(60), **arrays_overrides})


@pytest.fixture
def fleet(tasks, olivia):
    version = publish_random_policy(1, TASK_NAMES)
    deploy_to_fleet(version, reason="base")
    alpha, alpha_token = remote_robot("remote-a", tasks, olivia)
    beta, beta_token = remote_robot("remote-b", tasks, olivia)
    return {"version": version, "a": alpha, "a_token": alpha_token, "b": beta, "b_token": beta_token}


def test_an_operator_enrols_a_remote_robot_and_sees_its_token_once(client, olivia, tasks):
    client.force_login(olivia)
    response = client.post("/robots/enrol/", {"name": "arm-7", "tasks": TASK_NAMES})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    token = response.context["token"]
    robot = Robot.objects.get(name="arm-7")
    assert robot.kind == Robot.Kind.REMOTE and token.startswith("sopr_") and token in response.content.decode()
    row = RobotToken.objects.get(robot=robot)
    assert token.split("_", 2)[2] not in json.dumps(list(RobotToken.objects.values()), default=str)  # only a hash
    assert row.secret_sha256 == hashlib.sha256(token.split("_", 2)[2].encode()).hexdigest()
    assert AuditEvent.objects.filter(verb="robot.token_issue", object_id=str(robot.pk), actor=olivia).exists()
    page = client.get(f"/robots/{robot.pk}/credentials/").content.decode()
    assert row.key in page and token not in page  # its credentials page shows the key, never the token
    # A bad name changes nothing.
    assert client.post("/robots/enrol/", {"name": "bad name!", "tasks": TASK_NAMES[:1]}).status_code == 400
    assert Robot.objects.count() == 1


def test_rotation_and_revocation_are_audited_and_take_effect_at_once(web_server, fleet, olivia, client):
    robot, old = fleet["a"], fleet["a_token"]
    with api(web_server, old) as http:
        assert http.get(f"/api/v1/robots/{robot.pk}/assignment").status_code == 200
        client.force_login(olivia)
        response = client.post(f"/robots/{robot.pk}/tokens/rotate/", {"reason": "laptop lost"})
        new = response.context["token"]
        assert http.get(f"/api/v1/robots/{robot.pk}/assignment").status_code == 401  # the old one, at once
    with api(web_server, new) as http:
        assert http.get(f"/api/v1/robots/{robot.pk}/assignment").status_code == 200
        key = new.split("_")[1]
        client.post(f"/robots/{robot.pk}/tokens/{key}/revoke/", {"reason": "decommissioned"})
        refused = http.get(f"/api/v1/robots/{robot.pk}/assignment")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    verbs = list(AuditEvent.objects.filter(object_id=str(robot.pk), verb__startswith="robot.token")
                 .order_by("id").values_list("verb", flat=True))
    assert verbs == ["robot.token_issue", "robot.token_revoke", "robot.token_issue", "robot.token_revoke"]


def test_who_may_call_what(web_server, fleet, olivia):
    a, b = fleet["a"], fleet["b"]
    with api(web_server) as anonymous:
        response = anonymous.get(f"/api/v1/robots/{a.pk}/assignment")
        assert response.status_code == 401 and set(response.json()) == {"error", "detail"}
        assert response.headers["WWW-Authenticate"] == "Bearer"
    with api(web_server, "sopr_0123456789ab_not-the-secret") as forged:
        assert forged.get(f"/api/v1/robots/{a.pk}/assignment").status_code == 401
    _, expired = credentials.issue(a, olivia, expires_at=timezone.now() - timedelta(seconds=1))
    with api(web_server, expired) as late:
        assert late.get(f"/api/v1/robots/{a.pk}/assignment").status_code == 401
    with api(web_server, fleet["a_token"]) as http:
        other = http.get(f"/api/v1/robots/{b.pk}/assignment")
        assert other.status_code == 403 and other.json()["error"] == "forbidden"
        assert http.get("/fleet/", follow_redirects=False).status_code == 302  # a token opens no web page
    # A person's session does not open the API.
    with api(web_server, Cookie=session_cookie(olivia)) as session:
        assert session.get("/fleet/").status_code == 200  # the session is good for the pages
        refused = session.get(f"/api/v1/robots/{a.pk}/assignment")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def test_the_assignment_carries_version_tasks_and_the_operators_commands(web_server, fleet, olivia):
    robot = fleet["a"]
    with api(web_server, fleet["a_token"]) as http:
        first = http.get(f"/api/v1/robots/{robot.pk}/assignment").json()
        assert first["version"]["number"] == 1 and first["version"]["sha256"] == fleet["version"].checkpoint_sha256
        assert [t["name"] for t in first["tasks"]] == TASK_NAMES and first["commands"] == ["stop"]
        control.start(robot, olivia)
        beat = http.post(f"/api/v1/robots/{robot.pk}/heartbeat",
                         json={"status": "running", "task": "pick-place-v3", "version": 1, "step": 40})
        assert beat.status_code == 200 and beat.json()["commands"] == []
        robot.refresh_from_db()
        assert robot.status == Robot.Status.RUNNING and robot.last_heartbeat is not None
        progress = json.loads(bus.client().hget(bus.PROGRESS_KEY, robot.pk))
        assert progress["step"] == 40 and progress["remote"] is True  # what the fleet tile shows
        control.take_over(robot, olivia)
        assert http.get(f"/api/v1/robots/{robot.pk}/assignment").json()["commands"] == ["take_over"]
        control.pause(robot, olivia)
        assert http.get(f"/api/v1/robots/{robot.pk}/assignment").json()["commands"] == ["pause", "abort",
                                                                                        "take_over"]
        refused = http.post(f"/api/v1/robots/{robot.pk}/heartbeat", json={"status": "flying"})
        assert refused.status_code == 422 and "status" in refused.json()["detail"]


def test_a_checkpoint_downloads_whole_resumes_by_range_and_matches_its_sha256(web_server, fleet):
    robot, version = fleet["a"], fleet["version"]
    with api(web_server, fleet["a_token"]) as http:
        described = http.get(f"/api/v1/robots/{robot.pk}/assignment").json()["version"]
        whole = http.get(described["url"])
        assert whole.status_code == 200 and len(whole.content) == described["size"]
        assert hashlib.sha256(whole.content).hexdigest() == version.checkpoint_sha256
        assert whole.headers["ETag"] == f'"{version.checkpoint_sha256}"'
        half = described["size"] // 2
        head = http.get(described["url"], headers={"Range": f"bytes=0-{half - 1}"})
        tail = http.get(described["url"], headers={"Range": f"bytes={half}-", "If-Range": whole.headers["ETag"]})
        assert (head.status_code, tail.status_code) == (206, 206)
        assert head.content + tail.content == whole.content  # a broken download resumes where it stopped
        assert http.get(described["url"], headers={"If-None-Match": whole.headers["ETag"]}).status_code == 304
        assert http.get(described["url"], headers={"Range": f"bytes={described['size']}-"}).status_code == 416
        newer = publish_random_policy(2, TASK_NAMES, seed=2)
        assert http.get(f"/api/v1/robots/{robot.pk}/checkpoints/{newer.number}").status_code == 403
        assert http.get(f"/api/v1/robots/{robot.pk}/checkpoints/99").status_code == 404


def test_an_uploaded_episode_is_stored_once_and_the_server_decides_what_it_trusts(web_server, fleet, olivia):
    robot, version = fleet["a"], fleet["version"]
    key = str(uuid.uuid4())
    with api(web_server, fleet["a_token"]) as http:
        first = http.put(f"/api/v1/episodes/{key}", params=episode_params(1), content=payload())
        assert first.status_code == 201, first.text
        again = http.put(f"/api/v1/episodes/{key}", params=episode_params(1), content=payload())
        assert again.status_code == 200 and again.json() == {"episode": first.json()["episode"], "created": False}
        stored = Episode.objects.get(uuid=key)
        assert (stored.robot_id, stored.policy_version_id, stored.source) == (robot.pk, version.pk, "online")
        assert stored.meta["via"] == "api"

        for params, words in [(episode_params(1, source="evaluation"), "must name an unfinished evaluation item"),
                              (episode_params(1, source="offline_demo"), "source 'offline_demo'"),
                              (episode_params(7), "version 7 is not assigned")]:
            refused = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=params, content=payload())
            assert refused.status_code == 422 and words in refused.json()["detail"], refused.text
        shelf = Task.objects.filter(env_name="shelf-place-v3")
        for change, undo in [(lambda: robot.tasks.remove(*shelf), lambda: robot.tasks.add(*shelf)),
                             (lambda: shelf.update(enabled=False), lambda: shelf.update(enabled=True))]:
            change()  # the robot's tasks are read with its token, on every request
            refused = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=episode_params(1, task="shelf-place-v3"),
                               content=payload())
            assert refused.status_code == 422 and "task 'shelf-place-v3' is not one of" in refused.json()["detail"]
            undo()
        annotated = make_arrays(60)
        annotated["intervention_source"][5:9] = 3  # ANNOTATOR
        refused = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=episode_params(1),
                           content=episode_data.encode(annotated))
        assert refused.status_code == 422 and "annotator" in refused.json()["detail"]
    with api(web_server, fleet["b_token"]) as other:  # robot B cannot claim robot A's episode
        assert other.put(f"/api/v1/episodes/{key}", params=episode_params(1), content=payload()).status_code == 403
    assert Episode.objects.count() == 1


def test_an_upload_ends_the_takeover_that_reached_its_episode_and_writes_nothing_without_one(
        client, fleet, olivia, django_capture_on_commit_callbacks):
    robot, token = fleet["a"], fleet["a_token"]
    Robot.objects.filter(pk=robot.pk).update(status=Robot.Status.RUNNING, enabled=True)
    robot.refresh_from_db()

    def upload():
        response = client.put(f"/api/v1/episodes/{uuid.uuid4()}?{urlencode(episode_params(1))}", data=payload(),
                              content_type="application/octet-stream", HTTP_AUTHORIZATION=f"Bearer {token}")
        assert response.status_code == 201, response.content
        return Robot.objects.get(pk=robot.pk)

    after = upload()  # no takeover: the robot's row is not written (the upload pays no UPDATE for nothing)
    assert (after.status, after.status_changed_at) == (Robot.Status.RUNNING, robot.status_changed_at)

    with django_capture_on_commit_callbacks(execute=True):
        control.take_over(robot, olivia, reason="it is stuck")
    assert bus.client().exists(bus.takeover_key(robot.pk))
    after = upload()  # the episode the takeover reached: the request is spent, the policy has the next one
    assert after.status == Robot.Status.RUNNING and not bus.client().exists(bus.takeover_key(robot.pk))
    assert after.status_changed_at > robot.status_changed_at


def test_limits_answer_413_and_429(start_web, fleet):
    server = start_web(API_MAX_EPISODE_BYTES=4096, API_RATE_LIMIT=5, API_RATE_WINDOW=60)
    robot = fleet["a"]
    with api(server.address, fleet["a_token"]) as http:
        big = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=episode_params(1), content=b"x" * 5000)
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        # Refused before it was read, so before the token and the rate limit: it cost the robot no request.
        statuses = [http.get(f"/api/v1/robots/{robot.pk}/assignment").status_code for _ in range(6)]
        assert statuses[-1] == 429 and statuses.count(429) == 1
        limited = http.get(f"/api/v1/robots/{robot.pk}/assignment")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60 and limited.json()["error"] == "rate_limited"
    with api(server.address, fleet["b_token"]) as other:  # the limit is per robot
        assert other.get(f"/api/v1/robots/{fleet['b'].pk}/assignment").status_code == 200
    assert Episode.objects.count() == 0


def _response_head(sock: socket.socket) -> bytes:
    """What the server answers, up to its body's end (the server closes the connection after it)."""
    sock.settimeout(30)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_an_oversized_body_is_refused_before_it_is_read(start_web, fleet):
    server = start_web(API_MAX_EPISODE_BYTES=4096)
    host, port = server.address.split(":")
    target = f"/api/v1/episodes/{uuid.uuid4()}?{urlencode(episode_params(1))}"
    head = (f"PUT {target} HTTP/1.1\r\nHost: {server.address}\r\nAuthorization: Bearer {fleet['a_token']}\r\n"
            f"Content-Type: application/octet-stream\r\n")
    # It declares a gigabyte and sends none of it: the answer comes without waiting for the body.
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((head + f"Content-Length: {1 << 30}\r\n\r\n").encode())
        answer = _response_head(sock)
    status, body = answer.split(b"\r\n", 1)[0], answer.split(b"\r\n\r\n", 1)[1]
    assert b" 413 " in status and json.loads(body) == {
        "error": "too_large", "detail": f"the request body is {1 << 30} bytes; the robot API takes at most 4096"}
    # Chunked, with no length declared: refused once it streams past the limit, and the connection is closed
    # while the client would still be sending (it sent 8 KiB of a body that never ends).
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        for _ in range(8):
            sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        answer = _response_head(sock)
    assert b" 413 " in answer.split(b"\r\n", 1)[0] and b'"too_large"' in answer
    # A malformed length is a 400 (the HTTP parser's, before the wrapper's own check), and the server still serves.
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((head + "Content-Length: lots\r\n\r\n").encode())
        answer = _response_head(sock)
    assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400",)
    with api(server.address, fleet["a_token"]) as http:
        assert http.get(f"/api/v1/robots/{fleet['a'].pk}/assignment").status_code == 200
    assert Episode.objects.count() == 0


def test_the_openapi_schema_validates_and_the_docs_are_served(web_server, fleet):
    from openapi_spec_validator import validate

    def unique(pairs):  # the docs page's YAML parser refuses a key written twice, which json.loads would let pass
        assert len({key for key, _ in pairs}) == len(pairs), f"duplicate keys in {[key for key, _ in pairs]}"
        return dict(pairs)

    with api(web_server) as http:
        schema = json.loads(http.get("/api/schema/").text, object_pairs_hook=unique)
        validate(schema)
        assert json.loads(http.get("/api/v1/openapi.json").text, object_pairs_hook=unique) == schema
        assert {"/api/v1/episodes/{episode_uuid}", "/api/v1/robots/{robot_id}/assignment"} <= set(schema["paths"])
        docs = http.get("/api/v1/docs")
        assert docs.status_code == 200 and "cdn." not in docs.text  # served from our own static files
        # No other site frames the docs page, and it runs only this site's scripts (the robot API's own chain).
        assert docs.headers["X-Frame-Options"] == "DENY"
        assert "script-src 'self'" in docs.headers["Content-Security-Policy"]
    # A Host the server does not serve (ALLOWED_HOSTS) is refused before any robot endpoint runs.
    assignment = f"/api/v1/robots/{fleet['a'].pk}/assignment"
    with api(web_server, fleet["a_token"], Host="fleet.example.org") as http:
        refused = http.get(assignment)
        assert refused.status_code == 400 and refused.json()["error"] == "bad_request"
        assert "ALLOWED_HOSTS" in refused.json()["detail"]
    with api(web_server, fleet["a_token"]) as http:
        assert http.get(assignment).status_code == 200
        # A path no endpoint has: the API's JSON error too, not a page.
        missing = http.get("/api/v1/robots/no-such-thing")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_the_robot_socket_pushes_commands_at_once_and_closes_on_revocation(web_server, fleet, olivia):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    robot, url = fleet["a"], f"ws://{web_server}/ws/robot/"
    with connect(url, additional_headers={"Authorization": f"Bearer {fleet['a_token']}"}) as socket:
        first = json.loads(socket.recv(timeout=10))
        assert first["event"] == "assignment" and first["data"]["version"]["number"] == 1
        control.start(robot, olivia)
        assert json.loads(socket.recv(timeout=10))["data"]["commands"] == []  # started: "stop" is gone
        control.pause(robot, olivia)
        assert "pause" in json.loads(socket.recv(timeout=10))["data"]["commands"]
        credentials.revoke(RobotToken.objects.get(robot=robot), olivia, reason="stolen")
        assert json.loads(socket.recv(timeout=10)) == {"event": "revoked"}
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 4401
    # The other robot authenticates with its first message (for libraries that cannot set headers).
    with connect(url) as socket:
        socket.send(json.dumps({"type": "auth", "token": fleet["b_token"]}))
        assert json.loads(socket.recv(timeout=10))["data"]["robot"]["id"] == fleet["b"].pk
    with connect(url) as socket:
        socket.send(json.dumps({"type": "auth", "token": "sopr_nope_nope"}))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 4401
    with pytest.raises(InvalidStatus):  # a bad token in the header: the handshake itself is refused
        connect(url, additional_headers={"Authorization": "Bearer sopr_nope_nope"}).close()


def test_a_robot_socket_closes_when_its_token_expires_or_is_found_revoked_and_keeps_four(web_server, fleet, olivia):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from gateway.consumers import CLOSE_REPLACED, ROBOT_SOCKETS

    robot, url = fleet["b"], f"ws://{web_server}/ws/robot/"
    _, brief = credentials.issue(robot, olivia, expires_at=timezone.now() + timedelta(seconds=5))
    with connect(url, additional_headers={"Authorization": f"Bearer {brief}"}) as socket:
        assert json.loads(socket.recv(timeout=10))["event"] == "assignment"
        assert json.loads(socket.recv(timeout=20)) == {"event": "expired"}  # at its expiry, unprompted
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 4401
    # A revocation whose message never came (Redis was away when it was published): the next push finds it.
    with connect(url, additional_headers={"Authorization": f"Bearer {fleet['b_token']}"}) as socket:
        assert json.loads(socket.recv(timeout=10))["event"] == "assignment"
        RobotToken.objects.filter(robot=robot, revoked_at=None).update(revoked_at=timezone.now())
        control.start(robot, olivia)  # a push
        assert json.loads(socket.recv(timeout=10)) == {"event": "revoked"}
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 4401
    # One more socket than a robot may keep: its oldest is closed, the others stay.
    _, token = credentials.issue(robot, olivia)
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(ROBOT_SOCKETS + 1):
            sockets.append(stack.enter_context(connect(url, additional_headers={"Authorization": f"Bearer {token}"})))
            assert json.loads(sockets[-1].recv(timeout=10))["event"] == "assignment"
        with pytest.raises(ConnectionClosed) as closed:
            sockets[0].recv(timeout=10)
        assert closed.value.rcvd.code == CLOSE_REPLACED
        control.pause(robot, olivia)
        for socket in sockets[1:]:
            assert "pause" in json.loads(socket.recv(timeout=10))["data"]["commands"]


def test_a_remote_robot_runs_evaluation_items_it_is_handed_and_only_those(web_server, fleet, sam):
    from governance import decisions
    from governance.models import EvaluationItem

    robot = fleet["a"]
    candidate = publish_random_policy(2, TASK_NAMES, seed=2)
    decisions.nominate(candidate, sam)  # its evaluation starts: items for the candidate and the deployed version
    clean = make_arrays(60)
    clean["intervention_source"][:] = 0
    clean["intervention"][:] = False  # the policy alone: an evaluation result that counts
    with api(web_server, fleet["a_token"]) as http:
        work = http.post(f"/api/v1/robots/{robot.pk}/episodes/next").json()
        assert work["kind"] == "evaluation" and work["gate"]["enabled"] is False
        item = EvaluationItem.objects.get(pk=work["item"])
        assert (item.robot_id, item.task.env_name, item.seed) == (robot.pk, work["task"], work["seed"])
        # Asked again before it ran the item (its download failed, say): the same item, not a second one.
        assert http.post(f"/api/v1/robots/{robot.pk}/episodes/next").json()["item"] == item.pk
        # Given back, it is another robot's at once; a robot gives back only its own unfinished items.
        with api(web_server, fleet["b_token"]) as other:
            assert other.post(f"/api/v1/robots/{robot.pk}/evaluation-items/{item.pk}/release").status_code == 403
            theirs = other.post(f"/api/v1/robots/{fleet['b'].pk}/evaluation-items/{item.pk}/release")
            assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
            released = http.post(f"/api/v1/robots/{robot.pk}/evaluation-items/{item.pk}/release")
            assert released.status_code == 200 and released.json() == {"item": item.pk, "released": True}
            assert other.post(f"/api/v1/robots/{fleet['b'].pk}/episodes/next").json()["item"] == item.pk
            assert other.post(f"/api/v1/robots/{fleet['b'].pk}/evaluation-items/{item.pk}/release").status_code == 200
        work = http.post(f"/api/v1/robots/{robot.pk}/episodes/next").json()
        assert work["item"] == item.pk  # the oldest item again, now robot A's
        item.refresh_from_db()
        bundle = http.get(work["version"]["url"])  # the item's version may be fetched, though not assigned
        assert bundle.status_code == 200 and hashlib.sha256(bundle.content).hexdigest() == work["version"]["sha256"]
        params = episode_params(work["version"]["number"], task=work["task"], seed=work["seed"],
                                source="evaluation")
        refused = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=params, content=episode_data.encode(clean))
        assert refused.status_code == 422 and "evaluation item" in refused.json()["detail"]  # no item named
        wrong = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params={**params, "item": item.pk, "seed": 1},
                         content=episode_data.encode(clean))
        assert wrong.status_code == 422 and f"seed {item.seed}" in wrong.json()["detail"]
        stored = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params={**params, "item": item.pk},
                          content=episode_data.encode(clean))
        assert stored.status_code == 201, stored.text
    episode = Episode.objects.get(pk=stored.json()["episode"])
    assert episode.source == "evaluation" and episode.policy_version.number == work["version"]["number"]
    item.refresh_from_db()
    assert item.episode_id == episode.pk  # the result counts for the evaluation
    with api(web_server, fleet["b_token"]) as other:  # robot B cannot report robot A's item
        taken = other.put(f"/api/v1/episodes/{uuid.uuid4()}", params={**params, "item": item.pk},
                          content=episode_data.encode(clean))
        assert taken.status_code == 422


def test_a_robot_whose_checkpoint_is_gone_still_hears_its_commands(web_server, fleet, olivia):
    import shutil

    from django.conf import settings

    robot = fleet["a"]
    shutil.rmtree(f"{settings.STORAGE_DIR}/{fleet['version'].checkpoint_path}")
    control.start(robot, olivia)
    control.pause(robot, olivia)
    with api(web_server, fleet["a_token"]) as http:
        assignment = http.get(f"/api/v1/robots/{robot.pk}/assignment")
        assert assignment.status_code == 200 and assignment.json()["version"] is None
        assert "pause" in assignment.json()["commands"]


def test_uploads_from_many_robots_at_once_are_committed_together_and_never_starve_the_pool(start_web, fleet, tasks, olivia):
    """Each upload runs on its request's own thread, and episodes arriving together are committed together
    (fleet.group_commit). With a pool of three connections, uploads waiting on the writer must not hold the
    connections it needs: twelve robots uploading at once all get their 201."""
    from concurrent.futures import ThreadPoolExecutor

    server = start_web(DATABASE_POOL_SIZE=3, INGEST_GROUP_WINDOW_MS=20)
    robots = [remote_robot(f"burst-{i}", tasks, olivia) for i in range(12)]
    body = payload()

    def upload(pair):
        _, token = pair
        with api(server.address, token) as http:
            return [http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=episode_params(1), content=body).status_code
                    for _ in range(3)]

    with ThreadPoolExecutor(len(robots)) as pool:
        statuses = [code for codes in pool.map(upload, robots) for code in codes]
    assert statuses == [201] * 36, statuses
    assert Episode.objects.filter(robot__in=[robot for robot, _ in robots]).count() == 36
    assert b"couldn't get a connection" not in server.log.read_bytes()
    # They went to PostgreSQL together: the web process's group commits held more than one episode on average.
    exposed = httpx.get(f"http://{server.address}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in exposed.splitlines()
              if line.startswith("sopweb_ingest_group_size_")}
    assert values["sopweb_ingest_group_size_sum"] > values["sopweb_ingest_group_size_count"] > 0, values

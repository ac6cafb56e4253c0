"""Episode review: the queue, the claim lease, labels, flags, permissions, replay files, label counts, export."""
from __future__ import annotations

import json
from datetime import timedelta
from functools import partial

import numpy as np
import pytest
from django.template import Context, Template
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from fleet.models import InterventionSegment, Robot, Task
from fleet.sim.gate import GATE
from review.models import ClaimHeld, ClaimLost, EpisodeFlag, EpisodeLabel, FailureMode, ReplayVideo, ReviewClaim
from review.queue import QueueFilter, claim_next, queue
from tests.conftest import at_the_same_instant, make_user, publish_random_policy
from tests.reviewing import ingest, synthetic


@pytest.fixture
def task(db):
    return Task.objects.create(env_name="pick-place-v3", title="Pick place")


@pytest.fixture
def bea(db):
    """A second annotator."""
    return make_user("bea", "annotators")


def label(client, episode, **data):
    return client.post(reverse("review-label", args=[episode.pk]),
                       {"failure_mode": "missed_grasp", "disposition": "keep", "notes": "", **data})


# --- taxonomy --------------------------------------------------------------------------------------------

def test_a_new_task_gets_the_default_failure_modes_with_keys(task):
    modes = FailureMode.for_task(task)
    assert [(m.code, m.key) for m in modes][:6] == [
        ("missed_grasp", "1"), ("dropped_object", "2"), ("collision", "3"), ("wrong_placement", "4"),
        ("stalled", "5"), ("timeout", "6")]


def test_supervisors_edit_the_taxonomy_in_the_admin_and_annotators_do_not(client, task, sam, anna):
    sam.is_staff = True
    sam.save()
    mode = FailureMode.objects.get(task=task, code="collision")
    client.force_login(sam)
    response = client.post(reverse("admin:review_failuremode_change", args=[mode.pk]), {
        "task": task.pk, "code": "collision", "name": "Hit the bin wall", "key": "3", "position": 3,
        "active": "on"})
    assert response.status_code == 302, response.content[:500]
    mode.refresh_from_db()
    assert mode.name == "Hit the bin wall"
    anna.is_staff = True
    anna.save()
    client.force_login(anna)
    assert client.get(reverse("admin:review_failuremode_changelist")).status_code == 403


def test_an_inactive_mode_is_not_offered_and_is_refused(client, task, anna):
    FailureMode.for_task(task)
    FailureMode.objects.filter(task=task, code="collision").update(active=False)
    episode = ingest(task, synthetic())
    client.force_login(anna)
    page = client.get(reverse("review-episode", args=[episode.pk])).content.decode()
    assert 'value="collision"' not in page and 'value="missed_grasp"' in page
    assert label(client, episode, failure_mode="collision").status_code == 400
    assert not EpisodeLabel.objects.exists()


# --- the queue -------------------------------------------------------------------------------------------

def test_the_queue_puts_flags_first_then_unlabelled_then_newest_versions(task, olivia, anna):
    v1, v2 = publish_random_policy(1, [task.env_name]), publish_random_policy(2, [task.env_name], seed=1)
    now = timezone.now()
    old_v2 = ingest(task, synthetic(seed=1), version=v2, finished_at=now - timedelta(minutes=9))
    new_v1 = ingest(task, synthetic(seed=2), version=v1, finished_at=now - timedelta(minutes=1))
    flagged_v1 = ingest(task, synthetic(seed=3), version=v1, finished_at=now - timedelta(minutes=5))
    labelled_v2 = ingest(task, synthetic(seed=4), version=v2, finished_at=now)
    ingest(task, synthetic(seed=5), version=v2, outcome="aborted")  # paused robots' episodes are not failures
    EpisodeFlag.raise_flag(flagged_v1, olivia, "it hesitated before the grasp")
    ReviewClaim.claim(labelled_v2, anna)
    ReviewClaim.submit_label(labelled_v2, anna, failure_mode="stalled", failure_step=None, notes="",
                             disposition="keep")

    everything = QueueFilter(status="all")
    assert [e.pk for e in queue(everything)] == [flagged_v1.pk, old_v2.pk, new_v1.pk, labelled_v2.pk]
    newest = QueueFilter(status="all", order="newest")
    assert [e.pk for e in queue(newest)] == [flagged_v1.pk, new_v1.pk, old_v2.pk, labelled_v2.pk]
    assert [e.pk for e in queue(QueueFilter())] == [flagged_v1.pk, old_v2.pk, new_v1.pk]  # unlabelled only
    assert [e.pk for e in queue(QueueFilter(version=1))] == [flagged_v1.pk, new_v1.pk]
    assert [e.pk for e in queue(QueueFilter(flag_reason="GRASP"))] == [flagged_v1.pk]


def test_the_queue_filters_by_robot_and_task(client, task, anna):
    other = Task.objects.create(env_name="box-close-v3", title="Box close")
    robot = Robot.objects.create(name="sim-07")
    mine = ingest(task, synthetic(), robot=robot)
    ingest(other, synthetic())
    client.force_login(anna)
    page = client.get(reverse("review-queue"), {"robot": "sim-07", "task": "pick-place-v3"})
    rows = page.context["rows"]
    assert [e.pk for e in rows] == [mine.pk]
    assert client.get(reverse("review-queue"), {"robot": "no-such-robot"}).status_code == 400


# --- the claim lease -------------------------------------------------------------------------------------

def test_two_annotators_never_hold_the_same_episode(task, anna, bea):
    episode = ingest(task, synthetic())
    ReviewClaim.claim(episode, anna)
    with pytest.raises(ClaimHeld, match="being labelled by anna"):
        ReviewClaim.claim(episode, bea)
    with pytest.raises(ClaimLost):
        ReviewClaim.submit_label(episode, bea, failure_mode="collision", failure_step=3, notes="",
                                 disposition="keep")
    ReviewClaim.claim(episode, anna)  # renewing one's own claim is fine
    assert ReviewClaim.objects.get().annotator == anna


def test_racing_annotators_get_one_claim(task, transactional_db):
    """Eight annotators, each on its own connection, claim the same episode at the same instant."""
    episode = ingest(task, synthetic())
    users = [make_user(f"annotator{i}", "annotators") for i in range(8)]
    results = at_the_same_instant(*(partial(ReviewClaim.claim, episode, user) for user in users))
    outcomes = ["held" if isinstance(result, ClaimHeld) else "won" if isinstance(result, ReviewClaim) else result
                for result in results]
    assert sorted(outcomes) == ["held"] * 7 + ["won"]
    assert ReviewClaim.objects.count() == 1


def test_claiming_the_next_episode_gives_two_annotators_different_ones(task, anna, bea):
    first, second = ingest(task, synthetic(seed=1)), ingest(task, synthetic(seed=2))
    got = {claim_next(anna, QueueFilter()).pk, claim_next(bea, QueueFilter()).pk}
    assert got == {first.pk, second.pk}
    assert claim_next(make_user("cid", "annotators"), QueueFilter()) is None  # both are taken


def test_an_abandoned_claim_expires_and_the_next_annotator_takes_it_over(task, anna, bea, settings):
    episode = ingest(task, synthetic())
    ReviewClaim.claim(episode, anna)
    ReviewClaim.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # anna closed her laptop
    assert claim_next(bea, QueueFilter()) == episode
    with pytest.raises(ClaimLost, match="lapsed and someone else took it"):
        ReviewClaim.submit_label(episode, anna, failure_mode="collision", failure_step=None, notes="",
                                 disposition="keep")
    assert not EpisodeLabel.objects.exists()
    ReviewClaim.submit_label(episode, bea, failure_mode="collision", failure_step=None, notes="",
                             disposition="keep")
    assert EpisodeLabel.objects.get().annotator == bea


def test_the_page_renews_the_claim_and_hears_when_it_is_someone_elses(client, task, anna, bea):
    episode = ingest(task, synthetic())
    client.force_login(anna)
    client.get(reverse("review-episode", args=[episode.pk]))
    before = ReviewClaim.objects.get().expires_at
    assert client.post(reverse("review-claim", args=[episode.pk])).status_code == 200
    assert ReviewClaim.objects.get().expires_at > before
    client.force_login(bea)
    page = client.get(reverse("review-episode", args=[episode.pk])).content.decode()
    assert "being labelled by anna" in page and "<fieldset disabled>" in page
    response = client.post(reverse("review-claim", args=[episode.pk]))
    assert response.status_code == 409 and "anna" in response.json()["error"]


# --- labels ----------------------------------------------------------------------------------------------

def test_a_label_is_stored_audited_resolves_flags_and_opens_the_next_episode(client, task, olivia, anna):
    first, second = ingest(task, synthetic(seed=1)), ingest(task, synthetic(seed=2))
    flag = EpisodeFlag.raise_flag(first, olivia, "gripper opened mid-air")
    client.force_login(anna)
    response = client.post(reverse("review-next"))
    assert response["Location"] == reverse("review-episode", args=[first.pk])  # flagged: first in line
    response = label(client, first, failure_mode="dropped_object", failure_step=12, notes="let go at 12",
                     disposition="exclude")
    assert response.status_code == 302
    assert response["Location"] == reverse("review-episode", args=[second.pk])
    stored = EpisodeLabel.objects.get(episode=first)
    assert (stored.failure_mode, stored.failure_step, stored.notes, stored.disposition, stored.annotator) == (
        "dropped_object", 12, "let go at 12", "exclude", anna)
    event = AuditEvent.objects.get(verb="episode.label")
    assert event.actor == anna and event.details["failure_mode"] == "dropped_object"
    flag.refresh_from_db()
    assert (flag.status, flag.resolved_by) == (EpisodeFlag.Status.LABELLED, anna)
    assert AuditEvent.objects.filter(verb="flag.labelled", object_id=str(flag.pk)).exists()
    assert ReviewClaim.objects.get().episode == second  # the first claim was released, the next one taken


@pytest.mark.parametrize("data, error", [
    ({"failure_mode": "teleported"}, "Select a valid choice"),
    ({"failure_step": 40}, "at most 39"),
    ({"failure_step": -1}, "greater than or equal to 0"),
    ({"failure_step": "soon"}, "Enter a whole number"),
    ({"disposition": "relabel"}, "relabelling needs the step"),
    ({"disposition": "burn"}, "Select a valid choice"),
])
def test_bad_labels_are_refused_and_change_nothing(client, task, anna, data, error):
    episode = ingest(task, synthetic(steps=40))
    client.force_login(anna)
    client.get(reverse("review-episode", args=[episode.pk]))
    response = label(client, episode, **data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not EpisodeLabel.objects.exists() and not AuditEvent.objects.filter(verb="episode.label").exists()


def test_relabelling_marks_the_policys_steps_from_the_failure_as_annotator_segments(client, task, anna):
    episode = ingest(task, synthetic(steps=40, gate=slice(20, 25)))
    client.force_login(anna)
    client.get(reverse("review-episode", args=[episode.pk]))
    assert label(client, episode, failure_step=15, disposition="relabel").status_code == 302
    segments = list(InterventionSegment.objects.filter(episode=episode).values_list("start_step", "end_step",
                                                                                    "source"))
    # The gate's own segment stays the gate's; the policy's steps around it become the annotator's.
    assert segments == [(15, 20, "annotator"), (20, 25, "gate"), (25, 40, "annotator")]
    ReviewClaim.claim(episode, anna)
    ReviewClaim.submit_label(episode, anna, failure_mode="stalled", failure_step=15, notes="", disposition="keep")
    assert list(InterventionSegment.objects.filter(episode=episode).values_list("source", flat=True)) == ["gate"]


def test_skipping_moves_on_and_does_not_offer_the_episode_again(client, task, anna):
    first, second = ingest(task, synthetic(seed=1)), ingest(task, synthetic(seed=2))
    client.force_login(anna)
    client.post(reverse("review-next"))
    response = client.post(reverse("review-skip", args=[first.pk]))
    assert response["Location"] == reverse("review-episode", args=[second.pk])
    response = client.post(reverse("review-skip", args=[second.pk]))
    assert response["Location"] == reverse("review-queue")  # nothing left that anna has not skipped


# --- permissions -----------------------------------------------------------------------------------------

def test_an_annotator_cannot_approve_rollouts_or_control_robots(client, task, anna):
    from governance.views import DECISIONS
    from learner.models import PolicyVersion

    robot = Robot.objects.create(name="sim-01", status=Robot.Status.RUNNING, last_heartbeat=timezone.now())
    version = publish_random_policy(1, [task.env_name])
    PolicyVersion.objects.filter(pk=version.pk).update(state=PolicyVersion.State.AWAITING_APPROVAL)
    assert not anna.has_perm("governance.approve_rollout") and not anna.has_perm("fleet.control_robot")
    client.force_login(anna)
    for decision in DECISIONS:
        response = client.post(reverse("rollout-decide", args=[1, decision]), {"reason": "looks fine", "share": 50})
        assert response.status_code == 403, decision
    assert client.get(reverse("rollouts")).status_code == 403
    version.refresh_from_db()
    assert version.state == PolicyVersion.State.AWAITING_APPROVAL
    assert not AuditEvent.objects.filter(verb__startswith="version.").exists()
    for command in ("start", "stop", "pause", "takeover"):
        assert client.post(reverse("robot-command", args=[robot.pk, command])).status_code == 403
    assert client.post(reverse("fleet-command", args=["stop"])).status_code == 403
    assert client.post(reverse("robot-add"), {"name": "sim-99", "tasks": ["pick-place-v3"]}).status_code == 403
    robot.refresh_from_db()
    assert robot.status == Robot.Status.RUNNING and not robot.enabled
    assert not Robot.objects.filter(name="sim-99").exists()
    assert client.get(reverse("fleet")).status_code == 403 and client.get(reverse("versions")).status_code == 403


@pytest.mark.parametrize("persona", ["olivia", "sam", "oscar"])
def test_only_annotators_label(client, request, task, persona):
    episode = ingest(task, synthetic())
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("review-episode", args=[episode.pk])).status_code == 403
    assert label(client, episode).status_code == 403
    assert client.post(reverse("review-next")).status_code == 403
    assert not EpisodeLabel.objects.exists() and not ReviewClaim.objects.exists()


# --- flags -----------------------------------------------------------------------------------------------

def test_an_operators_flag_jumps_the_queue_and_its_dismissal_is_visible_to_them(client, task, olivia, anna):
    succeeded = synthetic(seed=2)
    succeeded["success"][-1] = True
    quiet, flagged = ingest(task, synthetic(seed=1)), ingest(task, succeeded, outcome="success")
    client.force_login(olivia)
    episode_page = client.get(reverse("episode", args=[flagged.pk])).content.decode()
    assert reverse("episode-flag", args=[flagged.pk]) in episode_page
    assert client.post(reverse("episode-flag", args=[flagged.pk]), {"reason": "  "}).status_code == 400
    assert not EpisodeFlag.objects.exists()  # a flag needs a reason
    client.post(reverse("episode-flag", args=[flagged.pk]), {"reason": "took a strange path"})
    flag = EpisodeFlag.objects.get()
    assert (flag.raised_by, flag.reason) == (olivia, "took a strange path")
    assert AuditEvent.objects.filter(verb="episode.flag", actor=olivia).exists()

    client.force_login(anna)
    assert [e.pk for e in queue(QueueFilter())] == [flagged.pk, quiet.pk]  # a success, but flagged: first
    client.post(reverse("review-next"))
    response = client.post(reverse("review-dismiss", args=[flagged.pk]), {"reason": "the path was fine"})
    assert response["Location"] == reverse("review-episode", args=[quiet.pk])
    flag.refresh_from_db()
    assert (flag.status, flag.resolved_by) == (EpisodeFlag.Status.DISMISSED, anna)
    assert AuditEvent.objects.filter(verb="flag.dismissed", actor=anna, reason="the path was fine").exists()
    assert [e.pk for e in queue(QueueFilter())] == [quiet.pk]  # a dismissed success leaves the queue

    client.force_login(olivia)
    mine = client.get(reverse("review-flags")).content.decode()
    assert "took a strange path" in mine and "dismissed" in mine and "anna" in mine and "the path was fine" in mine


def test_annotators_and_outsiders_cannot_flag(client, task, anna, oscar):
    episode = ingest(task, synthetic())
    for user in (anna, oscar):
        client.force_login(user)
        assert client.post(reverse("episode-flag", args=[episode.pk]), {"reason": "x"}).status_code == 403
    assert not EpisodeFlag.objects.exists()


# --- replay files ----------------------------------------------------------------------------------------

@pytest.fixture
def ready_video(task, settings):
    episode = ingest(task, synthetic())
    path = settings.STORAGE_DIR / "replays" / f"episode-{episode.pk}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 4)
    ReplayVideo.objects.create(episode=episode, status=ReplayVideo.Status.READY, path=str(path.relative_to(
        settings.STORAGE_DIR)), fps=80, frames=40, finished_at=timezone.now())
    return episode, path.read_bytes()


def test_replay_files_are_served_in_byte_ranges_for_seeking(client, anna, ready_video):
    episode, data = ready_video
    client.force_login(anna)
    url = reverse("review-replay-file", args=[episode.pk])
    whole = client.get(url)
    assert whole.status_code == 200 and whole["Accept-Ranges"] == "bytes"
    assert b"".join(whole.streaming_content) == data
    part = client.get(url, HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert part.content == data[100:200]
    assert client.get(url, HTTP_RANGE="bytes=1000-").content == data[1000:]
    assert client.get(url, HTTP_RANGE="bytes=-24").content == data[-24:]
    assert client.get(url, HTTP_RANGE=f"bytes={len(data)}-").status_code == 416
    assert client.get(url, HTTP_RANGE=f"bytes={10 ** 30}-").status_code == 416  # huge: unsatisfiable, no error
    assert client.get(url, HTTP_RANGE="bytes=-").status_code == 200  # malformed: ignored, the whole file
    assert client.get(url, HTTP_RANGE="bytes=5-2").status_code == 416
    status = client.get(reverse("review-replay-status", args=[episode.pk])).json()
    assert status["status"] == "ready" and status["url"].startswith(url)


def test_outsiders_get_no_replays(client, oscar, ready_video):
    episode, _ = ready_video
    client.force_login(oscar)
    assert client.get(reverse("review-replay-file", args=[episode.pk])).status_code == 403
    assert client.get(reverse("review-replay-status", args=[episode.pk])).status_code == 403


# --- label counts ----------------------------------------------------------------------------------------

def test_label_counts_by_failure_mode_per_version_and_per_task(task, anna):
    from review.stats import label_counts

    other = Task.objects.create(env_name="box-close-v3", title="Box close")
    v1, v2 = publish_random_policy(1, [task.env_name]), publish_random_policy(2, [task.env_name], seed=1)
    for i, (t, version, mode) in enumerate([(task, v1, "missed_grasp"), (task, v1, "missed_grasp"),
                                            (task, v2, "collision"), (other, v2, "missed_grasp")]):
        episode = ingest(t, synthetic(seed=i), version=version)
        ReviewClaim.claim(episode, anna)
        ReviewClaim.submit_label(episode, anna, failure_mode=mode, failure_step=None, notes="", disposition="keep")
    by_version = label_counts(by="version")
    assert by_version["modes"] == [("missed_grasp", "Missed grasp"), ("collision", "Collision")]
    assert [(r["key"], r["counts"], r["total"]) for r in by_version["rows"]] == [("v2", [1, 1], 2), ("v1", [2, 0], 2)]
    by_task = label_counts(by="task", versions=[v2])
    assert [(r["key"], r["counts"]) for r in by_task["rows"]] == [("box-close-v3", [1, 0]), ("pick-place-v3", [0, 1])]
    html = Template('{% load review %}{% label_counts_table by="task" %}').render(Context({}))
    assert "Missed grasp" in html and "<td>pick-place-v3</td><td>2</td><td>1</td><td>3</td>" in html
    html = Template('{% load review %}{% label_counts_table by="version" version=v2 against=v1 %}').render(
        Context({"v1": v1, "v2": v2}))
    assert "<td>v2</td><td>1</td><td>1</td><td>2</td>" in html and "<td>v1</td><td>2</td><td>0</td><td>2</td>" in html


def test_the_episode_page_shows_the_label_and_the_flags_resolution(client, task, olivia, anna):
    episode = ingest(task, synthetic())
    EpisodeFlag.raise_flag(episode, olivia, "check the approach")
    ReviewClaim.claim(episode, anna)
    ReviewClaim.submit_label(episode, anna, failure_mode="collision", failure_step=5, notes="hit the wall",
                             disposition="exclude")
    client.force_login(olivia)
    html = client.get(reverse("episode", args=[episode.pk])).content.decode()
    assert "Collision" in html and "from step 5" in html and "exclude from training" in html
    assert "check the approach" in html and "labelled by anna" in html
    assert reverse("review-episode", args=[episode.pk]) not in html  # operators do not label
    client.force_login(anna)
    html = client.get(reverse("episode", args=[episode.pk])).content.decode()
    assert reverse("review-episode", args=[episode.pk]) in html


# --- export ----------------------------------------------------------------------------------------------

def label_three(task, anna) -> tuple[dict, dict]:
    """A kept, a relabelled (failing from step 25, gate at 5-10) and an excluded episode, labelled by anna."""
    arrays = {"kept": synthetic(steps=30, seed=1), "relabelled": synthetic(steps=40, seed=2, gate=slice(5, 10)),
              "excluded": synthetic(steps=20, seed=3)}
    episodes = {}
    dispositions = {"kept": ("keep", None), "relabelled": ("relabel", 25), "excluded": ("exclude", None)}
    for name, data in arrays.items():
        episodes[name] = ingest(task, data)
        ReviewClaim.claim(episodes[name], anna)
        disposition, step = dispositions[name]
        ReviewClaim.submit_label(episodes[name], anna, failure_mode="stalled", failure_step=step, notes=name,
                                 disposition=disposition)
    return arrays, episodes


def test_labelled_episodes_export_as_a_lerobot_v21_dataset_that_reads_back(task, anna, tmp_path):
    import pyarrow.parquet as pq

    from review.export import export_dataset, labels_to_export

    arrays, episodes = label_three(task, anna)
    info = export_dataset(labels_to_export(), tmp_path / "dataset", version="v2.1")
    root = tmp_path / "dataset"
    assert json.loads((root / "meta" / "info.json").read_text()) == info
    assert (info["codebase_version"], info["total_episodes"], info["total_frames"], info["fps"]) == ("v2.1", 2, 70, 80)
    meta = [json.loads(line) for line in (root / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert [(m["episode_index"], m["length"], m["notes"], m["source_episode_id"]) for m in meta] == [
        (0, 30, "kept", episodes["kept"].pk), (1, 40, "relabelled", episodes["relabelled"].pk)]
    assert [json.loads(line) for line in (root / "meta" / "tasks.jsonl").read_text().splitlines()] == [
        {"task_index": 0, "task": "pick-place-v3"}]

    kept = pq.read_table(root / info["data_path"].format(episode_chunk=0, episode_index=0)).to_pydict()
    assert set(kept) == set(info["features"])
    np.testing.assert_array_equal(np.array(kept["observation.state"], np.float32), arrays["kept"]["obs"])
    np.testing.assert_array_equal(np.array(kept["action"], np.float32), arrays["kept"]["action"])
    assert kept["frame_index"] == list(range(30)) and kept["next.done"][-1] and not any(kept["next.done"][:-1])

    relabelled = pq.read_table(root / info["data_path"].format(episode_chunk=0, episode_index=1)).to_pydict()
    source, recorded = np.array(relabelled["intervention_source"]), arrays["relabelled"]
    action = np.array(relabelled["action"], np.float32)
    np.testing.assert_array_equal(action[25:], recorded["expert_action"][25:])  # the expert's corrections
    np.testing.assert_array_equal(action[:25], recorded["action"][:25])
    np.testing.assert_array_equal(np.array(relabelled["action.executed"], np.float32), recorded["action"])
    assert list(source[25:]) == [3] * 15 and list(source[5:10]) == [GATE] * 5 and relabelled["index"][0] == 30
    stats = [json.loads(line) for line in (root / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    assert stats[1]["stats"]["action"]["count"] == [40]


def test_labelled_episodes_export_as_a_lerobot_v30_dataset_of_the_layout_lerobot_reads(task, anna, tmp_path):
    """The v3.0 layout checked with pyarrow against what lerobot 0.4's loader relies on (docs/backlog.md): data
    columns exactly the declared features, vectors as fixed-size float32 lists, contiguous index and episode_index,
    the episodes' frame ranges, tasks as the pandas index, statistics with quantiles."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from review.export import QUANTILES, export_dataset, labels_to_export

    arrays, episodes = label_three(task, anna)
    info = export_dataset(labels_to_export(), tmp_path / "dataset")
    root = tmp_path / "dataset"
    assert json.loads((root / "meta" / "info.json").read_text()) == info
    assert (info["codebase_version"], info["total_episodes"], info["total_frames"], info["total_tasks"],
            info["fps"]) == ("v3.0", 2, 70, 1, 80)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert sorted(str(p.relative_to(root)) for p in root.glob("data/*/*.parquet")) == ["data/chunk-000/file-000.parquet"]

    table = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert table.schema.names == list(info["features"])  # exactly the declared features, nothing else
    for name, feature in info["features"].items():
        field = table.schema.field(name)
        if feature["shape"] != [1]:
            assert field.type == pa.list_(pa.float32(), feature["shape"][0]), name
        else:
            assert not pa.types.is_list(field.type), name
    data = table.to_pydict()
    assert data["index"] == list(range(70)) and data["episode_index"] == [0] * 30 + [1] * 40
    assert data["frame_index"] == list(range(30)) + list(range(40))
    np.testing.assert_array_equal(np.array(data["observation.state"][:30], np.float32), arrays["kept"]["obs"])
    action = np.array(data["action"][30:], np.float32)
    np.testing.assert_array_equal(action[25:], arrays["relabelled"]["expert_action"][25:])  # the corrections

    meta = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    assert meta["episode_index"] == [0, 1] and meta["length"] == [30, 40] and meta["tasks"] == [["pick-place-v3"]] * 2
    assert meta["dataset_from_index"] == [0, 30] and meta["dataset_to_index"] == [30, 70]
    assert meta["data/chunk_index"] == [0, 0] and meta["data/file_index"] == [0, 0]
    assert meta["source_episode_id"] == [episodes["kept"].pk, episodes["relabelled"].pk]  # provenance
    assert meta["disposition"] == ["keep", "relabel"] and meta["failure_step"] == [None, 25]
    assert meta["stats/action/count"] == [[30], [40]]

    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0], "task": ["pick-place-v3"]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # the index, as pandas writes

    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert set(stats) == set(info["features"])
    state = np.concatenate([arrays["kept"]["obs"], arrays["relabelled"]["obs"]]).astype(np.float64)
    assert stats["observation.state"]["count"] == [70]
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(0))
    assert set(QUANTILES) <= set(stats["action"]) and len(stats["action"]["q50"]) == 4


def test_the_export_form_queues_a_job_for_matching_labels_only(client, task, anna, olivia,
                                                                django_capture_on_commit_callbacks):
    from review.models import DatasetExport

    episode = ingest(task, synthetic(steps=25))
    ReviewClaim.claim(episode, anna)
    ReviewClaim.submit_label(episode, anna, failure_mode="stalled", failure_step=None, notes="", disposition="keep")
    client.force_login(olivia)
    assert client.post(reverse("review-export"), {"disposition": ["keep"]}).status_code == 403
    client.force_login(anna)
    assert client.get(reverse("review-export")).status_code == 200
    assert client.post(reverse("review-export"), {"disposition": ["exclude"]}).status_code == 400  # none match
    assert not DatasetExport.objects.exists()
    with django_capture_on_commit_callbacks() as queued:
        response = client.post(reverse("review-export"), {"disposition": ["keep", "relabel"], "task": task.env_name})
    export = DatasetExport.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("review-export-job", args=[export.pk])
    assert (export.requested_by, export.task, export.dispositions, export.episodes, export.status, export.format) == (
        anna, task, ["keep", "relabel"], 1, DatasetExport.Status.QUEUED, "v3.0")
    assert client.post(reverse("review-export"), {"disposition": ["keep"], "format": "v9"}).status_code == 400
    assert len(queued) == 1  # the job is sent once the row is committed
    page = client.get(response["Location"]).content.decode()
    assert "Waiting for a worker" in page and 'id="export-state"' in page and "js/export_job.js" in page


def test_the_export_command_writes_the_dataset(task, anna, tmp_path):
    from django.core.management import CommandError, call_command

    episode = ingest(task, synthetic(steps=25))
    ReviewClaim.claim(episode, anna)
    ReviewClaim.submit_label(episode, anna, failure_mode="stalled", failure_step=None, notes="", disposition="keep")
    call_command("export_dataset", str(tmp_path / "out"), "--task", "pick-place-v3", "--zip")
    assert (tmp_path / "out" / "meta" / "info.json").exists() and (tmp_path / "out.zip").exists()
    assert json.loads((tmp_path / "out" / "meta" / "info.json").read_text())["codebase_version"] == "v3.0"
    call_command("export_dataset", str(tmp_path / "old"), "--format", "v2.1")
    assert (tmp_path / "old" / "meta" / "episodes.jsonl").exists()
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("export_dataset", str(tmp_path / "other"), "--format", "v9")
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_dataset", str(tmp_path / "out"))
    with pytest.raises(CommandError, match="--disposition"):
        call_command("export_dataset", str(tmp_path / "other"), "--disposition", "burn")


def test_old_replays_are_evicted_unless_someone_is_reviewing_them(task, anna, settings):
    from pathlib import Path

    from review.tasks import evict_old_files

    now = timezone.now()
    videos = {}
    for name, age_days in (("fresh", 1), ("old", 20), ("old-claimed", 20), ("old-rendering", 20)):
        episode = ingest(task, synthetic())
        path = f"replays/test-{episode.pk}.mp4"
        (Path(settings.STORAGE_DIR) / path).parent.mkdir(parents=True, exist_ok=True)
        (Path(settings.STORAGE_DIR) / path).write_bytes(b"video")
        status = ReplayVideo.Status.RENDERING if name == "old-rendering" else ReplayVideo.Status.READY
        videos[name] = ReplayVideo.objects.create(episode=episode, status=status, path=path,
                                                  finished_at=now - timedelta(days=age_days))
    ReviewClaim.claim(videos["old-claimed"].episode, anna)
    settings.REVIEW_REPLAY_KEEP_DAYS = 14
    assert evict_old_files()["replays"] == 1
    assert set(ReplayVideo.objects.values_list("pk", flat=True)) == {
        videos[name].pk for name in ("fresh", "old-claimed", "old-rendering")}
    assert not videos["old"].file.exists() and videos["fresh"].file.exists()
    # Opening the evicted episode later renders it again.
    video = ReplayVideo.request(videos["old"].episode_id)
    assert video.status == ReplayVideo.Status.QUEUED


# --- who may label what ----------------------------------------------------------------------------------

def test_an_annotator_cannot_open_or_label_episodes_outside_the_queue(client, task, anna, bea):
    from django.contrib.auth.models import Permission

    succeeded = synthetic(seed=2)
    succeeded["success"][-1] = True
    success = ingest(task, succeeded, outcome="success")
    demo = ingest(task, synthetic(seed=3), source="offline_demo", outcome="timeout")
    failed = ingest(task, synthetic(seed=4))
    client.force_login(anna)
    for episode in (success, demo):
        page = client.get(reverse("review-episode", args=[episode.pk]))
        assert page.status_code == 403 and "not in the review queue" in page.content.decode()
        assert client.post(reverse("review-claim", args=[episode.pk])).status_code == 403
        assert label(client, episode).status_code in (302, 403)
        with pytest.raises(Exception, match="not in the review queue"):
            ReviewClaim.claim(episode, anna)
    assert not EpisodeLabel.objects.exists() and not ReviewClaim.objects.exists()
    assert client.get(reverse("review-episode", args=[failed.pk])).status_code == 200  # in the queue

    # A supervisor's explicit grant opens any episode to that one user.
    bea.user_permissions.add(Permission.objects.get(codename="label_any_episode"))
    client.force_login(bea)
    assert client.get(reverse("review-episode", args=[success.pk])).status_code == 200
    assert label(client, success).status_code == 302
    assert EpisodeLabel.objects.get().episode == success


def test_dismissing_flags_needs_the_claim_like_labelling(client, task, olivia, anna, bea):
    flagged = ingest(task, synthetic(seed=5))
    flag = EpisodeFlag.raise_flag(flagged, olivia, "odd grasp")
    ReviewClaim.claim(flagged, bea)  # bea is labelling it
    client.force_login(anna)
    response = client.post(reverse("review-dismiss", args=[flagged.pk]), {"reason": "looks fine"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("review-queue"))
    flag.refresh_from_db()
    assert flag.status == EpisodeFlag.Status.OPEN and not AuditEvent.objects.filter(verb="flag.dismissed").exists()
    with pytest.raises(ClaimLost):
        ReviewClaim.dismiss_flags(flagged, anna, "looks fine")
    assert ReviewClaim.dismiss_flags(flagged, bea, "looks fine") == 1  # the holder may, once
    assert not ReviewClaim.objects.exists()


def test_the_database_refuses_labels_the_learner_could_not_use(task, anna):
    from django.db import IntegrityError, transaction

    episode = ingest(task, synthetic())
    for fields in [{"disposition": "relabel", "failure_step": None}, {"disposition": "burn"},
                   {"failure_mode": ""}]:
        with pytest.raises(IntegrityError), transaction.atomic():
            EpisodeLabel.objects.create(episode=episode, annotator=anna, **{"failure_mode": "other", **fields})
    assert not EpisodeLabel.objects.exists()

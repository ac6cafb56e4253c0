"""Checkpoint retention: old checkpoints go, every version robots run or may be sent back to stays runnable."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from core.audit import IllegalTransition
from fleet import control
from fleet.models import Robot
from governance import decisions
from governance.decisions import deploy_to_fleet
from learner.models import PolicyVersion, TrainingRun
from learner.retention import prune_checkpoints
from tests.conftest import publish_random_policy

TASKS = ["pick-place-v3"]


def files(version: PolicyVersion) -> bool:
    directory = Path(settings.STORAGE_DIR) / version.checkpoint_path
    return directory.is_dir() and any(directory.iterdir())


@pytest.fixture
def history(db):
    """v1..v12 published; v1 the base of the training run; v2..v7 each deployed in turn (continuous mode), so v7
    is deployed and v2..v6 superseded; v8 a candidate; v9 pinned on a robot by hand; v10..v12 fresh checkpoints."""
    versions = {n: publish_random_policy(n, TASKS, seed=n) for n in range(1, 13)}
    TrainingRun.objects.create(algorithm="hg_dagger", base_version=versions[1])
    robots = [Robot.objects.create(name=f"sim-{i}") for i in range(2)]
    for n in range(2, 8):
        deploy_to_fleet(versions[n], reason="continuous")
    decisions.nominate(versions[8], None, evaluate=False)
    robots[1].assign_version(versions[9], reason="pinned for a test")
    return {n: PolicyVersion.objects.get(pk=v.pk) for n, v in versions.items()}


def test_retention_removes_only_what_nothing_needs(history):
    removed = prune_checkpoints(keep_last=3, keep_fleet=2)
    # Kept: the run's base v1, the last two fleet versions before the deployed one (v5, v6), the deployed v7, the
    # candidate v8, the pinned v9, the three newest (v10-v12). Gone: v2, v3, v4.
    assert sorted(v.number for v in removed) == [2, 3, 4]
    after = {v.number: v for v in PolicyVersion.objects.all()}
    for n, version in after.items():
        gone = n in (2, 3, 4)
        assert (version.checkpoint_removed_at is not None) == gone, n
        assert files(version) != gone, n
    assert prune_checkpoints(keep_last=3, keep_fleet=2) == []  # nothing more to do


def test_a_removed_checkpoint_cannot_run_again_and_roll_backs_still_can(history):
    for n in (13, 14, 15):  # the learner goes on: v10 (never nominated) drops out of the newest three
        publish_random_policy(n, TASKS, seed=n)
    assert sorted(v.number for v in prune_checkpoints(keep_last=3, keep_fleet=2)) == [2, 3, 4, 10, 11, 12]
    v3, v10 = PolicyVersion.objects.get(number=3), PolicyVersion.objects.get(number=10)
    for attempt in (lambda: deploy_to_fleet(v3, reason="bring back"), lambda: decisions.nominate(v10, None)):
        with pytest.raises(IllegalTransition, match="retention removed its checkpoint"):
            attempt()
    v3.refresh_from_db(), v10.refresh_from_db()
    assert (v3.state, v10.state) == (PolicyVersion.State.SUPERSEDED, PolicyVersion.State.CHECKPOINT)
    assert PolicyVersion.deployed().number == 7 and set(Robot.objects.values_list("policy_version__number",
                                                                                  flat=True)) == {7, 9}
    # Two successive roll-backs return to v6, then v5: both kept.
    decisions.roll_back(PolicyVersion.objects.get(number=7), None, reason="bad")
    assert PolicyVersion.deployed().number == 6
    decisions.roll_back(PolicyVersion.objects.get(number=6), None, reason="bad too")
    assert PolicyVersion.deployed().number == 5 and files(PolicyVersion.objects.get(number=5))


def test_files_left_by_an_interrupted_run_are_removed_by_the_next(history):
    prune_checkpoints(keep_last=3, keep_fleet=2)
    v2 = PolicyVersion.objects.get(number=2)
    directory = Path(settings.STORAGE_DIR) / v2.checkpoint_path
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"left behind")  # as if the process died after its commit
    assert prune_checkpoints(keep_last=3, keep_fleet=2) == []
    assert not directory.exists()
    assert Path(settings.STORAGE_DIR).is_dir()


def test_only_checkpoint_directories_are_ever_deleted(history, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    PolicyVersion.objects.filter(number=2).update(checkpoint_path=str(outside))  # absolute: outside storage
    PolicyVersion.objects.filter(number=3).update(checkpoint_path="policies")  # every checkpoint at once
    shared = PolicyVersion.objects.get(number=5).checkpoint_path  # v5 is kept (a roll-back target)
    PolicyVersion.objects.filter(number=4).update(checkpoint_path=shared)
    assert sorted(v.number for v in prune_checkpoints(keep_last=3, keep_fleet=2)) == [2, 3, 4]
    assert outside.is_dir()
    assert all(files(v) for v in PolicyVersion.objects.filter(checkpoint_removed_at=None))
    assert files(PolicyVersion.objects.get(number=5))


def test_a_version_published_while_retention_chooses_is_out_of_its_reach(history, monkeypatch):
    """Publishing does not take the rollout lock: a version that commits while retention works must not be taken
    for an old one."""
    from learner import retention

    choose = retention.protected_versions
    late = []

    def publish_meanwhile(*args):
        keep = choose(*args)
        late.append(publish_random_policy(13, TASKS, seed=13))  # commits between the choice and the marking
        return keep

    monkeypatch.setattr(retention, "protected_versions", publish_meanwhile)
    assert sorted(v.number for v in prune_checkpoints(keep_last=3, keep_fleet=2)) == [2, 3, 4]
    late[0].refresh_from_db()
    assert late[0].checkpoint_removed_at is None and files(late[0])
    deploy_to_fleet(late[0], reason="continuous")  # it can run
    assert PolicyVersion.deployed() == late[0]


def test_retired_robots_and_rejected_candidates_do_not_pin_checkpoints(history):
    robot = Robot.objects.get(name="sim-1")  # pinned to v9
    control.remove(robot, None, reason="retired")  # it never ran an episode: deleted
    Robot.objects.create(name="sim-old", retired=True, policy_version=history[4])  # a retired robot's last version
    from governance.models import Evaluation

    Evaluation.objects.create(candidate=history[8], baseline=history[3], episodes_per_task=1)
    history[8].advance("start_evaluation")
    decisions.reject(history[8], None, reason="worse")  # its evaluation never finishes; v3 no longer needed
    for n in (13, 14, 15, 16):
        publish_random_policy(n, TASKS, seed=n)
    removed = sorted(v.number for v in prune_checkpoints(keep_last=3, keep_fleet=2))
    assert removed == [2, 3, 4, 8, 9, 10, 11, 12, 13]


def test_the_versions_page_says_which_checkpoints_are_gone(history, client, sam):
    prune_checkpoints(keep_last=3, keep_fleet=2)
    client.force_login(sam)
    page = client.get(reverse("versions"))
    assert page.status_code == 200
    assert page.content.decode().count("(checkpoint removed)") == 3
    for n in (13, 14, 15):  # v10 (a checkpoint never nominated) drops out of the newest three
        publish_random_policy(n, TASKS, seed=n)
    prune_checkpoints(keep_last=3, keep_fleet=2)
    page = client.get(reverse("rollout-version", args=[10])).content.decode()
    assert "Retention removed its checkpoint" in page and reverse("rollout-decide", args=[10, "nominate"]) not in page
    kept = client.get(reverse("rollout-version", args=[13])).content.decode()
    assert reverse("rollout-decide", args=[13, "nominate"]) in kept
    listed = client.get(reverse("rollouts")).context["checkpoints"]
    assert [v.number for v in listed] == [15, 14, 13, 9, 1]  # v10-v12 are gone; v9 and v1 kept (pinned, base)


def test_operators_of_the_machine_can_apply_retention_now(history):
    from io import StringIO

    from django.core.management import call_command

    with override_settings(CHECKPOINT_KEEP_LAST=3, CHECKPOINT_KEEP_FLEET=2):
        out = StringIO()
        call_command("learner", "prune", stdout=out)
    assert out.getvalue().strip() == "removed the checkpoints of 3 versions: v4, v3, v2"


def test_an_open_evaluation_keeps_its_baseline(history):
    from governance.models import Evaluation

    evaluation = Evaluation.objects.create(candidate=history[8], baseline=history[3], episodes_per_task=1)
    history[8].advance("start_evaluation")
    assert sorted(v.number for v in prune_checkpoints(keep_last=3, keep_fleet=2)) == [2, 4]
    Evaluation.objects.filter(pk=evaluation.pk).update(finished_at=timezone.now())
    assert [v.number for v in prune_checkpoints(keep_last=3, keep_fleet=2)] == [3]

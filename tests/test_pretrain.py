"""The base policy: cloned from the offline demonstrations, published with its lineage, deployed to the fleet."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from core.models import AuditEvent
from fleet.models import Robot, Task
from governance.models import Rollout
from learner.models import PolicyVersion
from learner.policy import checkpoint_sha256

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def fleet(db):
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    robots = [Robot.objects.create(name=f"sim-{i}") for i in range(2)]
    return task, robots


def test_pretrain_publishes_and_deploys_the_base_policy(fleet):
    call_command("generate_demos", "--per-task", "2", stdout=io.StringIO())
    call_command("pretrain_base", "--demos-per-task", "2", "--steps", "50", "--deploy", stdout=io.StringIO())
    version = PolicyVersion.objects.get()
    assert (version.number, version.algorithm, version.state) == (1, "bc", "deployed")
    assert version.config["demos_per_task"] == 2 and version.train_steps == 50
    # The checkpoint was written first and is the one the row names.
    assert checkpoint_sha256(Path(settings.STORAGE_DIR) / version.checkpoint_path) == version.checkpoint_sha256
    assert all(robot.policy_version == version for robot in Robot.objects.all())
    assert Rollout.objects.get().stage == "fleet"
    assert AuditEvent.objects.filter(verb="robot.assign_version").count() == 2

    call_command("pretrain_base", "--demos-per-task", "2", "--steps", "50", "--if-none", stdout=io.StringIO())
    assert PolicyVersion.objects.count() == 1  # cached for the demo's next start
    call_command("pretrain_base", "--demos-per-task", "2", "--steps", "50", "--deploy", stdout=io.StringIO())
    second = PolicyVersion.objects.get(number=2)
    version.refresh_from_db()
    assert (version.state, second.state) == ("superseded", "deployed")


def test_pretraining_without_enough_demonstrations_says_what_to_run(fleet):
    with pytest.raises(CommandError, match="run `manage.py generate_demos --per-task 3` first"):
        call_command("pretrain_base", "--demos-per-task", "3", stdout=io.StringIO())
    assert not PolicyVersion.objects.exists()

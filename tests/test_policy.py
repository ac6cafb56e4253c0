"""Policy checkpoints: save -> load gives identical actions; a corrupt or swapped checkpoint is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.policy import CheckpointError, MLPPolicy, PolicyConfig, load_checkpoint, save_checkpoint


@pytest.fixture
def policy():
    torch.manual_seed(3)
    model = MLPPolicy(PolicyConfig(tasks=["pick-place-v3", "box-close-v3"], hidden=[64, 64]))
    model.set_normalization(np.random.default_rng(0).normal(2.0, 3.0, size=(100, 39)))
    return model.eval()


def test_save_then_load_gives_identical_actions(policy, tmp_path):
    sha = save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", expected_sha256=sha)
    obs = np.random.default_rng(1).normal(size=(20, 39)).astype(np.float32)
    for task in ["pick-place-v3", "box-close-v3"]:
        for row in obs:
            assert np.array_equal(policy.select_action(row, task), loaded.select_action(row, task))
    assert torch.equal(loaded.obs_std, policy.obs_std)  # normalization travels with the weights


def test_a_checksum_mismatch_is_refused(policy, tmp_path):
    save_checkpoint(policy, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="expected"):
        load_checkpoint(tmp_path / "ckpt", expected_sha256="0" * 64)


def test_a_truncated_checkpoint_is_refused(policy, tmp_path):
    save_checkpoint(policy, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path / "ckpt")


def test_an_unknown_task_is_a_clear_error(policy):
    with pytest.raises(KeyError, match="not trained on task 'drawer-open-v3'"):
        policy.select_action(np.zeros(39, np.float32), "drawer-open-v3")

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


def test_recap_guidance_extrapolates_from_the_null_to_the_positive_action():
    from learner.policy import INDICATOR_NULL, INDICATOR_POSITIVE

    torch.manual_seed(3)
    policy = MLPPolicy(PolicyConfig(tasks=["pick-place-v3"], indicator=True)).eval()
    for parameter in policy.parameters():  # an indicator that matters (with_indicator starts it at zero)
        torch.nn.init.normal_(parameter, std=0.3)
    obs = np.linspace(-1, 1, 39).astype(np.float32)
    obs_t, ids = torch.as_tensor(obs).unsqueeze(0), torch.tensor([0])
    with torch.inference_mode():
        positive = policy(obs_t, ids, torch.tensor([INDICATOR_POSITIVE]))[0].numpy()
        null = policy(obs_t, ids, torch.tensor([INDICATOR_NULL]))[0].numpy()
    assert not np.allclose(positive, null)
    assert np.allclose(policy.select_action(obs, "pick-place-v3"), positive, atol=1e-6)  # beta = 1
    policy.guidance = 0.0
    assert np.allclose(policy.select_action(obs, "pick-place-v3"), null, atol=1e-6)
    policy.guidance = 2.0
    assert np.allclose(policy.select_action(obs, "pick-place-v3"), np.clip(2 * positive - null, -1, 1), atol=1e-6)

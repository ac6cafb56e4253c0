"""The learner without Django: resampler, buffer, algorithms, one training step, save -> resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.buffer import ExperienceBuffer, Resampler, online_share
from learner.policy import MLPPolicy, PolicyConfig
from learner.trainer import LearnerConfig, Trainer

TASKS = ["pick-place-v3", "box-close-v3"]


def episode(steps=40, expert=slice(10, 20), success=False, seed=0):
    rng = np.random.default_rng(seed)
    intervention = np.zeros(steps, bool)
    intervention[expert] = True
    success_flags = np.zeros(steps, bool)
    success_flags[-1] = success
    return {"obs": rng.normal(size=(steps, 39)).astype(np.float32),
            "action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
            "expert_action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
            "intervention": intervention, "success": success_flags}


def test_the_online_share_follows_the_formula():
    assert online_share(0.3, 0.3, 1.0) == pytest.approx(0.5)
    for l_on, l_off, alpha in [(0.2, 0.1, 1.5), (1.0, 0.5, 1.5), (0.05, 0.4, 3.0)]:
        expected = math.exp(alpha * l_on) / (math.exp(alpha * l_on) + math.exp(l_off))
        assert online_share(l_on, l_off, alpha) == pytest.approx(expected)
    assert online_share(0.1, 0.1, 1.5) > 0.5  # only the online loss is boosted


def test_the_resampler_clips_and_waits_for_history():
    resampler = Resampler(TASKS, alpha=1.5, window=200)
    for _ in range(9):
        resampler.record("pick-place-v3", "online", 5.0)
        resampler.record("pick-place-v3", "offline", 0.0)
    resampler.update()
    assert resampler.share["pick-place-v3"] == 0.5  # fewer than 10 losses on a side: unchanged
    resampler.record("pick-place-v3", "online", 5.0)
    resampler.record("pick-place-v3", "offline", 0.0)
    resampler.update()
    assert resampler.share["pick-place-v3"] == 0.8  # exp(7.5)/(exp(7.5)+1) > 0.8: clipped
    for _ in range(200):  # the window forgets: now the online loss is far lower
        resampler.record("pick-place-v3", "online", 0.0)
        resampler.record("pick-place-v3", "offline", 5.0)
    resampler.update()
    assert resampler.share["pick-place-v3"] == 0.2
    l_on, l_off = 0.4, 0.3
    for _ in range(200):
        resampler.record("box-close-v3", "online", l_on)
        resampler.record("box-close-v3", "offline", l_off)
    resampler.update()
    assert resampler.share["box-close-v3"] == pytest.approx(online_share(l_on, l_off, 1.5))


def test_tasks_are_sampled_uniformly_and_sources_by_share():
    buffer = ExperienceBuffer(TASKS)
    for task in TASKS:
        buffer.add(task, "offline", np.zeros((100, 39), np.float32), np.zeros((100, 4), np.float32))
        buffer.add(task, "online", np.zeros((1000, 39), np.float32), np.zeros((1000, 4), np.float32), version=3)
    resampler = Resampler(TASKS)
    resampler.share["pick-place-v3"] = 0.8
    resampler.share["box-close-v3"] = 0.2
    totals: dict = {}
    rng = np.random.default_rng(0)
    for _ in range(50):
        for key, count in resampler.plan(256, buffer, rng).items():
            totals[key] = totals.get(key, 0) + count
    per_task = {t: totals[(t, "online")] + totals[(t, "offline")] for t in TASKS}
    assert per_task["pick-place-v3"] / sum(per_task.values()) == pytest.approx(0.5, abs=0.03)
    assert totals[("pick-place-v3", "online")] / per_task["pick-place-v3"] == pytest.approx(0.8, abs=0.03)
    assert totals[("box-close-v3", "online")] / per_task["box-close-v3"] == pytest.approx(0.2, abs=0.03)


def test_normalised_losses_make_the_share_follow_their_ratio_at_any_scale():
    """The seed's formula on behaviour-cloning losses (0.01-0.1) barely leaves 0.5; on the losses divided by their
    average it answers to the ratio alone, the same at every scale."""
    def share(scale: str, l_on: float, l_off: float) -> float:
        resampler = Resampler(["pick-place-v3"], alpha=1.5, scale=scale)
        for _ in range(20):
            resampler.record("pick-place-v3", "online", l_on)
            resampler.record("pick-place-v3", "offline", l_off)
        resampler.update()
        return resampler.share["pick-place-v3"]

    assert share("raw", 0.02, 0.01) == pytest.approx(0.5050, abs=1e-4)  # twice the offline loss: hardly moves
    for scale_of_losses in (0.01, 1.0, 50.0):
        assert share("normalised", 2 * scale_of_losses, scale_of_losses) == pytest.approx(
            online_share(4 / 3, 2 / 3, 1.5)) == pytest.approx(0.7914, abs=1e-4)
        assert share("normalised", scale_of_losses, scale_of_losses) == pytest.approx(0.6225, abs=1e-4)
        assert share("normalised", scale_of_losses, 2 * scale_of_losses) == pytest.approx(0.4174, abs=1e-4)
    assert share("normalised", 0.0, 0.0) == pytest.approx(online_share(0.0, 0.0, 1.5))  # nothing to divide by
    with pytest.raises(ValueError, match="raw or normalised"):
        Resampler(["pick-place-v3"], scale="log")


def test_a_fixed_share_is_the_ablation():
    resampler = Resampler(TASKS, fixed_share=0.5)
    for _ in range(50):
        resampler.record("pick-place-v3", "online", 9.0)
        resampler.record("pick-place-v3", "offline", 0.0)
    resampler.update()
    assert resampler.share["pick-place-v3"] == 0.5


def make_trainer(algorithm="hg_dagger", seed=0):
    torch.manual_seed(seed)
    return Trainer(MLPPolicy(PolicyConfig(tasks=TASKS, hidden=[32, 32])),
                   LearnerConfig(algorithm=algorithm, batch_size=64, seed=seed))


def test_hg_dagger_takes_only_expert_frames_of_online_episodes():
    trainer = make_trainer("hg_dagger")
    demo = episode(steps=30, expert=slice(0, 0), success=True)
    online = episode(steps=40, expert=slice(10, 20), seed=1)
    assert trainer.add_episode("pick-place-v3", "offline", demo, 0) == 30  # demonstrations: all frames
    assert trainer.add_episode("pick-place-v3", "online", online, 1) == 10  # online: the 10 expert frames only
    assert trainer.add_episode("pick-place-v3", "online", episode(expert=slice(0, 0)), 1) == 0
    sample = trainer.buffer.sample("pick-place-v3", "online", 500, np.random.default_rng(0))
    expert_obs = {row.tobytes() for row in online["obs"][10:20]}
    assert all(row.tobytes() in expert_obs for row in sample["obs"])
    assert sample["intervention"].all()
    # The label is the executed (expert) action of that very frame.
    by_obs = {online["obs"][i].tobytes(): online["action"][i] for i in range(10, 20)}
    assert all(np.array_equal(by_obs[o.tobytes()], t) for o, t in zip(sample["obs"], sample["target"]))


def test_bc_clones_successful_online_episodes_only():
    trainer = make_trainer("bc")
    assert trainer.add_episode("pick-place-v3", "online", episode(success=False), 1) == 0
    assert trainer.add_episode("pick-place-v3", "online", episode(success=True), 1) == 40


def test_a_training_step_lowers_the_loss_and_tracks_staleness():
    trainer = make_trainer()
    for i in range(5):
        trainer.add_episode(TASKS[i % 2], "offline", episode(seed=i), 0)
        trainer.add_episode(TASKS[i % 2], "online", episode(seed=10 + i), 1)
    trainer.version = 3
    first = trainer.train_step()
    for _ in range(300):
        last = trainer.train_step()
    assert last["loss"] < first["loss"]
    assert first["staleness_max"] == 2 and trainer.step == 301
    assert trainer.samples["online"] + trainer.samples["offline"] == 301 * 64


def test_the_trainer_resumes_exactly(tmp_path):
    trainer = make_trainer(seed=4)
    for i in range(4):
        trainer.add_episode(TASKS[i % 2], "offline", episode(seed=i), 0)
        trainer.add_episode(TASKS[i % 2], "online", episode(seed=20 + i), 1)
    for _ in range(30):
        trainer.train_step()
    trainer.save(tmp_path / "state", extra={"episode_cursor": 17})
    resumed, extra = Trainer.load(tmp_path / "state")
    assert extra == {"episode_cursor": 17} and resumed.step == 30
    assert resumed.resampler.state_dict() == trainer.resampler.state_dict()
    for name, value in trainer.optimizer.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed.optimizer.state_dict()["state"][0][name]))
    # Same buffer contents and same RNG states: the next steps are identical.
    for i in range(4):
        resumed.add_episode(TASKS[i % 2], "offline", episode(seed=i), 0)
        resumed.add_episode(TASKS[i % 2], "online", episode(seed=20 + i), 1)
    torch_state = torch.get_rng_state()
    losses = [trainer.train_step()["loss"] for _ in range(5)]
    torch.set_rng_state(torch_state)
    resumed.rng.bit_generator.state = Trainer.load(tmp_path / "state")[0].rng.bit_generator.state
    assert [resumed.train_step()["loss"] for _ in range(5)] == pytest.approx(losses)


def test_bad_learner_configs_are_refused():
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        LearnerConfig(algorithm="ppo")
    with pytest.raises(ValueError):
        LearnerConfig(fixed_online_share=1.5)


def recap_episode(steps, success_at=None, expert=slice(0, 0), seed=0):
    arrays = episode(steps=steps, expert=expert, seed=seed)
    arrays["success"] = np.zeros(steps, bool)
    if success_at is not None:
        arrays["success"][success_at] = True
    return arrays


def test_recap_returns_and_advantages_follow_the_spec():
    from learner.value import DistributionalValue, advantages, returns

    success = recap_episode(10, success_at=9)
    assert returns(success, 100).tolist() == pytest.approx([-(9 - t) / 100 for t in range(10)])
    assert (returns(recap_episode(10), 100) == -1).all()  # failures end at -1
    value = DistributionalValue(TASKS)
    with torch.no_grad():
        for p in value.net.parameters():
            p.zero_()  # uniform over the bins: V = -0.5 everywhere
    adv = advantages(value, TASKS[0], success, 100, lookahead=3)
    assert adv[0] == pytest.approx(-3 / 100)  # 3 steps of -1/T_max, then V - V = 0
    assert adv[-1] == pytest.approx(0.0 - (-0.5))  # Monte-Carlo at the end: G = 0


def test_an_n_step_advantage_is_clipped_as_the_values_targets_are():
    """A failed episode's states are worth -1 (the clipped return the value learns); N steps of -1/T_max and then
    V = -1 are worth -1 too, not -1 - N/T_max: an unclipped sum gave every step of a failure an advantage of
    -N/T_max from the step rewards alone."""
    from learner.value import BINS, DistributionalValue, advantages

    value = DistributionalValue(TASKS)
    with torch.no_grad():
        for p in value.net.parameters():
            p.zero_()
        value.net[-1].bias[0] = 50.0  # all mass on the lowest bin: V = -1 everywhere
    assert BINS == 201 and value.value(np.zeros((1, 39), np.float32), TASKS[0])[0] == pytest.approx(-1.0)
    adv = advantages(value, TASKS[0], recap_episode(20), 100, lookahead=3)
    assert adv == pytest.approx(np.zeros(20), abs=1e-5)


def test_the_advantage_reservoir_is_a_uniform_sample_of_everything_offered():
    from learner.algorithms.recap import Reservoir

    reservoir = Reservoir(1000, np.random.default_rng(0))
    reservoir.extend(np.arange(300))  # fills without choosing
    assert reservoir.sample().tolist() == list(range(300))
    for start in range(300, 100_000, 700):
        reservoir.extend(np.arange(start, min(start + 700, 100_000)))
    kept = reservoir.sample()
    assert reservoir.offered == 100_000 and len(kept) == 1000 and len(set(kept.tolist())) == 1000
    # Old and new alike: each of the 100,000 values is held with probability 1/100.
    assert kept.mean() == pytest.approx(50_000, abs=3_000)
    assert (kept < 50_000).mean() == pytest.approx(0.5, abs=0.06)


def test_recap_labels_the_configured_share_positive_and_forces_experts_positive():
    trainer = Trainer(MLPPolicy(PolicyConfig(tasks=TASKS, hidden=[32, 32])),
                      LearnerConfig(algorithm="recap", batch_size=64, recap_positive_fraction=0.3,
                                    recap_value_steps=50))
    assert trainer.policy.config.indicator  # RECAP trains an indicator-conditioned copy of the base
    rollouts = [recap_episode(60, success_at=59 if i % 2 else None, seed=i) for i in range(8)]
    trainer.algorithm.pretrain([(TASKS[0], "online", a, 100) for a in rollouts])
    for i, arrays in enumerate(rollouts):
        trainer.add_episode(TASKS[0], "online", arrays, 1, 100)
    flags = trainer.buffer.sample(TASKS[0], "online", 20_000, np.random.default_rng(0))["flag"]
    assert (flags == 1).mean() == pytest.approx(0.3, abs=0.05)
    # The realised share, logged with each metric (the learner page charts it), says the same.
    assert trainer.algorithm.task_stats()[TASKS[0]]["positive_share"] == pytest.approx(0.3, abs=0.05)
    corrected = recap_episode(60, expert=slice(20, 40), seed=99)
    _, _, indicator = trainer.algorithm.frames(TASKS[0], "online", corrected, 100)
    assert (indicator[20:40] == 1).all()
    assert trainer.train_step()["loss"] > 0


def test_a_recap_policy_starts_as_its_base_and_acts_positive():
    torch.manual_seed(0)
    base = MLPPolicy(PolicyConfig(tasks=TASKS, hidden=[32, 32])).eval()
    conditioned = base.with_indicator().eval()
    obs = np.random.default_rng(0).normal(size=39).astype(np.float32)
    assert np.allclose(base.select_action(obs, TASKS[0]), conditioned.select_action(obs, TASKS[0]), atol=1e-6)


def test_recap_state_survives_a_restart(tmp_path):
    trainer = Trainer(MLPPolicy(PolicyConfig(tasks=TASKS, hidden=[32, 32])),
                      LearnerConfig(algorithm="recap", batch_size=64, recap_value_steps=20))
    rollouts = [recap_episode(40, success_at=39, seed=i) for i in range(3)]
    trainer.algorithm.pretrain([(TASKS[0], "online", a, 100) for a in rollouts])
    trainer.add_episode(TASKS[0], "online", rollouts[0], 1, 100)
    trainer.save(tmp_path / "s")
    resumed, _ = Trainer.load(tmp_path / "s")
    resumed.add_episode(TASKS[0], "online", rollouts[0], 1, 100)  # the learner rebuilds its buffer on resume
    obs = rollouts[1]["obs"]
    assert np.array_equal(resumed.algorithm.value.value(obs, TASKS[0]), trainer.algorithm.value.value(obs, TASKS[0]))
    assert resumed.algorithm.threshold(TASKS[0]) == trainer.algorithm.threshold(TASKS[0])


def test_an_ensemble_acts_with_its_mean_and_measures_doubt(tmp_path):
    from learner.policy import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    ensemble = MLPPolicy(PolicyConfig(tasks=TASKS, hidden=[32, 32], ensemble=3)).eval()
    obs = np.random.default_rng(0).normal(size=39).astype(np.float32)
    members = ensemble.predictions(torch.as_tensor(obs)[None], torch.tensor([0]))[:, 0].detach()
    assert np.allclose(ensemble.select_action(obs, TASKS[0]), members.mean(0).detach().numpy(), atol=1e-6)
    expected = float(torch.linalg.vector_norm(members.var(0, unbiased=False)))
    assert ensemble.doubt(obs, TASKS[0]) == pytest.approx(expected) and expected > 0
    assert MLPPolicy(PolicyConfig(tasks=TASKS)).doubt(obs, TASKS[0]) == 0.0
    sha = save_checkpoint(ensemble, tmp_path / "e")
    assert load_checkpoint(tmp_path / "e", sha).doubt(obs, TASKS[0]) == pytest.approx(expected)


def test_the_actor_logs_doubt_at_every_gate_takeover():
    import warnings

    from fleet.sim.actor import run_episode
    from fleet.sim.envs import make_task
    from fleet.sim.gate import Gate, GateConfig

    warnings.simplefilter("ignore")
    task = make_task("pick-place-v3")
    torch.manual_seed(0)
    ensemble = MLPPolicy(PolicyConfig(tasks=["pick-place-v3"], hidden=[16], ensemble=2)).eval()
    result = run_episode(task, lambda o: ensemble.select_action(o, "pick-place-v3"), 3, Gate(GateConfig()),
                         realtime_factor=0, doubt=lambda o: ensemble.doubt(o, "pick-place-v3"))
    assert result.takeovers >= 1 and len(result.takeover_doubts) == result.takeovers
    assert all(d > 0 for d in result.takeover_doubts)

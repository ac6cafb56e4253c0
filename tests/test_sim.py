"""fleet/sim without Django: seeded tasks, the expert gate, the recorder, validation, replayable state."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fleet.sim import episode_data
from fleet.sim.actor import run_episode
from fleet.sim.envs import UnknownTask, expert_class_name, make_task
from fleet.sim.gate import GATE, OPERATOR, POLICY, Gate, GateConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pick_place():
    return make_task("pick-place-v3")


def test_the_same_seed_gives_the_same_scene_on_any_instance(pick_place):
    first = pick_place.reset(11)
    assert np.array_equal(first, pick_place.reset(11))
    assert not np.allclose(first, pick_place.reset(12))
    assert np.array_equal(first, make_task("pick-place-v3").reset(11))


def test_unknown_tasks_are_a_clear_error():
    with pytest.raises(UnknownTask, match="not a Meta-World v3 task"):
        make_task("make-coffee-v3")
    assert expert_class_name("box-close-v3") == "SawyerBoxCloseV3Policy"


@pytest.mark.parametrize("env_name", ["shelf-place-v3", "box-close-v3", "pick-place-v3", "peg-insert-side-v3"])
def test_the_scripted_expert_solves_its_task_despite_action_noise(env_name):
    task = make_task(env_name)
    rng = np.random.default_rng(0)
    noisy_expert = lambda obs: task.expert_action(obs) + rng.normal(0, 0.1, 4)  # noqa: E731
    results = [run_episode(task, noisy_expert, seed, Gate(GateConfig(enabled=False)), realtime_factor=0)
               for seed in range(6)]
    assert sum(r.outcome == "success" for r in results) >= 5
    assert all(r.intervention_steps == 0 for r in results)


def test_an_episode_stops_at_success_or_the_step_limit(pick_place):
    idle = lambda obs: np.zeros(4, np.float32)  # noqa: E731
    result = run_episode(pick_place, idle, 3, Gate(GateConfig(enabled=False)), max_steps=40, realtime_factor=0)
    assert (result.outcome, result.steps) == ("timeout", 40)
    expert = run_episode(pick_place, pick_place.expert_action, 3, Gate(GateConfig(enabled=False)),
                         realtime_factor=0)
    assert expert.outcome == "success" and expert.steps < 500
    assert expert.arrays["success"][-1] and not expert.arrays["success"][:-1].any()


def test_the_gate_rescues_a_useless_policy_and_records_only_expert_frames(pick_place):
    idle = lambda obs: np.zeros(4, np.float32)  # noqa: E731
    result = run_episode(pick_place, idle, 3, Gate(GateConfig()), realtime_factor=0)
    a = result.arrays
    assert result.outcome == "success" and result.takeovers >= 1
    assert result.intervention_steps == a["intervention"].sum() > 0
    # Expert-controlled frames executed the expert's action; policy frames executed the policy's (zeros).
    assert np.array_equal(a["action"][a["intervention"]], a["expert_action"][a["intervention"]])
    assert not a["action"][~a["intervention"]].any()
    assert all(source == GATE for _, _, source in result.segments)


def test_pacing_follows_the_control_rate(pick_place):
    result = run_episode(pick_place, pick_place.expert_action, 5, Gate(GateConfig(enabled=False)),
                         max_steps=40, realtime_factor=2.0)
    simulated = result.steps * pick_place.dt
    assert simulated / 2 * 0.9 <= result.wall_seconds <= simulated / 2 + 0.25


def test_an_operator_takeover_holds_to_the_end_and_abort_stops(pick_place):
    commands = iter([None, None, "takeover"])
    result = run_episode(pick_place, lambda obs: np.zeros(4, np.float32), 3, Gate(GateConfig(enabled=False)),
                         realtime_factor=0, poll=lambda: next(commands, None), poll_every=8)
    assert result.segments[-1] == (16, result.steps, OPERATOR)
    aborted = run_episode(pick_place, pick_place.expert_action, 3, Gate(GateConfig()), realtime_factor=0,
                          poll=lambda: "abort")
    assert aborted.outcome == "aborted" and aborted.steps == 0


def test_the_gate_takes_over_on_stalled_progress_and_hands_back_after_holding():
    gate = Gate(GateConfig(no_progress_steps=3, divergence=10.0, min_hold_steps=4))
    same = np.zeros(4)
    decisions = [gate.decide(1.0, same, same) for _ in range(4)]  # progress once, then stalls for 3 steps
    assert decisions == [POLICY, POLICY, POLICY, GATE]
    decisions = [gate.decide(1.0, same, same) for _ in range(3)] + [gate.decide(2.0, same, same)]
    assert decisions == [GATE, GATE, GATE, POLICY]  # held 4 steps and progress resumed: hand back


def test_the_gate_takes_over_on_sustained_divergence():
    gate = Gate(GateConfig(no_progress_steps=100, divergence=0.5, divergence_steps=2))
    far, near = np.ones(4), np.zeros(4)
    assert [gate.decide(float(i), far if i != 1 else near, near) for i in range(4)] == [POLICY, POLICY, POLICY, GATE]


@pytest.mark.parametrize("bad", [{"no_progress_steps": 0}, {"divergence": float("nan")}, {"colour": "red"},
                                 {"min_hold_steps": 2.5}])
def test_bad_gate_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        GateConfig.from_dict(bad)


def test_recorded_state_replays_the_scene(pick_place):
    result = run_episode(pick_place, pick_place.expert_action, 9, Gate(GateConfig(enabled=False)),
                         realtime_factor=0)
    a = result.arrays
    t = result.steps // 2
    pick_place.reset(0)  # somewhere else entirely
    pick_place.restore(a["qpos"][t], a["qvel"][t], a["mocap_pos"][t], a["mocap_quat"][t])
    # The observation's current half (hand, gripper, object pose) comes back from the simulator state alone.
    assert np.allclose(pick_place.env._get_curr_obs_combined_no_goal(), a["obs"][t][:18], atol=1e-5)


def test_payloads_round_trip_and_reject_bad_data(pick_place):
    result = run_episode(pick_place, pick_place.expert_action, 2, Gate(GateConfig()), realtime_factor=0)
    data = episode_data.encode(result.arrays)
    back = episode_data.decode(data)
    assert episode_data.validate(back, 500) == result.steps
    assert all(np.array_equal(back[k], result.arrays[k]) for k in result.arrays)
    with pytest.raises(episode_data.EpisodeDataError, match="not a readable .npz"):
        episode_data.decode(b"not an npz")


def test_a_payload_is_an_npz_with_the_joint_state_stored_and_the_rest_deflated(pick_place):
    result = run_episode(pick_place, pick_place.expert_action, 4, Gate(GateConfig()), realtime_factor=0)
    arrays = dict(result.arrays, obs=np.asfortranarray(result.arrays["obs"]))  # any memory layout goes in
    data = episode_data.encode(arrays)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every member's CRC checks out
        methods = {info.filename: info.compress_type for info in archive.infolist()}
        for name, array in arrays.items():  # each member starts with the header numpy itself writes
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, np.lib.format.header_data_from_array_1_0(np.ascontiguousarray(array)))
            assert archive.read(f"{name}.npy").startswith(header.getvalue())
    assert methods == {f"{name}.npy": zipfile.ZIP_STORED if name in ("qpos", "qvel") else zipfile.ZIP_DEFLATED
                       for name in episode_data.SCHEMA}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert npz["qpos"].dtype == np.float32 and npz["qpos"].shape == (result.steps, pick_place.env.model.nq)
        assert all(np.array_equal(npz[name], result.arrays[name]) for name in episode_data.SCHEMA)
    assert episode_data.encode(arrays) == data  # the same arrays make the same bytes
    assert len(data) < 0.7 * sum(array.nbytes for array in arrays.values())


def test_a_payload_stored_with_float64_simulator_state_reads_back_in_todays_schema(pick_place):
    result = run_episode(pick_place, pick_place.expert_action, 5, Gate(GateConfig()), realtime_factor=0)
    old = {name: array.astype(np.float64) if name in ("qpos", "qvel", "mocap_pos", "mocap_quat") else array
           for name, array in result.arrays.items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **old)  # how payloads were written before
    back = episode_data.decode(buffer.getvalue())
    assert episode_data.validate(back, 500) == result.steps
    assert all(np.array_equal(back[name], result.arrays[name]) for name in result.arrays)

"""`manage.py import_dataset`: a LeRobot dataset (v3.0 or v2.1) of state-based episodes becomes a task's offline
demonstrations, validated like every episode; export -> import gives back the same arrays, and bad data is refused
with a clear error and stores nothing."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from fleet.ingest import load_arrays
from fleet.models import Episode, Task
from review.models import ReplayVideo
from tests.test_review import label_three, task  # noqa: F401  (the fixture)


def run_import(path, task_name="pick-place-v3", *flags) -> str:
    out = io.StringIO()
    call_command("import_dataset", str(path), "--task", task_name, *flags, stdout=out)
    return out.getvalue()


def imported():
    return list(Episode.objects.filter(source=Episode.Source.OFFLINE_DEMO).order_by("meta__imported_from__episode_index"))


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_an_exported_dataset_imports_back_as_demonstrations_with_identical_arrays(task, anna, tmp_path, version):  # noqa: F811
    from review.export import export_dataset, labels_to_export

    arrays, episodes = label_three(task, anna)
    export_dataset(labels_to_export(), tmp_path / "dataset", version=version)
    shelf = Task.objects.create(env_name="shelf-place-v3", title="Shelf place")
    message = run_import(tmp_path / "dataset", "shelf-place-v3", "--assume-success")
    assert f"imported 2 of 2 episodes (70 frames, LeRobot {version})" in message

    kept, relabelled = imported()
    # What the dataset carried comes back bit for bit: observations, the training action (for the relabelled
    # episode, the expert's corrections from its failure step), the expert's actions, rewards and success.
    training = episodes["relabelled"].label.training_arrays(load_arrays(episodes["relabelled"]))
    for episode, source, action in ((kept, arrays["kept"], arrays["kept"]["action"]),
                                    (relabelled, arrays["relabelled"], training["action"])):
        stored = load_arrays(episode)
        for name in ("obs", "expert_action", "reward", "success"):
            np.testing.assert_array_equal(stored[name], source[name], err_msg=name)
        np.testing.assert_array_equal(stored["action"], action)
        assert not stored["intervention"].any() and stored["qpos"].shape == (len(source["obs"]), 1)
        assert (episode.task, episode.seed, episode.outcome, episode.robot, episode.policy_version) == (
            shelf, -1, "failure", None, None)  # the dataset's next.success says no step succeeded
        assert episode.meta["simulator_state"] is False
        assert episode.meta["imported_from"]["format"] == version
    np.testing.assert_array_equal(load_arrays(relabelled)["action"][25:], arrays["relabelled"]["expert_action"][25:])

    # The same episodes again (whichever format): nothing new.
    assert "imported 0 of 2 episodes" in run_import(tmp_path / "dataset", "shelf-place-v3")
    assert len(imported()) == 2


def write_dataset(root, episodes: list[dict], *, state_shape=(39,), success=True, version="v3.0"):
    """A minimal LeRobot v3.0 dataset by hand: `episodes` are {"obs", "action", ...} arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {"observation.state": [], "action": [], "episode_index": [], "frame_index": []}
    if success:
        columns["next.success"] = []
    for index, episode in enumerate(episodes):
        steps = len(episode["obs"])
        columns["observation.state"] += list(episode["obs"])
        columns["action"] += list(episode["action"])
        columns["episode_index"] += [index] * steps
        columns["frame_index"] += list(range(steps))
        if success:
            columns["next.success"] += [False] * (steps - 1) + [True]
    table = pa.table({name: pa.array([np.asarray(v).tolist() for v in values]) if name in ("observation.state",
                                                                                            "action")
                      else pa.array(values) for name, values in columns.items()})
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta").mkdir()
    pq.write_table(table, root / "data" / "chunk-000" / "file-000.parquet")
    features = {"observation.state": {"dtype": "float32", "shape": list(state_shape)},
                "action": {"dtype": "float32", "shape": [4]}}
    if success:
        features["next.success"] = {"dtype": "bool", "shape": [1]}
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": version, "fps": 80,
                                                         "features": features}))


def demo(steps=30, seed=0, obs_width=39, **change):
    rng = np.random.default_rng(seed)
    arrays = {"obs": rng.normal(size=(steps, obs_width)).astype(np.float32),
              "action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32)}
    for name, (index, value) in change.items():
        arrays[name][index] = value
    return arrays


def test_a_hand_written_v30_dataset_imports_and_its_episodes_succeed(task, tmp_path):  # noqa: F811
    episodes = [demo(30, 1), demo(45, 2)]
    write_dataset(tmp_path / "demos", episodes)
    assert "imported 2 of 2 episodes (75 frames" in run_import(tmp_path / "demos")
    for stored, source in zip(imported(), episodes):
        arrays = load_arrays(stored)
        np.testing.assert_array_equal(arrays["obs"], source["obs"])
        np.testing.assert_array_equal(arrays["action"], source["action"])
        np.testing.assert_array_equal(arrays["expert_action"], source["action"])  # the demonstrator is the expert
        assert stored.outcome == "success" and arrays["success"][-1] and not arrays["success"][:-1].any()


@pytest.mark.parametrize("episodes, options, error", [
    ([demo(30, 1, obs_width=38)], {"state_shape": (38,)}, "observation.state has shape [38]; pick-place-v3 needs (39,)"),
    ([demo(30, 1, obs_width=38)], {}, "observation.state has frames of 38 values; this task needs 39"),
    ([demo(30, 1), demo(30, 2, obs=((5, 3), np.nan))], {}, "episode 1: obs contains NaN or infinite values"),
    ([demo(30, 1), demo(30, 2, action=((4, 0), 3.0))], {}, "episode 1: actions must lie in [-1, 1]"),
    ([demo(30, 1), demo(600, 2)], {}, "episode 1: an episode has 1 to 500 steps, this one has 600"),
    ([demo(30, 1)], {"success": False}, "no next.success column: say that its episodes are successful"),
    ([demo(30, 1)], {"version": "v9"}, "LeRobot format 'v9' is not supported"),
])
def test_bad_datasets_are_refused_with_a_clear_error_and_store_nothing(task, tmp_path, episodes, options, error):  # noqa: F811
    write_dataset(tmp_path / "bad", episodes, **options)
    with pytest.raises(CommandError) as refused:
        run_import(tmp_path / "bad")
    assert error in str(refused.value) and "nothing was imported" in str(refused.value)
    assert not Episode.objects.exists()  # not even the good first episode


def test_the_command_refuses_an_unknown_task_a_missing_folder_and_a_folder_that_is_no_dataset(task, tmp_path):  # noqa: F811
    write_dataset(tmp_path / "demos", [demo()])
    with pytest.raises(CommandError, match="unknown task 'reach-v9' \\(known: pick-place-v3\\)"):
        run_import(tmp_path / "demos", "reach-v9")
    with pytest.raises(CommandError, match="is not a folder"):
        run_import(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="is not a LeRobot dataset: it has no meta/info.json"):
        run_import(tmp_path / "empty")
    (tmp_path / "demos" / "data" / "chunk-000" / "file-000.parquet").write_bytes(b"not parquet")
    with pytest.raises(CommandError, match="is not a readable parquet file"):
        run_import(tmp_path / "demos")
    assert not Episode.objects.exists()


def test_an_imported_episode_is_not_replayed_and_says_why(task, tmp_path):  # noqa: F811
    from review.tasks import render_replay

    write_dataset(tmp_path / "demos", [demo()])
    run_import(tmp_path / "demos")
    episode = imported()[0]
    ReplayVideo.objects.create(episode=episode)
    assert render_replay(episode.pk) == "failed"
    video = ReplayVideo.objects.get(pk=episode.pk)
    assert video.status == ReplayVideo.Status.FAILED
    assert "imported from a dataset that holds no simulator state" in video.error

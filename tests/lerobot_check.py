"""`make check-lerobot`: the real `lerobot` package (0.4, in its own virtualenv var/lerobot-venv, with the torch
it pins) opens a dataset this product exported. Not part of `make test` (its file name is outside pytest's
test_*.py pattern, and the target names it); the suite itself checks the written layout with pyarrow
(tests/test_review.py)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fleet.ingest import load_arrays
from tests.conftest import ROOT
from tests.test_review import label_three, task  # noqa: F401  (the fixture)

LEROBOT_PYTHON = Path(os.environ.get("LEROBOT_PYTHON") or ROOT / "var" / "lerobot-venv" / "bin" / "python")


def test_lerobot_loads_the_exported_dataset_and_batches_it(task, anna, tmp_path):  # noqa: F811
    from review.export import export_dataset, labels_to_export

    if not LEROBOT_PYTHON.exists():
        pytest.fail(f"{LEROBOT_PYTHON} is missing: run make check-lerobot, which builds it")
    arrays, episodes = label_three(task, anna)
    info = export_dataset(labels_to_export(), tmp_path / "dataset")
    result = subprocess.run([str(LEROBOT_PYTHON), "bin/lerobot-check.py", str(tmp_path / "dataset")], cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
                                 "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.splitlines()[-1])
    print("\nlerobot read the export:", json.dumps(found))
    assert found["codebase_version"] == "v3.0" and found["lerobot"].startswith("0.4.")
    assert found["len"] == found["num_frames"] == info["total_frames"] == 70 and found["num_episodes"] == 2
    assert found["fps"] == info["fps"]
    assert found["item_action_shape"] == [4] and found["item_state_shape"] == [39]
    assert found["item_action_dtype"] == "torch.float32" and found["item_task"] == "pick-place-v3"
    assert (found["item_episode_index"], found["item_frame_index"]) == (1, 39)
    # The last frame of the relabelled episode: its action is the expert's correction, as the export wrote it.
    training = episodes["relabelled"].label.training_arrays(load_arrays(episodes["relabelled"]))
    np.testing.assert_array_equal(np.array(found["item_action"], np.float32), training["action"][-1])
    np.testing.assert_array_equal(training["action"][-1], arrays["relabelled"]["expert_action"][-1])
    assert found["batch_action_shape"] == [16, 4] and found["batch_state_shape"] == [16, 39]
    assert {"q01", "q99", "mean", "std"} <= set(found["stats_keys"])

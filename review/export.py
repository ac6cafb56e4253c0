"""Labelled episodes as a LeRobot dataset (format v2.1), so the data leaves the product in a form that
robot-learning tools read (https://github.com/huggingface/lerobot, `LeRobotDataset`):

    meta/info.json            codebase_version, fps, features (dtype, shape, names), paths, totals, splits
    meta/tasks.jsonl          {"task_index", "task"} per task
    meta/episodes.jsonl       {"episode_index", "tasks", "length"} + this product's label and provenance
    meta/episodes_stats.jsonl per-episode min / max / mean / std / count of every feature
    data/chunk-000/episode_000000.parquet   one row per step

`action` is the training target: the action taken, except in a relabelled episode's failing segment, where it is
the scripted expert's correction (`intervention` true, `intervention_source` 3 = annotator). What the robot
actually did is kept in `action.executed`, and the expert's action at every step in `expert_action`.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fleet.ingest import load_arrays
from fleet.sim import gate
from fleet.sim.envs import ACTION_DIM, CONTROL_DT, OBS_DIM
from review.models import EpisodeLabel

CODEBASE_VERSION = "v2.1"
CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
ACTION_NAMES = {"motors": ["dx", "dy", "dz", "gripper"]}
# intervention_source codes as names, by code (fleet.sim.gate's table, plus the policy's own code)
SOURCE_NAMES = [{gate.POLICY: "policy", **gate.SOURCE_NAMES}[code] for code in range(len(gate.SOURCE_NAMES) + 1)]


def features() -> dict:
    scalar = {"shape": [1], "names": None}
    return {
        "observation.state": {"dtype": "float32", "shape": [OBS_DIM], "names": None},
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": ACTION_NAMES},
        "action.executed": {"dtype": "float32", "shape": [ACTION_DIM], "names": ACTION_NAMES},
        "expert_action": {"dtype": "float32", "shape": [ACTION_DIM], "names": ACTION_NAMES},
        "intervention": {"dtype": "bool", **scalar},
        "intervention_source": {"dtype": "int64", "shape": [1], "names": SOURCE_NAMES},
        "next.reward": {"dtype": "float32", **scalar},
        "next.success": {"dtype": "bool", **scalar},
        "next.done": {"dtype": "bool", **scalar},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
    }


def _columns(arrays: dict, training: dict, episode_index: int, task_index: int, first_index: int) -> dict:
    steps = len(arrays["obs"])
    done = np.zeros(steps, bool)
    done[-1] = True
    return {
        "observation.state": arrays["obs"].astype(np.float32),
        "action": training["action"].astype(np.float32),
        "action.executed": arrays["action"].astype(np.float32),
        "expert_action": arrays["expert_action"].astype(np.float32),
        "intervention": training["intervention"].astype(bool),
        "intervention_source": training["intervention_source"].astype(np.int64),
        "next.reward": arrays["reward"].astype(np.float32),
        "next.success": arrays["success"].astype(bool),
        "next.done": done,
        "timestamp": (np.arange(steps) * CONTROL_DT).astype(np.float32),
        "frame_index": np.arange(steps, dtype=np.int64),
        "episode_index": np.full(steps, episode_index, np.int64),
        "index": np.arange(first_index, first_index + steps, dtype=np.int64),
        "task_index": np.full(steps, task_index, np.int64),
    }


def _table(columns: dict):
    import pyarrow as pa

    arrays, names = [], []
    for name, values in columns.items():
        if values.ndim == 2:  # fixed-size lists, as LeRobot's `datasets` features store vectors
            flat = pa.array(values.reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
        else:
            arrays.append(pa.array(values))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _stats(columns: dict) -> dict:
    stats = {}
    for name, values in columns.items():
        data = values.reshape(len(values), -1).astype(np.float64)
        stats[name] = {"min": data.min(0).tolist(), "max": data.max(0).tolist(), "mean": data.mean(0).tolist(),
                       "std": data.std(0).tolist(), "count": [len(values)]}
    return stats


def export_dataset(labels, out_dir: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Write the labelled episodes (EpisodeLabel rows, in the given order) as a dataset under `out_dir`, which
    must not exist yet. An excluded episode, if asked for, is written as recorded. `progress`, if given, is told
    how many episodes are written after each one. Returns the info.json dict."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: export into a new folder")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "meta").mkdir(parents=True)
    tasks: dict[str, int] = {}
    episodes, stats_lines, total_frames = [], [], 0
    for episode_index, label in enumerate(labels):
        episode = label.episode
        arrays = load_arrays(episode)
        training = label.training_arrays(arrays) or arrays
        task_index = tasks.setdefault(episode.task.env_name, len(tasks))
        columns = _columns(arrays, training, episode_index, task_index, total_frames)
        path = tmp / DATA_PATH.format(episode_chunk=episode_index // CHUNK_SIZE, episode_index=episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(columns), path)
        episodes.append({
            "episode_index": episode_index, "tasks": [episode.task.env_name], "length": episode.steps,
            "source_episode_id": episode.pk, "source_episode_uuid": str(episode.uuid), "seed": episode.seed,
            "outcome": episode.outcome, "source": episode.source,
            "policy_version": episode.policy_version.number if episode.policy_version else None,
            "robot": episode.robot.name if episode.robot else None,
            "failure_mode": label.failure_mode, "failure_step": label.failure_step,
            "disposition": label.disposition, "notes": label.notes,
            "annotator": label.annotator.get_username() if label.annotator else None,
            "labelled_at": label.updated_at.isoformat(),
        })
        stats_lines.append({"episode_index": episode_index, "stats": _stats(columns)})
        total_frames += episode.steps
        if progress is not None:
            progress(episode_index + 1)
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": "sawyer", "total_episodes": len(episodes),
        "total_frames": total_frames, "total_tasks": len(tasks), "total_videos": 0,
        "total_chunks": (len(episodes) + CHUNK_SIZE - 1) // CHUNK_SIZE, "chunks_size": CHUNK_SIZE,
        "fps": round(1 / CONTROL_DT), "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
        "video_path": None, "features": features(),
    }
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    _jsonl(tmp / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in tasks.items()])
    _jsonl(tmp / "meta" / "episodes.jsonl", episodes)
    _jsonl(tmp / "meta" / "episodes_stats.jsonl", stats_lines)
    (tmp / "README.md").write_text(__doc__)
    tmp.rename(out_dir)
    return info


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def labels_to_export(task=None, dispositions=(EpisodeLabel.Disposition.KEEP, EpisodeLabel.Disposition.RELABEL)):
    rows = (EpisodeLabel.objects.filter(disposition__in=list(dispositions))
            .select_related("episode__task", "episode__policy_version", "episode__robot", "annotator")
            .order_by("episode_id"))
    if task is not None:
        rows = rows.filter(episode__task=task)
    return rows

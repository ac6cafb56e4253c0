"""Labelled episodes as a LeRobot dataset, so the data leaves the product in a form that robot-learning tools read
(https://github.com/huggingface/lerobot, `LeRobotDataset`). Format v3.0 by default (lerobot 0.4 and later):

    meta/info.json            codebase_version "v3.0", fps, features (dtype, shape, names), paths, totals, splits
    meta/tasks.parquet        the task strings (as the pandas index) and their task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: where its frames are, its statistics, and this
                              product's label and provenance (extra columns)
    meta/stats.json           min / max / mean / std / count and the q01-q99 quantiles of every feature
    data/chunk-000/file-000.parquet            one row per step, many episodes per file (a new file past 100 MB)

Format v2.1 (`version="v2.1"`, for tools that still read it) keeps one parquet file per episode and JSON-lines
metadata (meta/tasks.jsonl, meta/episodes.jsonl with the label and provenance, meta/episodes_stats.jsonl).

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

VERSIONS = ("v3.0", "v2.1")
CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"  # v2.1
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_FILE_MB = 100  # lerobot's default data_files_size_in_mb: a new data file once one holds this much
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
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
                       "std": data.std(0).tolist(), "count": [len(values)],
                       **{key: np.quantile(data, q, axis=0).tolist() for key, q in QUANTILES.items()}}
    return stats


def export_dataset(labels, out_dir: Path, progress: Callable[[int], None] | None = None,
                   version: str = "v3.0") -> dict:
    """Write the labelled episodes (EpisodeLabel rows, in the given order) as a dataset of format `version` under
    `out_dir`, which must not exist yet. An excluded episode, if asked for, is written as recorded. `progress`, if
    given, is told how many episodes are written after each one. Returns the info.json dict."""
    if version not in VERSIONS:
        raise ValueError(f"unknown LeRobot format {version!r}: {', '.join(VERSIONS)}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: export into a new folder")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "meta").mkdir(parents=True)
    writer = _write_v30 if version == "v3.0" else _write_v21
    info = writer(labels, tmp, progress)
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (tmp / "README.md").write_text(__doc__)
    tmp.rename(out_dir)
    return info


def _provenance(label, episode_index: int) -> dict:
    """This product's label and provenance of one exported episode."""
    episode = label.episode
    return {
        "episode_index": episode_index, "tasks": [episode.task.env_name], "length": episode.steps,
        "source_episode_id": episode.pk, "source_episode_uuid": str(episode.uuid), "seed": episode.seed,
        "outcome": episode.outcome, "source": episode.source,
        "policy_version": episode.policy_version.number if episode.policy_version else None,
        "robot": episode.robot.name if episode.robot else None,
        "failure_mode": label.failure_mode, "failure_step": label.failure_step,
        "disposition": label.disposition, "notes": label.notes,
        "annotator": label.annotator.get_username() if label.annotator else None,
        "labelled_at": label.updated_at.isoformat(),
    }


def _episodes(labels, progress):
    """(index, label, columns) of each exported episode, with its task's index; the frames counted as they go."""
    tasks: dict[str, int] = {}
    total_frames = 0
    for episode_index, label in enumerate(labels):
        episode = label.episode
        arrays = load_arrays(episode)
        training = label.training_arrays(arrays) or arrays
        task_index = tasks.setdefault(episode.task.env_name, len(tasks))
        yield episode_index, label, _columns(arrays, training, episode_index, task_index, total_frames), tasks
        total_frames += episode.steps
        if progress is not None:
            progress(episode_index + 1)


def _info(version: str, episodes: int, frames: int, tasks: int) -> dict:
    common = {"codebase_version": version, "robot_type": "sawyer", "total_episodes": episodes,
              "total_frames": frames, "total_tasks": tasks, "chunks_size": CHUNK_SIZE, "fps": round(1 / CONTROL_DT),
              "splits": {"train": f"0:{episodes}"}, "video_path": None, "features": features()}
    if version == "v2.1":
        return {**common, "total_videos": 0, "total_chunks": (episodes + CHUNK_SIZE - 1) // CHUNK_SIZE,
                "data_path": DATA_PATH}
    return {**common, "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": 200,
            "data_path": V3_DATA_PATH}


def _write_v21(labels, tmp: Path, progress) -> dict:
    import pyarrow.parquet as pq

    episodes, stats_lines, total_frames, tasks = [], [], 0, {}
    for episode_index, label, columns, tasks in _episodes(labels, progress):
        path = tmp / DATA_PATH.format(episode_chunk=episode_index // CHUNK_SIZE, episode_index=episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(columns), path)
        episodes.append(_provenance(label, episode_index))
        stats_lines.append({"episode_index": episode_index, "stats": _stats(columns)})
        total_frames += len(columns["index"])
    _jsonl(tmp / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in tasks.items()])
    _jsonl(tmp / "meta" / "episodes.jsonl", episodes)
    _jsonl(tmp / "meta" / "episodes_stats.jsonl", stats_lines)
    return _info("v2.1", len(episodes), total_frames, len(tasks))


def _write_v30(labels, tmp: Path, progress) -> dict:
    """Many episodes per data file (streamed with one ParquetWriter, a new file past DATA_FILE_MB), one row per
    episode in the episodes file, the dataset's statistics aggregated from the episodes' as lerobot does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, per_episode, tasks = [], [], {}
    writer, file_index, file_bytes, total_frames = None, 0, 0, 0
    try:
        for episode_index, label, columns, tasks in _episodes(labels, progress):
            table = _table(columns)
            if writer is not None and file_bytes + table.nbytes > DATA_FILE_MB * 1024 * 1024:
                writer.close()
                writer, file_index, file_bytes = None, file_index + 1, 0
            chunk_index, file_in_chunk = divmod(file_index, CHUNK_SIZE)
            if writer is None:
                path = tmp / V3_DATA_PATH.format(chunk_index=chunk_index, file_index=file_in_chunk)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            file_bytes += table.nbytes
            stats = _stats(columns)
            per_episode.append(stats)
            length = len(columns["index"])
            rows.append({**_provenance(label, episode_index), "data/chunk_index": chunk_index,
                         "data/file_index": file_in_chunk, "dataset_from_index": total_frames,
                         "dataset_to_index": total_frames + length, "meta/episodes/chunk_index": 0,
                         "meta/episodes/file_index": 0,
                         **{f"stats/{name}/{key}": value for name, feature in stats.items()
                            for key, value in feature.items()}})
            total_frames += length
    finally:
        if writer is not None:
            writer.close()
    episodes_path = tmp / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes_path)
    _write_tasks(tmp / "meta" / "tasks.parquet", tasks)
    (tmp / "meta" / "stats.json").write_text(json.dumps(_aggregate(per_episode)))
    return _info("v3.0", len(rows), total_frames, len(tasks))


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet as lerobot writes it with pandas: the task strings are the frame's index (stored as the
    `task` column and named in the pandas metadata), `task_index` its one column, rows in task_index order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(tasks.items(), key=lambda item: item[1])
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3",
    }
    table = pa.table({"task_index": pa.array([index for _, index in ordered], pa.int64()),
                      "task": pa.array([task for task, _ in ordered], pa.string())})
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), path)


def _aggregate(per_episode: list[dict]) -> dict:
    """The dataset's statistics from its episodes': exact min, max, mean and (population) std from the counts;
    each quantile the count-weighted mean of the episodes' quantiles, as lerobot aggregates them."""
    out = {}
    for name in per_episode[0] if per_episode else ():
        counts = np.array([e[name]["count"][0] for e in per_episode], np.float64)
        means = np.array([e[name]["mean"] for e in per_episode])
        stds = np.array([e[name]["std"] for e in per_episode])
        weights = counts[:, None] / counts.sum()
        mean = (means * weights).sum(0)
        variance = ((stds ** 2 + (means - mean) ** 2) * weights).sum(0)
        out[name] = {"min": np.min([e[name]["min"] for e in per_episode], 0).tolist(),
                     "max": np.max([e[name]["max"] for e in per_episode], 0).tolist(),
                     "mean": mean.tolist(), "std": np.sqrt(variance).tolist(), "count": [int(counts.sum())],
                     **{key: (np.array([e[name][key] for e in per_episode]) * weights).sum(0).tolist()
                        for key in QUANTILES}}
    return out


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def labels_to_export(task=None, dispositions=(EpisodeLabel.Disposition.KEEP, EpisodeLabel.Disposition.RELABEL)):
    rows = (EpisodeLabel.objects.filter(disposition__in=list(dispositions))
            .select_related("episode__task", "episode__policy_version", "episode__robot", "annotator")
            .order_by("episode_id"))
    if task is not None:
        rows = rows.filter(episode__task=task)
    return rows

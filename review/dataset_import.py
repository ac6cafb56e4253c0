"""A LeRobot dataset of state-based episodes brought in as a task's offline demonstrations (`manage.py
import_dataset`), the way back from review/export.py.

Read: format v3.0 (many episodes per data file) or v2.x (one file per episode); both keep every frame in
`data/**/*.parquet` with its `episode_index` and `frame_index`, so both are read the same way. What is taken:

    observation.state  (OBS_DIM floats)    -> obs                 required
    action             (ACTION_DIM floats) -> action              required: what the demonstrator did (for a
                                                                  dataset this product exported, the training target)
    expert_action                          -> expert_action       else the action itself
    next.reward                            -> reward              else zero
    next.success                           -> success; the outcome is success if any step succeeded. Without the
                                              column the caller must say that every episode is a successful
                                              demonstration (`assume_success`: success at its last step).

A demonstration is the demonstrator's own control, so no step is an intervention. There is no simulator state in a
LeRobot dataset: qpos / qvel are stored as one zero column each, mocap as zeros, and the episode's meta says
`"simulator_state": false` (replay refuses it with that reason). The seed is -1 (none). Each episode's UUID is
derived from the task and its observations and actions, so importing the same data again stores nothing new.

Everything is read and validated (fleet.sim.episode_data, exactly as any episode) before anything is written, and
all of it is stored in one transaction: a bad episode anywhere stores none.
"""
from __future__ import annotations

import hashlib
import json
import uuid as uuid_lib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.db import transaction
from django.utils import timezone

from fleet.ingest import EpisodeRejected, ingest_episode
from fleet.models import Episode, Task
from fleet.sim import episode_data
from fleet.sim.envs import ACTION_DIM, OBS_DIM
from fleet.sim.gate import POLICY

FORMATS = ("v2.0", "v2.1", "v3.0")
REQUIRED = {"observation.state": OBS_DIM, "action": ACTION_DIM}
OPTIONAL_VECTORS = {"expert_action": ACTION_DIM}
OPTIONAL_SCALARS = ("next.reward", "next.success")
NO_SEED = -1


class DatasetError(ValueError):
    """The dataset cannot be imported; nothing was stored."""


@dataclass
class Imported:
    episode_index: int
    arrays: dict
    outcome: str


@dataclass
class Report:
    format: str
    episodes: int
    frames: int
    created: int

    @property
    def skipped(self) -> int:
        return self.episodes - self.created


def read_dataset(root: Path, task: Task, assume_success: bool = False) -> tuple[str, float, list[Imported]]:
    """(format, fps, episodes) of the dataset at `root`, every episode validated for `task`; raises DatasetError."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"{root} is not a LeRobot dataset: it has no meta/info.json")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"meta/info.json is unreadable: {exc}") from None
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in FORMATS:
        raise DatasetError(f"LeRobot format {version!r} is not supported: {', '.join(FORMATS)}")
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise DatasetError(f"meta/info.json gives no frame rate (fps {fps!r})")
    features = info.get("features") or {}
    for name, width in REQUIRED.items():
        if name not in features:
            raise DatasetError(f"the dataset has no {name} feature: state-based episodes need "
                               f"{' and '.join(REQUIRED)}")
        _check_shape(name, features[name].get("shape"), width, task)
    if "next.success" not in features and not assume_success:
        raise DatasetError("the dataset has no next.success column: say that its episodes are successful "
                           "demonstrations (--assume-success), or add the column")
    files = sorted((root / "data").glob("**/*.parquet"))
    if not files:
        raise DatasetError("the dataset has no data files (data/**/*.parquet)")
    columns = _read_frames(files, features)
    episodes = []
    order = np.lexsort((columns["frame_index"], columns["episode_index"]))
    columns = {name: values[order] for name, values in columns.items()}
    indices, starts = np.unique(columns["episode_index"], return_index=True)
    for episode_index, start, end in zip(indices, starts, [*starts[1:], len(order)]):
        frames = {name: values[start:end] for name, values in columns.items()}
        if not np.array_equal(frames["frame_index"], np.arange(end - start)):
            raise DatasetError(f"episode {episode_index}: its frame_index is not 0, 1, 2, ... (frames missing or "
                               "repeated)")
        episodes.append(_episode(int(episode_index), frames, task, assume_success))
    return version, float(fps), episodes


def _check_shape(name: str, shape, width: int, task: Task) -> None:
    if list(shape or []) != [width]:
        raise DatasetError(f"{name} has shape {shape}; {task.env_name} needs ({width},)")


def _read_frames(files: list[Path], features: dict) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = [*REQUIRED, *OPTIONAL_VECTORS, *OPTIONAL_SCALARS, "episode_index", "frame_index"]
    tables = []
    for path in files:
        try:
            schema = pq.read_schema(path)
            present = [name for name in wanted if name in schema.names]
            for name in [*REQUIRED, "episode_index", "frame_index"]:
                if name not in present:
                    raise DatasetError(f"{path.name} has no {name} column")
            tables.append(pq.read_table(path, columns=present))
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{path} is not a readable parquet file: {exc}") from None
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as exc:
        raise DatasetError(f"the data files disagree on their columns: {exc}") from None
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if column.null_count:
            raise DatasetError(f"{name} has {column.null_count} empty value(s)")
        width = {**REQUIRED, **OPTIONAL_VECTORS}.get(name)
        out[name] = _matrix(name, column, width) if width else _vector(name, column)
    return out


def _matrix(name: str, column, width: int) -> np.ndarray:
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise DatasetError(f"{name} must hold a list of {width} numbers per frame, not {kind}")
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != width).any():
        bad = int(lengths[lengths != width][0])
        raise DatasetError(f"{name} has frames of {bad} values; this task needs {width}")
    values = column.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise DatasetError(f"{name} must hold numbers, not {values.type}")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), width)


def _vector(name: str, column) -> np.ndarray:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind):  # a one-element list per frame
        if (column.value_lengths().to_numpy(zero_copy_only=False) != 1).any():
            raise DatasetError(f"{name} must hold one value per frame")
        column = column.flatten()
    if not (pa.types.is_boolean(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_integer(column.type)):
        raise DatasetError(f"{name} must hold numbers, not {column.type}")
    return column.to_numpy(zero_copy_only=False)


def _episode(episode_index: int, frames: dict, task: Task, assume_success: bool) -> Imported:
    steps = len(frames["observation.state"])
    action = frames["action"]
    if "next.success" in frames:
        success = frames["next.success"].astype(bool)
    else:
        success = np.zeros(steps, bool)
        success[-1] = assume_success
    arrays = {
        "obs": frames["observation.state"],
        "action": action,
        "expert_action": frames.get("expert_action", action).astype(np.float32),
        "intervention": np.zeros(steps, bool),
        "intervention_source": np.full(steps, POLICY, np.uint8),
        "reward": frames.get("next.reward", np.zeros(steps)).astype(np.float32),
        "success": success,
        "qpos": np.zeros((steps, 1), np.float32),
        "qvel": np.zeros((steps, 1), np.float32),
        "mocap_pos": np.zeros((steps, 3), np.float32),
        "mocap_quat": np.zeros((steps, 4), np.float32),
    }
    try:
        episode_data.validate(arrays, task.max_steps)
    except episode_data.EpisodeDataError as exc:
        raise DatasetError(f"episode {episode_index}: {exc}") from None
    outcome = Episode.Outcome.SUCCESS if success.any() else Episode.Outcome.FAILURE
    return Imported(episode_index, arrays, outcome)


def episode_uuid(task: Task, arrays: dict) -> uuid_lib.UUID:
    """The same task, observations and actions: the same episode, whichever file or format they came in."""
    digest = hashlib.sha256(np.ascontiguousarray(arrays["obs"]).tobytes()
                            + np.ascontiguousarray(arrays["action"]).tobytes()).hexdigest()
    return uuid_lib.uuid5(uuid_lib.NAMESPACE_URL, f"sopweb-import/{task.env_name}/{digest}")


def import_dataset(root: Path, task: Task, assume_success: bool = False) -> Report:
    """Store the dataset's episodes as `task`'s offline demonstrations (all or none); see the module's text."""
    version, fps, episodes = read_dataset(root, task, assume_success)
    created = 0
    finished = timezone.now()
    with transaction.atomic():
        for item in episodes:
            steps = len(item.arrays["obs"])
            try:
                _, new = ingest_episode(
                    uuid=episode_uuid(task, item.arrays), task=task.env_name, seed=NO_SEED, outcome=item.outcome,
                    arrays=item.arrays, started_at=finished - timedelta(seconds=steps / fps), finished_at=finished,
                    source=Episode.Source.OFFLINE_DEMO,
                    meta={"simulator_state": False,
                          "imported_from": {"dataset": Path(root).resolve().name, "format": version,
                                            "episode_index": item.episode_index}})
            except EpisodeRejected as exc:  # the transaction rolls back what came before
                raise DatasetError(f"episode {item.episode_index}: {exc}") from None
            created += new
    return Report(version, len(episodes), sum(len(e.arrays["obs"]) for e in episodes), created)

"""Ingestion: an episode's row, payload and intervention segments in one transaction, keyed by its UUID.

Everything is validated before anything is written; a retried delivery of the same UUID returns the row that
exists and writes nothing. On commit: a live event for dashboards and a nudge for the learner.

Storing an episode is one INSERT statement that writes the episode, its payload and its segments together, and
re-checks in its WHERE clause the rows that validation relied on (task and step limit, robot, version). A single
statement is atomic on its own and joins the caller's transaction when there is one, so there is no BEGIN/COMMIT
round trip, no half-written episode, and no separate lookup on the common path: a task's id and step limit are
cached per process, and a lookup runs only for a task not seen yet or when the INSERT wrote nothing (a repeated
UUID, an unknown robot or version, a changed task), to say why.
"""
from __future__ import annotations

import functools
import hashlib
import uuid as uuid_lib
from contextlib import nullcontext
from datetime import datetime
from types import SimpleNamespace
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from core import bus, metrics
from core.events import broadcast
from fleet import group_commit
from fleet.models import Episode, EpisodePayload, InterventionSegment, Robot, Task, version_model
from fleet.sim import episode_data
from fleet.sim.gate import ANNOTATOR, GATE, OPERATOR, SOURCE_NAMES


class EpisodeRejected(ValueError):
    """The episode was refused with a reason; nothing was written."""


def ingest_episode(*, uuid: str | uuid_lib.UUID, task: str, seed: int, outcome: str, arrays: dict,
                   started_at: datetime, finished_at: datetime, robot_id: int | None = None,
                   policy_version_id: int | None = None, source: str = Episode.Source.ONLINE,
                   meta: dict | None = None, payload: bytes | None = None) -> tuple[Episode, bool]:
    """Validate and store one episode. Returns (episode, created); created is False for a repeated UUID.
    `payload`: the arrays as a .npz already (an upload that was read from it); stored as it is, not re-encoded.
    Timed and counted for Prometheus (core.metrics): a stored episode once its transaction commits, a refusal as
    reason "invalid"."""
    with metrics.timing(metrics.INGEST_SECONDS), (group_commit.producing() if _groupable() else nullcontext()):
        try:
            return _ingest(uuid, task, seed, outcome, arrays, started_at, finished_at, robot_id, policy_version_id,
                           source, meta, payload)
        except EpisodeRejected:
            metrics.rejected("invalid")
            raise


def _ingest(uuid, task, seed, outcome, arrays, started_at, finished_at, robot_id, policy_version_id, source, meta,
            payload) -> tuple[Episode, bool]:
    key = _check_fields(uuid, task, seed, outcome, started_at, finished_at, robot_id, policy_version_id, source)
    episode = Episode(uuid=key, robot_id=robot_id, policy_version_id=policy_version_id, source=source, seed=seed,
                      outcome=outcome, meta=meta or {}, started_at=started_at, finished_at=finished_at)
    existing, task_row = None, _tasks.get(task)
    for _ in range(3):
        fresh = task_row is None
        if fresh:
            existing, task_row = _look_up(key, task, robot_id, policy_version_id)
        if existing is not None:
            return existing, False
        try:
            episode.steps = episode_data.validate(arrays, task_row.max_steps)
            payload = payload or episode_data.encode(arrays)
        except episode_data.EpisodeDataError as exc:
            if fresh:
                raise EpisodeRejected(str(exc)) from None
            task_row = None  # judge it by the task's step limit as it is now, not as this process cached it
            continue
        segments = _summarise(episode, arrays, task_row)
        episode.pk = _insert(episode, task, payload, segments)
        if episode.pk is not None:
            break
        # Nothing was written: the UUID exists (maybe committed concurrently), the robot or version does not, or
        # the task changed since this process cached it. The lookup says which, and refreshes the task.
        task_row = None
    else:
        existing, _ = _look_up(key, task, robot_id, policy_version_id)
        if existing is not None:
            return existing, False
        raise EpisodeRejected(f"task {task!r} kept changing while the episode was being stored; nothing was written")
    episode._state.adding, episode._state.db = False, connection.alias
    _announce(episode, task)
    return episode, True


def _check_fields(uuid, task, seed, outcome, started_at, finished_at, robot_id, policy_version_id,
                  source) -> uuid_lib.UUID:
    """The episode's summary fields, checked before anything is read or written. Returns the UUID."""
    try:
        key = uuid_lib.UUID(str(uuid))
    except ValueError:
        raise EpisodeRejected(f"episode uuid {uuid!r} is not a UUID") from None
    if not isinstance(task, str):
        raise EpisodeRejected(f"unknown task {task!r}")
    for name, value in (("robot", robot_id), ("policy version", policy_version_id)):
        if value is not None and (type(value) is not int or not 0 < value < 2**63):
            raise EpisodeRejected(f"unknown {name} {value!r}")
    if source not in _SOURCES:
        raise EpisodeRejected(f"unknown episode source {source!r}")
    if outcome not in _OUTCOMES:
        raise EpisodeRejected(f"unknown outcome {outcome!r}")
    if finished_at < started_at:
        raise EpisodeRejected("an episode cannot finish before it starts")
    if not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise EpisodeRejected(f"seed must be a 64-bit integer, got {seed!r}")
    return key


def _summarise(episode: Episode, arrays: dict, task_row: _TaskRow) -> list:
    """Fill the episode's derived columns from its validated arrays; returns its intervention segments."""
    if (episode.outcome == Episode.Outcome.SUCCESS) != bool(arrays["success"].any()):
        raise EpisodeRejected(f"outcome {episode.outcome!r} contradicts the recorded success flags")
    episode.task_id = task_row.id
    episode.total_return = float(arrays["reward"].sum(dtype="float64"))
    episode.intervention_steps = int(arrays["intervention"].sum())
    segments = episode_data.segments(arrays["intervention_source"])
    episode.intervention_count = sum(code in (GATE, OPERATOR) for _, _, code in segments)
    return segments


def _announce(episode: Episode, task: str) -> None:
    """Dashboards hear of the new episode, and the learner first (its nudge leads the round trip)."""
    event = {"episode": episode.pk, "task": task, "robot": episode.robot_id, "version": episode.policy_version_id,
             "source": episode.source, "outcome": episode.outcome, "autonomous": episode.autonomous_success,
             "steps": episode.steps,
             "intervention_steps": episode.intervention_steps, "interventions": episode.intervention_count,
             "finished_at": episode.finished_at.isoformat()}
    succeeded = episode.outcome == Episode.Outcome.SUCCESS
    intervened = succeeded and not episode.autonomous_success

    def committed():
        broadcast("episode.finished", event, nudge=(bus.EPISODES_CHANNEL, event))
        metrics.episode_ingested(task, episode.source, succeeded, intervened)

    # Outside a transaction the INSERT has committed already and this runs at once; inside one, at its commit.
    transaction.on_commit(committed)


_SOURCES, _OUTCOMES = frozenset(Episode.Source.values), frozenset(Episode.Outcome.values)


class _TaskRow(NamedTuple):
    id: int
    max_steps: int


# Env name -> task, this process's copy. Tasks are configuration and hardly change; each INSERT re-checks the
# copy it used (id, name, step limit), so a stale one costs a lookup, never a wrong row.
_tasks: dict[str, _TaskRow] = {}


def _look_up(key: uuid_lib.UUID, task: str, robot_id: int | None,
             policy_version_id: int | None) -> tuple[Episode | None, _TaskRow | None]:
    """The episode stored under `key` if there is one, else the task; raises EpisodeRejected for unknown rows."""
    with connection.wrap_database_errors, _cursor() as cursor:
        cursor.execute(_statements().lookup,
                       {"uuid": key, "task": task, "robot": robot_id, "version": policy_version_id}, prepare=True)
        existing_id, task_id, max_steps, robot_known, version_known = cursor.fetchone()
    if existing_id is not None:
        return Episode.objects.get(pk=existing_id), None
    if task_id is None:
        _tasks.pop(task, None)
        raise EpisodeRejected(f"unknown task {task!r}")
    if not robot_known:
        raise EpisodeRejected(f"unknown robot {robot_id!r}")
    if not version_known:
        raise EpisodeRejected(f"unknown policy version {policy_version_id!r}")
    _tasks[task] = _TaskRow(task_id, max_steps)
    return None, _tasks[task]


def _insert(episode: Episode, task: str, payload: bytes, segments: list) -> int | None:
    """Write the episode, its payload and its segments in one statement. Returns the new id, or None when nothing
    was written because a check in the statement failed or the UUID exists."""
    from psycopg.types.json import Jsonb

    params = {
        **{column: getattr(episode, column) for column in _EPISODE_COLUMNS}, "meta": Jsonb(episode.meta),
        "task": task, "payload": payload, "nbytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
        "segment_starts": [start for start, _, _ in segments],
        "segment_ends": [end for _, end, _ in segments],
        "segment_sources": [SOURCE_NAMES[code] for _, _, code in segments],
    }
    try:
        if _groupable() and group_commit.active() > 1:
            # Others of this process are storing episodes now, and this one is outside a transaction of its own:
            # it is committed with theirs. Alone, it goes straight on its own connection (no hand-off to wait for).
            if getattr(connection, "pool", None) is not None:
                # A pooled connection goes back while this thread waits: the writer needs one from the same pool,
                # and callers holding theirs while they wait for it could take the last.
                connection.close()
            return _writer().submit(params)
        with connection.wrap_database_errors, _cursor() as cursor:
            cursor.execute(_statements().insert, params, prepare=True)
            row = cursor.fetchone()
    except IntegrityError as exc:
        # The statement checked every reference, so only a row deleted since then fails a foreign key at commit.
        raise EpisodeRejected(f"the episode refers to a row deleted meanwhile: {exc}") from None
    return None if row is None else row[0]


_EPISODE_COLUMNS = ("uuid", "robot_id", "task_id", "policy_version_id", "source", "seed", "outcome", "steps",
                    "total_return", "intervention_steps", "intervention_count", "meta", "started_at", "finished_at",
                    "created_at")


@functools.cache
def _statements() -> SimpleNamespace:
    """The lookup and the insert, built once from the models."""
    episode, payload, task = Episode._meta.db_table, EpisodePayload._meta.db_table, Task._meta.db_table
    robot, version = Robot._meta.db_table, version_model()._meta.db_table
    fields = [Episode._meta.get_field(column.removesuffix("_id")) for column in _EPISODE_COLUMNS]
    return SimpleNamespace(
        lookup=f"""
            SELECT (SELECT id FROM {episode} WHERE uuid = %(uuid)s), task.id, task.max_steps,
                   %(robot)s::bigint IS NULL OR EXISTS (SELECT FROM {robot} WHERE id = %(robot)s),
                   %(version)s::bigint IS NULL OR EXISTS (SELECT FROM {version} WHERE id = %(version)s)
            FROM (VALUES (1)) AS one LEFT JOIN {task} AS task ON task.env_name = %(task)s""",
        # The WHERE re-checks what validation assumed (the task and its step limit, the robot, the version) in
        # the statement that writes, so a row that changed meanwhile writes nothing rather than a wrong episode.
        # ON CONFLICT DO NOTHING waits for a concurrent insert of the same UUID to commit or roll back, then
        # writes nothing (no id returned, so neither payload nor segments) or writes as if alone.
        insert=f"""
            WITH episode AS (
                INSERT INTO {episode} ({", ".join(field.column for field in fields)})
                SELECT {", ".join(f"%({f.column})s::{f.db_type(connection)}" for f in fields)}
                WHERE EXISTS (SELECT FROM {task}
                              WHERE id = %(task_id)s AND env_name = %(task)s AND max_steps >= %(steps)s)
                  AND (%(robot_id)s::bigint IS NULL OR EXISTS (SELECT FROM {robot} WHERE id = %(robot_id)s))
                  AND (%(policy_version_id)s::bigint IS NULL
                       OR EXISTS (SELECT FROM {version} WHERE id = %(policy_version_id)s))
                ON CONFLICT (uuid) DO NOTHING
                RETURNING id
            ), payload AS (
                INSERT INTO {payload} (episode_id, data, nbytes, sha256)
                SELECT id, %(payload)b, %(nbytes)s, %(sha256)s FROM episode
            ), segments AS (
                INSERT INTO {InterventionSegment._meta.db_table} (episode_id, start_step, end_step, source)
                SELECT episode.id, segment.start_step, segment.end_step, segment.source
                FROM episode, unnest(%(segment_starts)s::integer[], %(segment_ends)s::integer[],
                                     %(segment_sources)s::varchar[]) AS segment(start_step, end_step, source)
            )
            SELECT id FROM episode""",
    )


def _groupable() -> bool:
    """Group commit may store this caller's episode: it is on, and the caller is outside a transaction of its own."""
    return settings.INGEST_GROUP_COMMIT and not connection.in_atomic_block


def _writer() -> group_commit.Writer:
    return group_commit.writer(_statements().insert)


def _cursor():
    """A psycopg cursor of Django's connection that binds parameters on the server.

    Django's cursors bind client-side, which would hex-escape the ~70 KB payload into the SQL text (twice the
    bytes, parsed by the server); a server-binding cursor sends the bytes as they are.
    """
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def relabel_segments(episode: Episode, failure_step: int | None) -> int:
    """An annotator's relabel: the steps the policy controlled from `failure_step` on become annotator intervention
    segments (the expert's corrections), replacing any earlier relabel; None clears them. Returns the steps
    relabelled. The payload is untouched: the learner derives the relabelled arrays from the label."""
    InterventionSegment.objects.filter(episode=episode, source=InterventionSegment.Source.ANNOTATOR).delete()
    if failure_step is None:
        return 0
    arrays = episode_data.relabelled(load_arrays(episode), failure_step)
    rows = [InterventionSegment(episode=episode, start_step=start, end_step=end,
                                source=InterventionSegment.Source.ANNOTATOR)
            for start, end, code in episode_data.segments(arrays["intervention_source"]) if code == ANNOTATOR]
    InterventionSegment.objects.bulk_create(rows)
    return sum(row.end_step - row.start_step for row in rows)


def load_arrays(episode: Episode) -> dict:
    """The episode's arrays, read back without unpickling anything."""
    payload = EpisodePayload.objects.get(episode=episode)
    if payload.data is None:  # archived (fleet.archive): from storage, checked against its sha256
        from fleet.archive import read_archived

        return episode_data.decode(read_archived(payload))
    return episode_data.decode(bytes(payload.data))

"""Ingestion: an episode's row, payload and intervention segments in one transaction, keyed by its UUID.

Everything is validated before anything is written; a retried delivery of the same UUID returns the row that
exists and writes nothing. On commit: a live event for dashboards and a nudge for the learner.
"""
from __future__ import annotations

import hashlib
import uuid as uuid_lib
from datetime import datetime

from django.db import IntegrityError, connection, transaction

from fleet import bus
from fleet.events import broadcast_on_commit
from fleet.models import Episode, EpisodePayload, InterventionSegment, Robot, Task
from fleet.sim import episode_data
from fleet.sim.gate import SOURCE_NAMES


class EpisodeRejected(ValueError):
    """The episode was refused with a reason; nothing was written."""


def ingest_episode(*, uuid: str | uuid_lib.UUID, task: str, seed: int, outcome: str, arrays: dict,
                   started_at: datetime, finished_at: datetime, robot_id: int | None = None,
                   policy_version_id: int | None = None, source: str = Episode.Source.ONLINE,
                   meta: dict | None = None) -> tuple[Episode, bool]:
    """Validate and store one episode. Returns (episode, created); created is False for a repeated UUID."""
    try:
        key = uuid_lib.UUID(str(uuid))
    except ValueError:
        raise EpisodeRejected(f"episode uuid {uuid!r} is not a UUID") from None
    existing = Episode.objects.filter(uuid=key).first()
    if existing is not None:
        return existing, False

    task_row = Task.objects.filter(env_name=task).first()
    if task_row is None:
        raise EpisodeRejected(f"unknown task {task!r}")
    if robot_id is not None and not Robot.objects.filter(pk=robot_id).exists():
        raise EpisodeRejected(f"unknown robot {robot_id!r}")
    if policy_version_id is not None:
        from learner.models import PolicyVersion

        if not PolicyVersion.objects.filter(pk=policy_version_id).exists():
            raise EpisodeRejected(f"unknown policy version {policy_version_id!r}")
    if source not in Episode.Source.values:
        raise EpisodeRejected(f"unknown episode source {source!r}")
    if outcome not in Episode.Outcome.values:
        raise EpisodeRejected(f"unknown outcome {outcome!r}")
    if finished_at < started_at:
        raise EpisodeRejected("an episode cannot finish before it starts")
    if not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise EpisodeRejected(f"seed must be a 64-bit integer, got {seed!r}")
    try:
        steps = episode_data.validate(arrays, task_row.max_steps)
        payload = episode_data.encode(arrays)
    except episode_data.EpisodeDataError as exc:
        raise EpisodeRejected(str(exc)) from None
    succeeded = bool(arrays["success"].any())
    if (outcome == Episode.Outcome.SUCCESS) != succeeded:
        raise EpisodeRejected(f"outcome {outcome!r} contradicts the recorded success flags")
    intervention_steps = int(arrays["intervention"].sum())

    try:
        with transaction.atomic():
            episode = Episode.objects.create(
                uuid=key, robot_id=robot_id, task=task_row, policy_version_id=policy_version_id, source=source,
                seed=seed, outcome=outcome, steps=steps, total_return=float(arrays["reward"].sum(dtype="float64")),
                intervention_steps=intervention_steps, meta=meta or {}, started_at=started_at,
                finished_at=finished_at,
            )
            _insert_payload(episode.pk, payload)
            segments = InterventionSegment.objects.bulk_create([
                InterventionSegment(episode=episode, start_step=start, end_step=end, source=SOURCE_NAMES[code])
                for start, end, code in episode_data.segments(arrays["intervention_source"])
            ])
            event = {"episode": episode.pk, "task": task, "robot": robot_id, "version": policy_version_id,
                     "source": source, "outcome": outcome, "steps": steps,
                     "intervention_steps": intervention_steps, "interventions": len(segments),
                     "finished_at": finished_at.isoformat()}
            broadcast_on_commit("episode.finished", event)
            transaction.on_commit(lambda: bus.publish(bus.EPISODES_CHANNEL, event))
    except IntegrityError:
        # The same UUID committed concurrently (a redelivered task racing its first run): keep that one.
        existing = Episode.objects.filter(uuid=key).first()
        if existing is None:
            raise
        return existing, False
    return episode, True


def _insert_payload(episode_id: int, payload: bytes) -> None:
    """Insert the payload as a binary parameter, in the caller's transaction.

    Django's psycopg cursors bind parameters client-side, which would hex-escape ~100 KB into the SQL text
    (twice the bytes, parsed by the server); a server-binding cursor sends the bytes as they are.
    """
    import psycopg

    table = EpisodePayload._meta.db_table
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(f"INSERT INTO {table} (episode_id, data, nbytes, sha256) VALUES (%s, %b, %s, %s)",
                       [episode_id, payload, len(payload), hashlib.sha256(payload).hexdigest()])


def load_arrays(episode: Episode) -> dict:
    """The episode's arrays, read back without unpickling anything."""
    return episode_data.decode(bytes(EpisodePayload.objects.get(episode=episode).data))

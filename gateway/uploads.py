"""Episodes uploaded by remote robots: what the server trusts, and the limits that keep an upload from costing
more than an episode is worth. Validation is in-process ingestion's own (fleet.ingest.ingest_episode)."""
from __future__ import annotations

import uuid as uuid_lib
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http.request import RawPostDataException
from django.utils import timezone

from fleet import control
from fleet.ingest import EpisodeRejected, ingest_episode
from fleet.models import Episode, Robot
from fleet.sim import episode_data
from fleet.sim.gate import ANNOTATOR
from gateway import assignment
from gateway.assignment import assigned_versions
from gateway.errors import ApiError
from learner.models import PolicyVersion


def read_body(request) -> bytes:
    """The request body, refused with 413 when it is over API_MAX_EPISODE_BYTES. Over HTTP, gateway.bodylimit has
    refused such a body before it was read; this check holds for what reaches the view by other roads."""
    cap = settings.API_MAX_EPISODE_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    if declared > cap:
        raise ApiError(413, "too_large", f"the episode is {declared} bytes; the limit is {cap}")
    try:
        body = request.body
    except (RequestDataTooBig, RawPostDataException):
        raise ApiError(413, "too_large", f"the episode exceeds the limit of {cap} bytes") from None
    if len(body) > cap:
        raise ApiError(413, "too_large", f"the episode is {len(body)} bytes; the limit is {cap}")
    if not body:
        raise ApiError(422, "invalid", "the request body must be the episode's .npz")
    return body


def accept(robot: Robot, key: str, params: dict, meta: dict, body: bytes) -> tuple[Episode, bool]:
    """Store the robot's episode if the server trusts every claim in it. Returns (episode, created)."""
    try:
        key = uuid_lib.UUID(key)
    except ValueError:
        raise ApiError(422, "invalid", f"{key!r} is not a UUID") from None
    _check_times(params)
    try:
        item = _trusted_item(robot, params) if params["source"] == Episode.Source.EVALUATION else None
        version = item.version if item is not None else _trusted_version(robot, params)
        _check_task(robot, params, item)
    except ApiError:
        # A retry of an episode stored before (its first answer was lost) gets the first answer, even when what
        # was trusted then (the item, the assignment) has moved on since.
        stored = Episode.objects.filter(uuid=key, robot=robot).first()
        if stored is not None:
            return stored, False
        raise
    arrays = _arrays(body)
    try:
        episode, created = ingest_episode(
            uuid=key, task=params["task"], seed=params["seed"], outcome=params["outcome"], arrays=arrays,
            started_at=params["started_at"], finished_at=params["finished_at"], robot_id=robot.pk,
            policy_version_id=version.pk, source=Episode.Source.EVALUATION if item else Episode.Source.ONLINE,
            meta={**meta, "via": "api", **({"evaluation_item": item.pk} if item else {})}, payload=body)
    except EpisodeRejected as exc:
        raise ApiError(422, "rejected", str(exc)) from None
    if episode.robot_id != robot.pk:  # a UUID stored before, by another robot
        raise ApiError(403, "forbidden", f"episode {key} belongs to another robot")
    if created and item is not None:
        from governance import evaluation as governance_evaluation

        governance_evaluation.record(item, episode)  # or released, when the policy did not run alone to the end
    if created:
        control.remote_episode_stored(robot)  # a takeover lasts for the episode it reached; the tile's progress ends
    return episode, created


def _check_times(params: dict) -> None:
    now = timezone.now()
    for name in ("started_at", "finished_at"):
        if not now - timedelta(days=365) <= params[name] <= now + timedelta(hours=1):
            raise ApiError(422, "invalid", f"{name} {params[name].isoformat()} is not within the last year")


def _check_task(robot: Robot, params: dict, item) -> None:
    """An online episode runs one of the robot's enabled tasks (an evaluation item names its own)."""
    if item is not None:
        return
    names = getattr(robot, "enabled_task_names", None)  # read with the token (credentials.authenticate)
    if names is None:
        names = frozenset(robot.tasks.filter(enabled=True).values_list("env_name", flat=True))
    if params["task"] not in names:
        raise ApiError(422, "untrusted", f"task {params['task']!r} is not one of robot {robot.name}'s tasks")


def _trusted_item(robot: Robot, params: dict):
    """An evaluation episode is trusted only as the item the server handed this robot, run as it said."""
    item = assignment.evaluation_item(robot, params["item"]) if params.get("item") is not None else None
    if item is None:
        raise ApiError(422, "untrusted", "an evaluation episode must name an unfinished evaluation item this robot "
                                         "claimed (POST /api/v1/robots/{id}/episodes/next hands them out)")
    wanted = (item.task.env_name, item.seed, item.version.number)
    if (params["task"], params["seed"], params["version"]) != wanted:
        raise ApiError(422, "untrusted", f"evaluation item {item.pk} is task {wanted[0]}, seed {wanted[1]}, "
                                         f"v{wanted[2]}")
    return item


def _trusted_version(robot: Robot, params: dict) -> PolicyVersion:
    if params["source"] != Episode.Source.ONLINE:
        raise ApiError(422, "untrusted", f"source {params['source']!r} is not the robot's to claim: a robot "
                                         "uploads online episodes, and evaluation episodes of items it was handed "
                                         "(offline demonstrations are recorded by the server)")
    version = _version(params["version"])
    if version is not None and version.pk == robot.policy_version_id:
        return version  # the version it runs now: most uploads
    # Else assigned at some moment during the episode (its claimed start, at most API_MAX_EPISODE_SECONDS ago) or
    # shortly before it: a robot hears of a new assignment a moment after it is made, and may start one more
    # episode on the version it holds.
    since = max(params["started_at"] - timedelta(seconds=ASSIGNMENT_GRACE_SECONDS),
                timezone.now() - timedelta(seconds=settings.API_MAX_EPISODE_SECONDS))
    if version is None or version.pk not in assigned_versions(robot, since=since):
        now = robot.policy_version.number if robot.policy_version_id else None
        raise ApiError(422, "untrusted", f"version {params['version']} is not assigned to robot {robot.name} "
                                         f"(it runs {f'v{now}' if now else 'no version'})")
    return version


ASSIGNMENT_GRACE_SECONDS = 60
_versions: dict[tuple[str, int], PolicyVersion] = {}  # (database, number) -> version (its id only)


def _version(number: int) -> PolicyVersion | None:
    key = (connection.settings_dict["NAME"], number)  # a number names one version forever, in one database
    version = _versions.get(key)
    if version is None:
        version = PolicyVersion.objects.filter(number=number).only("pk", "number").first()
        if version is None:
            return None
        if len(_versions) > 10_000:
            _versions.clear()
        _versions[key] = version
    return version


def _arrays(body: bytes) -> dict:
    try:
        arrays = episode_data.decode_untrusted(body, settings.API_MAX_INFLATED_BYTES)
    except episode_data.EpisodeDataError as exc:
        raise ApiError(422, "invalid_payload", str(exc)) from None
    steps = next((len(a) for a in arrays.values() if getattr(a, "ndim", 0) >= 1), 0)
    if steps > settings.API_MAX_EPISODE_STEPS:
        raise ApiError(422, "invalid_payload", f"{steps} steps; an episode may have at most "
                                               f"{settings.API_MAX_EPISODE_STEPS}")
    source = arrays.get("intervention_source")
    if source is not None and getattr(source, "size", 0) and (source == ANNOTATOR).any():
        raise ApiError(422, "untrusted", "annotator interventions are written by annotators, not robots")
    return arrays

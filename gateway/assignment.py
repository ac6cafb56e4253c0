"""What a remote robot must run, what the operators ask of it, and its checkpoints.

A remote robot reads the same state the in-process actors read: its assigned version and tasks from the database,
the operators' commands from the Redis keys `fleet.control` sets (abort, takeover). So every command an operator
gives works on both kinds of robot, and a robot that reconnects finds the state as it is, not a queue of messages.
"""
from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse
from django.urls import reverse

from core import bus
from core.http import ranged_response
from core.models import AuditEvent
from fleet import control
from fleet.models import Robot
from gateway.errors import ApiError
from governance.models import EvaluationItem
from learner import checkpoint_store
from learner.models import PolicyVersion

log = logging.getLogger(__name__)
STATUSES = {"idle": Robot.Status.IDLE, "running": Robot.Status.RUNNING, "expert": Robot.Status.EXPERT}
CONTROLS = {"policy", "expert", "operator"}


def commands(robot: Robot) -> list[str]:
    """What the operators ask of the robot now, in the order it should act on them."""
    wanted = []
    if not robot.enabled:
        wanted.append("stop")  # finish the running episode, then run no more
    if robot.status == Robot.Status.PAUSED:
        wanted.append("pause")
    takeover, abort = bus.degrade(bus.client().mget, bus.takeover_key(robot.pk), bus.abort_key(robot.pk),
                                  default=(None, None))
    if abort:
        wanted.append("abort")  # drop the running episode now
    if takeover:
        wanted.append("take_over")  # the expert controls the rest of the running episode
    return wanted


def summary(robot: Robot) -> dict:
    return {"id": robot.pk, "name": robot.name, "status": robot.status, "enabled": robot.enabled}


def of(robot: Robot) -> dict:
    """The whole assignment, read afresh (a socket holds its robot from connect time on) in one query."""
    robot = Robot.objects.select_related("policy_version").get(pk=robot.pk)
    version = robot.policy_version
    try:
        described = None if version is None else _describe(robot, version)
    except ApiError as exc:  # its checkpoint is gone: the robot idles, but still hears its commands
        log.error("robot %s is assigned v%d, which cannot be served: %s", robot.name, version.number, exc.detail,
                  extra={"robot": robot.name, "version": version.number})
        described = None
    return {
        "robot": summary(robot),
        "version": described,
        "tasks": [{"name": t.env_name, "max_steps": t.max_steps}
                  for t in robot.tasks.filter(enabled=True).order_by("env_name")],
        "commands": commands(robot),
        "gate": settings.FLEET_GATE,
    }


def _describe(robot: Robot, version: PolicyVersion) -> dict:
    if version.checkpoint_removed_at is not None:
        raise ApiError(404, "not_found", f"retention removed the checkpoint of v{version.number}")
    config_size, size = bundle_sizes(version)
    # On object storage the robot downloads straight from the bucket (presigned, byte ranges kept); else from us.
    url = (checkpoint_store.bundle_url(version.checkpoint_path)
           or reverse("api-v1:checkpoint", kwargs={"robot_id": robot.pk, "number": version.number}))
    return {"number": version.number, "sha256": version.checkpoint_sha256, "size": size, "config_size": config_size,
            "url": url}


def next_episode(robot: Robot) -> dict:
    """What the robot's next episode runs, asked at its start (the swap point): an evaluation item when the
    governance has one pending on the robot's tasks (claimed now; the policy alone, on the item's seed, with the
    item's version; an item the robot claimed before and never ran comes first), else an online episode on its
    assigned version."""
    from governance import evaluation as governance_evaluation

    tasks = list(robot.tasks.filter(enabled=True).order_by("env_name"))
    item = governance_evaluation.claim(robot, tasks) if tasks and robot.policy_version_id else None
    if item is None:
        return {"kind": "online", "item": None, "task": None, "seed": None, "version": None,
                "gate": settings.FLEET_GATE}
    return {"kind": "evaluation", "item": item.pk, "task": item.task.env_name, "seed": item.seed,
            "version": _describe(robot, item.version), "gate": {**settings.FLEET_GATE, "enabled": False}}


def release_item(robot: Robot, item_id: int) -> None:
    """The robot gives back evaluation item `item_id`, which it claimed and will not run (its download failed, its
    episode ended before a step): another robot may take it at once instead of after the claim's timeout."""
    from governance import evaluation as governance_evaluation

    item = evaluation_item(robot, item_id)
    if item is None:
        raise ApiError(404, "not_found", f"robot {robot.pk} holds no unfinished evaluation item {item_id}")
    governance_evaluation.release(item)


def evaluation_item(robot: Robot, item_id: int):
    """The robot's unfinished evaluation item `item_id`, or None."""
    return (EvaluationItem.objects.select_related("task", "version")
            .filter(pk=item_id, robot=robot, episode=None).first())


def heartbeat(robot: Robot, beat: dict) -> None:
    """The robot is alive and doing `status`; a running episode's progress goes where the dashboards read it."""
    status = STATUSES.get(beat["status"])
    if status is None:
        raise ApiError(422, "invalid", f"status must be one of {', '.join(STATUSES)}, not {beat['status']!r}")
    if beat.get("control") is not None and beat["control"] not in CONTROLS:
        raise ApiError(422, "invalid", f"control must be one of {', '.join(sorted(CONTROLS))}")
    if beat.get("control") == "operator":  # an operator's takeover, as the robot sees it: held until its upload
        status = Robot.Status.OPERATOR
    control.heartbeat(robot, status)
    if status == Robot.Status.IDLE or beat.get("step") is None:
        control.end_progress(robot.pk)
        return
    control.report_progress({"robot": robot.pk, "task": beat.get("task") or "", "version": beat.get("version"),
                             "source": "online", "step": beat["step"], "control": beat.get("control") or "policy",
                             "remote": True})


def assigned_versions(robot: Robot, since=None) -> set[int]:
    """Ids of the versions the robot was assigned at some moment from `since` until now (the one it runs now, the
    one it ran at `since`, and any in between: a continuously deploying fleet may move a robot several times
    during one episode); without `since`, the current one and the one before it."""
    ids = {robot.policy_version_id} - {None}
    events = AuditEvent.objects.filter(verb="robot.assign_version", object_type=Robot._meta.label_lower,
                                       object_id=str(robot.pk)).order_by("-created_at", "-id")
    if since is None:
        events = events[:1]
    else:
        events = events.filter(created_at__gte=since)
    for event in events.only("details"):
        ids |= {event.details.get("from"), event.details.get("to")} - {None}
    return ids


def bundle_sizes(version: PolicyVersion) -> tuple[int, int]:
    """(config bytes, bundle bytes) of the version's checkpoint, cached: checkpoints never change."""
    key = f"gateway:bundle:{version.checkpoint_sha256}"
    sizes = cache.get(key)
    if sizes is None:
        try:
            sizes = checkpoint_store.sizes(version.checkpoint_path)
        except FileNotFoundError:
            raise ApiError(404, "not_found", f"the checkpoint of v{version.number} is gone from storage") from None
        cache.set(key, sizes, None)
    return sizes


_verified: set[str] = set()  # checkpoint hashes this process has checked against their files


def checkpoint_response(request, robot: Robot, number: int) -> HttpResponse:
    """The checkpoint bundle of a version the robot is assigned: config.json then the weights, whose SHA-256 is the
    version's checkpoint_sha256. ETag is that hash; Range requests resume a broken download."""
    version = PolicyVersion.objects.filter(number=number).first()
    if version is None:
        raise ApiError(404, "not_found", f"there is no version {number}")
    if version.pk not in assigned_versions(robot) and not EvaluationItem.objects.filter(
            robot=robot, version=version, episode=None).exists():
        raise ApiError(403, "forbidden", f"v{number} is not assigned to robot {robot.name}")
    if version.checkpoint_removed_at is not None:
        raise ApiError(404, "not_found", f"retention removed the checkpoint of v{number}")
    if request.headers.get("If-None-Match") == f'"{version.checkpoint_sha256}"':
        return ranged_response(request, b"", "application/octet-stream", etag=version.checkpoint_sha256)  # 304
    try:
        data = checkpoint_store.read_bundle(version.checkpoint_path)
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the checkpoint of v{number} is gone from storage") from None
    if version.checkpoint_sha256 not in _verified:  # checkpoints never change: hashed once per process
        if hashlib.sha256(data).hexdigest() != version.checkpoint_sha256:
            raise ApiError(409, "corrupt", f"the stored checkpoint of v{number} does not match its sha256")
        _verified.add(version.checkpoint_sha256)
    response = ranged_response(request, data, "application/octet-stream", etag=version.checkpoint_sha256)
    response["X-Checkpoint-Config-Size"] = str(bundle_sizes(version)[0])
    return response

"""The robot API, /api/v1/ (django-ninja: typed parameters and the OpenAPI 3 schema from one definition).

Every endpoint takes a robot's bearer token and acts for that robot only. Errors are JSON of one shape,
`{"error": code, "detail": text}`, with the status that says what happened (401, 403, 404, 413, 422, 429).
"""
from __future__ import annotations

import json

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer
from pydantic import AwareDatetime, Field

from core import metrics
from gateway import assignment, credentials, limits, uploads
from gateway.errors import ApiError


class RobotBearer(HttpBearer):
    """`Authorization: Bearer sopr_…`: the robot's own token. Sessions are never consulted, so a person signed in
    to the web pages cannot call these endpoints, and a token opens no web page."""

    def authenticate(self, request: HttpRequest, token: str):
        found = credentials.authenticate(token)
        if found is None:
            return None
        limits.count_request(found.robot_id)  # 429 once the robot exceeds its rate
        request.robot = found.robot
        return found


api = NinjaAPI(title="sopweb robot API", version="1", urls_namespace="api-v1", auth=RobotBearer(),
               description="Remote robots enrol, receive their policy, stream episodes and obey operators. "
                           "See the README's 'Connect a robot'.")


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _upload_refused(request, code: str) -> None:
    """An episode upload refused here counts as an ingestion rejection, by its error code (one refused by
    ingestion's own validation, code "rejected", was counted there)."""
    if request.method == "PUT" and "/episodes/" in request.path and code != "rejected":
        metrics.rejected(code)


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    _upload_refused(request, exc.code)
    return error(exc.status, exc.code, exc.detail, exc.headers)


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    return error(401, "unauthorized", "a valid robot token is required: Authorization: Bearer <token>",
                 {"WWW-Authenticate": "Bearer"})


@api.exception_handler(NinjaValidationError)
def _invalid(request, exc: NinjaValidationError):
    parts = []
    for item in exc.errors:
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "payload"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
    _upload_refused(request, "invalid")
    return error(422, "invalid", "; ".join(parts) or "invalid request")


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error(404, "not_found", str(exc) or "no such resource")


class RobotOut(Schema):
    id: int
    name: str
    status: str
    enabled: bool


class VersionOut(Schema):
    number: int
    sha256: str = Field(description="SHA-256 of the checkpoint bundle (config.json, then the weights)")
    size: int = Field(description="Bytes of the bundle")
    config_size: int = Field(description="Bytes of config.json at the bundle's start; the weights follow")
    url: str = Field(description="Where to download the bundle: this API's checkpoint endpoint (send the token), or "
                                 "on object storage a presigned URL of another origin (send no token; it expires "
                                 "after STORAGE_URL_SECONDS, so take it from a fresh assignment)")


class TaskOut(Schema):
    name: str
    max_steps: int


class AssignmentOut(Schema):
    robot: RobotOut
    version: VersionOut | None
    tasks: list[TaskOut]
    commands: list[str] = Field(description="stop, pause, abort, take_over: what the operators ask now")
    gate: dict = Field(description="The HG-DAgger gate's parameters (the same as the in-process actors')")


class HeartbeatIn(Schema):
    status: str = Field(description="idle, running or expert (the expert or an operator controls the robot)")
    task: str | None = None
    version: int | None = Field(None, description="The version number the running episode uses")
    step: int | None = Field(None, ge=0, le=10**7)
    control: str | None = Field(None, description="policy, expert or operator")


class EpisodeParams(Schema):
    task: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int
    outcome: str
    version: int = Field(description="The policy version number the episode ran")
    started_at: AwareDatetime = Field(description="With its time zone, e.g. 2026-12-02T10:00:00+00:00")
    finished_at: AwareDatetime
    source: str = Field("online", description="online, or evaluation with `item`")
    item: int | None = Field(None, description="The evaluation item this episode ran (source=evaluation)")
    meta: str | None = Field(None, description="A JSON object of the robot's own notes (size-capped)")


class NextOut(Schema):
    kind: str = Field(description="online: run the assigned version on a task of its own choosing; evaluation: "
                                  "run exactly this item (task, seed, version, the gate off)")
    item: int | None
    task: str | None
    seed: int | None
    version: VersionOut | None
    gate: dict


class ReleasedOut(Schema):
    item: int
    released: bool


class EpisodeOut(Schema):
    episode: int
    created: bool


def _own(request, robot_id: int):
    """The token's robot, which must be the robot in the path."""
    robot = request.robot
    if robot.pk != robot_id:
        raise ApiError(403, "forbidden", f"this token belongs to robot {robot.pk}, not robot {robot_id}")
    return robot


@api.get("/whoami", response=RobotOut, summary="The robot this token belongs to")
def whoami(request):
    return assignment.summary(request.robot)


@api.get("/robots/{robot_id}/assignment", response=AssignmentOut, summary="What the robot must run now")
def get_assignment(request, robot_id: int):
    return assignment.of(_own(request, robot_id))


@api.post("/robots/{robot_id}/heartbeat", response=AssignmentOut,
          summary="Report status and progress; answers with the assignment")
def heartbeat(request, robot_id: int, beat: HeartbeatIn):
    robot = _own(request, robot_id)
    assignment.heartbeat(robot, beat.dict())
    return assignment.of(robot)


@api.post("/robots/{robot_id}/episodes/next", response=NextOut,
          summary="At an episode's start: an evaluation item to run, or an online episode")
def next_episode(request, robot_id: int):
    return assignment.next_episode(_own(request, robot_id))


@api.post("/robots/{robot_id}/evaluation-items/{item_id}/release", response=ReleasedOut,
          summary="Give back an evaluation item the robot claimed and will not run")
def release_item(request, robot_id: int, item_id: int):
    assignment.release_item(_own(request, robot_id), item_id)
    return {"item": item_id, "released": True}


@api.get("/robots/{robot_id}/checkpoints/{number}", summary="Download a checkpoint bundle (ETag, Range)",
         # Integer codes, as ninja's own: "200" beside ninja's 200 would be written as a duplicate key, which
         # the docs page's parser refuses.
         openapi_extra={"responses": {
             200: {"description": "The bundle", "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}},
             206: {"description": "The requested byte range"}, 304: {"description": "Unchanged (ETag)"},
             416: {"description": "The range lies outside the bundle"}}})
def checkpoint(request, robot_id: int, number: int):
    return assignment.checkpoint_response(request, _own(request, robot_id), number)


@api.put("/episodes/{episode_uuid}", response={200: EpisodeOut, 201: EpisodeOut},
         summary="Upload a finished episode (the .npz the actors record); idempotent by UUID",
         openapi_extra={"requestBody": {"required": True, "content": {
             "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
def put_episode(request, episode_uuid: str, params: Query[EpisodeParams]):
    # The robot API's handler runs each request on a thread of its pool (gateway.handler), so uploads from several
    # robots to one web process are ingested side by side and committed together (fleet.group_commit).
    body = uploads.read_body(request)
    meta = _meta(params.meta)
    episode, created = uploads.accept(request.robot, episode_uuid, params.dict(), meta, body)
    return (201 if created else 200), {"episode": episode.pk, "created": created}


def _meta(raw: str | None) -> dict:
    if raw is None:
        return {}
    if len(raw.encode()) > settings.API_MAX_META_BYTES:
        raise ApiError(413, "too_large", f"meta is {len(raw.encode())} bytes; the limit is "
                                         f"{settings.API_MAX_META_BYTES}")
    if "\\u0000" in raw or "\x00" in raw:
        raise ApiError(422, "invalid", "meta must not contain NUL characters")
    try:
        value = json.loads(raw)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\\ud800) cannot be stored
    except (ValueError, RecursionError, UnicodeEncodeError):
        raise ApiError(422, "invalid", "meta must be a JSON object of text PostgreSQL can store") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid", "meta must be a JSON object")
    return value


def urls():
    """api.urls, open to requests without a session: LoginRequiredMiddleware guards the people's pages; these
    endpoints authenticate robots themselves (RobotBearer), and the schema and docs are public."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        pattern.callback.login_required = False
    return patterns, app_name, namespace


@login_not_required
def schema(request) -> HttpResponse:
    """The OpenAPI 3 schema of /api/v1/, at /api/schema/ (also at /api/v1/openapi.json)."""
    return JsonResponse(api.get_openapi_schema(path_prefix="/api/v1"))

"""Who may do what: every URL the site serves and every socket it accepts, tried by every persona.

The routes are walked, not listed. Every pattern in the URLconf (through its includes: the apps, the admin, the robot
API) must have an entry in EXPECTED, every model registered in the admin one in ADMIN_MODELS, and every websocket
route one in SOCKETS; a view added without one fails `test_every_route_has_a_declared_expectation`, which says what
to add. Each URL is then requested by each persona with the methods its entry names, and must answer as declared:

- a person's page (PAGE): visitors without a session (anonymous, or a robot with its token) are sent to log in; a
  signed-in person whose role lacks the permission gets 403; a POST-only view answers GET with 405;
- the robot API (API): anything but a valid robot token gets 401 (a person's session is never consulted), and a
  robot's token on another robot's path gets 403;
- the admin (ADMIN): visitors without a session are sent to log in, signed-in people who are not staff to the
  admin's login, and staff get what their model permissions allow (ADMIN_MODELS);
- PUBLIC: everyone gets the same answer.

Each URL (the admin: each model) starts from the same world (`shared_world`). Within it, refusals are tried before the requests that are let
through, so an allowed POST cannot change what a later case sees, and a refused POST or PUT must change nothing
(`footprint`). An action that uses up its object takes a fresh one for each request (`Fresh`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import import_module
from pathlib import Path
from typing import Callable

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.db import transaction
from django.shortcuts import resolve_url
from django.test import Client
from django.test.client import ClientHandler
from django.test.utils import override_settings
from django.urls import URLResolver, get_resolver, reverse
from django.utils import timezone

from core.models import AuditEvent
from fleet import control
from fleet.models import Episode, Robot
from fleet.sim import episode_data
from gateway import credentials
from gateway.models import RobotToken
from governance import mode as rollout_mode
from governance.decisions import deploy_to_fleet
from governance.models import Alert
from learner.models import PolicyVersion
from review.models import DatasetExport, EpisodeFlag, EpisodeLabel, ReplayVideo, ReviewClaim
from sopweb.asgi import API_MIDDLEWARE, application
from tests.conftest import make_user, publish_random_policy, session_cookie
from tests.factories import TASK_NAMES, make_tasks
from tests.reviewing import ingest, synthetic

# --- personas --------------------------------------------------------------------------------------------------

ANONYMOUS, OUTSIDER, OPERATOR, SUPERVISOR, ANNOTATOR = "anonymous", "outsider", "operator", "supervisor", "annotator"
ROBOT, OTHER_ROBOT = "robot", "other robot"  # a robot's token, on a client with no session
STAFF, SUPERUSER = "staff supervisor", "superuser"  # tried on the admin only
PERSONAS = (ANONYMOUS, OUTSIDER, OPERATOR, SUPERVISOR, ANNOTATOR, ROBOT, OTHER_ROBOT)
ADMIN_PERSONAS = (*PERSONAS, STAFF, SUPERUSER)
NO_SESSION = {ANONYMOUS, ROBOT, OTHER_ROBOT}
SIGNED_IN = {OUTSIDER, OPERATOR, SUPERVISOR, ANNOTATOR}  # `outsider`: a valid login with no role

# Who holds what (fleet/roles.py), in the words the table below uses.
OPERATORS, SUPERVISORS, ANNOTATORS = {OPERATOR}, {SUPERVISOR}, {ANNOTATOR}
FLEET_WATCHERS = {OPERATOR, SUPERVISOR}  # fleet.view_robot, learner and rollout pages, flagging
EPISODE_READERS = {OPERATOR, SUPERVISOR, ANNOTATOR}  # fleet.view_episode
LABEL_READERS = {SUPERVISOR, ANNOTATOR}  # review.view_episodelabel

LOGIN = "302 to /login/"  # what a visitor without a session gets on a person's page
ADMIN_LOGIN = "302 to /admin/login/"  # what a signed-in person who is not staff gets on the admin
OPEN = "open"  # a socket that was accepted and stayed open


# --- the rules ---------------------------------------------------------------------------------------------------

PAGE, API, ADMIN, PUBLIC = "page", "api", "admin", "public"


@dataclass(frozen=True)
class Of:
    """A path argument taken from the world: an attribute (`field`) of one of its objects."""

    name: str
    field: str = "pk"


@dataclass(frozen=True)
class Fresh:
    """A path argument made anew for each request: for an action that changes its object for good."""

    make: Callable


@dataclass(frozen=True)
class Rule:
    """Who may use one URL and what they get.

    A status is what the personas in `may` get for that method (None: the method is not tried), or a dict of
    persona -> status for those whose answer differs; everyone else gets the refusal of the rule's `kind`."""

    kind: str
    may: frozenset = frozenset()
    get: int | str | dict | None = None
    post: int | str | dict | None = None
    put: int | str | dict | None = None
    args: dict = field(default_factory=dict)
    data: dict | Callable | None = None  # the body sent with a POST or PUT: form fields, or world -> client kwargs


def page(may, get=200, **kwargs) -> Rule:
    """A person's page that GET shows to the holders of one permission."""
    return Rule(PAGE, frozenset(may), get=get, **kwargs)


def form(may, post, data, get=200, **kwargs) -> Rule:
    """A person's page with a form: GET shows it, POST acts."""
    return Rule(PAGE, frozenset(may), get=get, post=post, data=data, **kwargs)


def action(may, data=None, post=302, **kwargs) -> Rule:
    """A POST-only view (a button): it acts, then redirects."""
    return Rule(PAGE, frozenset(may), post=post, data=data if data is not None else {}, **kwargs)


def robot_api(*, any_robot=False, **kwargs) -> Rule:
    """A robot API endpoint. Unless `any_robot`, its path names the robot, and only that robot's token passes."""
    return Rule(API, frozenset({ROBOT, OTHER_ROBOT} if any_robot else {ROBOT}), **kwargs)


def public(get=200) -> Rule:
    return Rule(PUBLIC, get=get)


def failed_replay(world) -> int:
    """An episode whose replay failed to render: a retry queues it again, once."""
    episode = ingest(world.tasks[0], synthetic(seed=2), robot=world.robot, version=world.version)
    ReplayVideo.objects.create(episode=episode, status=ReplayVideo.Status.FAILED, error="renderer crashed")
    return episode.pk


def held_item(world) -> int:
    """An evaluation item the world's robot claimed and has not run (each request gives one back)."""
    from django.utils import timezone

    from governance.models import EvaluationItem

    seed = EvaluationItem.objects.count() + 1000
    return EvaluationItem.objects.create(version=world.version, task=world.tasks[0], seed=seed, robot=world.robot,
                                         claimed_at=timezone.now()).pk


def new_webhook():
    from ops.models import WebhookEndpoint

    return WebhookEndpoint.objects.create(name="ops", url="https://hooks.example.com/T0/B0", kinds=["success_drop"])


def heartbeat(world) -> dict:
    return {"data": {"status": "idle"}, "content_type": "application/json"}


def upload(world) -> dict:
    """The world's episode again, as its robot would upload it: a retry is answered 200 with the stored episode."""
    now = timezone.now()
    query = {"task": world.episode.task.env_name, "seed": 7, "outcome": "timeout", "version": world.version.number,
             "started_at": (now - timedelta(seconds=5)).isoformat(), "finished_at": now.isoformat()}
    return {"data": episode_data.encode(synthetic()), "content_type": "application/octet-stream",
            "query_params": query}


# URL name -> who may use it. A new view needs an entry here (test_every_route_has_a_declared_expectation).
EXPECTED: dict[str, Rule] = {
    # accounts
    "login": public(),
    "logout": action(SIGNED_IN),
    "password_change": form(SIGNED_IN, post=200, data={}),  # an empty form comes back with its errors
    "password_change_done": page(SIGNED_IN),
    "users": page(SUPERVISORS),
    "user-deactivate": action(SUPERVISORS, {"reason": "left the team"}, args={"pk": Of("victim")}),
    "user-reactivate": action(SUPERVISORS, {"reason": "back"}, args={"pk": Of("victim")}),
    # the robot API: its schema and docs are public, every endpoint takes a robot's token
    "api-schema": public(),
    "api-v1:openapi-json": public(),
    "api-v1:openapi-view": public(),
    "api-v1:api-root": public(get=404),  # django-ninja's placeholder: it only names the API's root
    "api-v1:whoami": robot_api(any_robot=True, get=200),
    "api-v1:get_assignment": robot_api(get=200, args={"robot_id": Of("robot")}),
    "api-v1:heartbeat": robot_api(post=200, data=heartbeat, args={"robot_id": Of("robot")}),
    "api-v1:next_episode": robot_api(post=200, data={}, args={"robot_id": Of("robot")}),
    "api-v1:release_item": robot_api(post=200, data={}, args={"robot_id": Of("robot"), "item_id": Fresh(held_item)}),
    "api-v1:checkpoint": robot_api(get=200, args={"robot_id": Of("robot"), "number": Of("version", "number")}),
    # the other robot's token is good, but the episode is the robot's: 403
    "api-v1:put_episode": robot_api(put=200, data=upload, args={"episode_uuid": Of("episode", "uuid")}),
    # remote robots' pages (gateway)
    "robot-enrol": form(OPERATORS, post=200, data={"name": "arm-9", "tasks": TASK_NAMES}),  # 200: the token, once
    "robot-detail": page(FLEET_WATCHERS, args={"pk": Of("robot")}),
    "robot-credentials": page(FLEET_WATCHERS, args={"pk": Of("robot")}),  # a remote robot's tokens (no secret)
    "robot-token-rotate": action(OPERATORS, {"reason": "laptop lost"}, post=200, args={"pk": Of("robot")}),
    "robot-token-revoke": action(OPERATORS, {"reason": "decommissioned"},
                                 args={"pk": Of("robot"), "key": Of("token", "key")}),
    # learner
    "learner": page(FLEET_WATCHERS),
    "versions": page(FLEET_WATCHERS),
    # experiments (their reports are files the `experiment` command writes: none in the matrix's world)
    "experiments": page(FLEET_WATCHERS),
    "experiment-report": page(FLEET_WATCHERS, get=404, args={"name": "fleet"}),
    # operations: Prometheus and health checks need no login (/metrics answers the test client's 127.0.0.1, one of
    # METRICS_ALLOWED_NETWORKS); outgoing webhooks are the supervisors'
    "metrics": public(),
    "healthz": public(),
    "readyz": public(),
    "webhooks": form(SUPERVISORS, post=200, data={"name": "ops", "url": "https://hooks.example.com/T0/B0",
                                                 "kinds": ["success_drop"]}),  # 200: the secret, once
    "webhook-edit": form(SUPERVISORS, post=302, data={"name": "ops", "url": "https://hooks.example.com/T0/B1",
                                                      "kinds": ["robot_silent"]}, args={"pk": Of("webhook")}),
    "webhook-delete": action(SUPERVISORS, args={"pk": Fresh(lambda world: new_webhook().pk)}),
    "webhook-test": action(SUPERVISORS, args={"pk": Of("webhook")}),
    "webhook-deliveries": page(SUPERVISORS, args={"pk": Of("webhook")}),
    # rollouts
    "rollouts": page(FLEET_WATCHERS),
    "rollout-version": page(FLEET_WATCHERS, args={"number": Of("version", "number")}),
    "rollout-decide": action(SUPERVISORS, {"reason": "worse than v1"},
                             args={"number": Of("candidate", "number"), "decision": "reject"}),
    # the rollout mode and the freeze, at run time (governance.mode): supervisors
    "rollout-mode": action(SUPERVISORS, {"mode": "manual", "reason": "hands on"}),
    "rollout-freeze": action(SUPERVISORS, {"reason": "incident"}),
    "rollout-unfreeze": action(SUPERVISORS, {"reason": "resolved"}),
    "alert-acknowledge": action(SUPERVISORS, {"reason": "seen"}, args={"pk": Of("alert")}),
    # review
    "review-queue": page(ANNOTATORS),
    "review-next": action(ANNOTATORS),
    "review-episode": page(ANNOTATORS, args={"pk": Of("episode")}),
    "review-label": action(ANNOTATORS, {"failure_mode": "missed_grasp", "disposition": "keep", "notes": ""},
                           args={"pk": Of("episode")}),
    "review-skip": action(ANNOTATORS, args={"pk": Of("episode")}),
    "review-claim": action(ANNOTATORS, post=200, args={"pk": Of("episode")}),
    "review-dismiss": action(ANNOTATORS, {"reason": "nothing wrong"}, args={"pk": Of("episode")}),
    "review-replay-status": page(EPISODE_READERS, args={"pk": Of("episode")}),
    "review-replay-retry": action(ANNOTATORS, post=200, args={"pk": Fresh(failed_replay)}),  # a write: reviewers
    "review-replay-file": page(EPISODE_READERS, args={"pk": Of("episode")}),
    "episode-recording": page(EPISODE_READERS, args={"pk": Of("episode")}),
    "review-flags": page(FLEET_WATCHERS),
    # 400 is the export's own answer (no relabelled episode to export): the permission let the request through
    "review-export": form(LABEL_READERS, post=400, data={"disposition": ["relabel"]}),
    # an export job's page, state and file: its owner (the annotator) and supervisors; another reader of labels
    # would get 404 (it does not even learn the export exists), those without the permission 403
    "review-export-job": page(LABEL_READERS, args={"pk": Of("export")}),
    "review-export-status": page(LABEL_READERS, args={"pk": Of("export")}),
    "review-export-download": page(LABEL_READERS, args={"pk": Of("export")}),
    "episode-flag": action(FLEET_WATCHERS, {"reason": "gripper slipped"}, args={"pk": Of("episode")}),
    # fleet
    "home": page(EPISODE_READERS, get=302),  # each role to its landing page; a login without a role gets 403
    "fleet": page(FLEET_WATCHERS),
    "fleet-snapshot": page(FLEET_WATCHERS),
    "breakdown": page(EPISODE_READERS),
    "fleet-command": action(OPERATORS, args={"command": "start"}),
    "robot-add": action(OPERATORS, {"name": "arm-8", "tasks": TASK_NAMES}),
    "robot-tasks": action(OPERATORS, {"tasks": TASK_NAMES[:1]}, args={"pk": Of("robot")}),
    "robot-command": action(OPERATORS, {"reason": "inspection"}, args={"pk": Of("robot"), "command": "start"}),
    "episodes": page(EPISODE_READERS),
    "episode": page(EPISODE_READERS, args={"pk": Of("episode")}),
    "audit": page(SUPERVISORS),
}


# --- the admin: one family ---------------------------------------------------------------------------------------

VIEW, ADD, CHANGE, DELETE = "view", "add", "change", "delete"
EVERYTHING = frozenset({VIEW, ADD, CHANGE, DELETE})
NOTHING = frozenset()


@dataclass(frozen=True)
class Admin:
    """What a staff supervisor and a superuser may do with a registered model in the admin."""

    supervisor: frozenset
    superuser: frozenset


# Registered model -> who may do what with it in the admin. Audited state (core.admin.ViewOnlyAdmin) is shown and
# never edited, even by a superuser; users are deactivated, never deleted; login records are never added by hand.
ADMIN_MODELS = {
    "auth.group": Admin(NOTHING, EVERYTHING),
    "auth.user": Admin(NOTHING, frozenset({VIEW, ADD, CHANGE})),
    "axes.accessattempt": Admin(NOTHING, frozenset({VIEW, CHANGE, DELETE})),
    "axes.accesslog": Admin(NOTHING, frozenset({VIEW, CHANGE, DELETE})),
    "axes.accessfailurelog": Admin(NOTHING, frozenset({VIEW, CHANGE, DELETE})),
    "core.auditevent": Admin(frozenset({VIEW}), frozenset({VIEW})),
    "fleet.task": Admin(frozenset({VIEW}), EVERYTHING),
    "fleet.robot": Admin(frozenset({VIEW}), frozenset({VIEW})),
    "fleet.episode": Admin(frozenset({VIEW}), EVERYTHING),
    "learner.policyversion": Admin(frozenset({VIEW}), frozenset({VIEW})),
    "governance.rollout": Admin(frozenset({VIEW}), frozenset({VIEW})),
    "governance.rolloutcontrol": Admin(NOTHING, frozenset({VIEW})),  # changed on the Rollouts page
    "review.failuremode": Admin(EVERYTHING, EVERYTHING),  # supervisors edit the taxonomy
    "review.reviewclaim": Admin(NOTHING, frozenset({VIEW})),
    "review.replayvideo": Admin(NOTHING, EVERYTHING),
    "review.episodelabel": Admin(frozenset({VIEW}), frozenset({VIEW})),
    "review.episodeflag": Admin(NOTHING, frozenset({VIEW})),
    "review.datasetexport": Admin(NOTHING, frozenset({VIEW})),
}
# A model's admin view -> the permissions of which one opens it.
ADMIN_MODEL_VIEWS = {"changelist": {VIEW, CHANGE}, "change": {VIEW, CHANGE}, "history": {VIEW, CHANGE},
                     "add": {ADD}, "delete": {DELETE}}
ADMIN_EXTRA_VIEWS = {"admin:auth_user_password_change": ("auth.user", {CHANGE})}  # ModelAdmins' own URLs
MODEL_VIEW = re.compile(r"admin:(?P<model>\w+?)_(?P<view>changelist|add|change|history|delete)")
OBJECT_REDIRECT = re.compile(r"admin/(?P<app>\w+)/(?P<model>\w+)/<path:object_id>/")  # to the change page
CATCH_ALL = "admin/(?P<url>.*)$"


def staff(supervisor, superuser=None, others: dict | None = None) -> Rule:
    """An admin view: staff get these statuses, everyone else the admin's refusal (or `others`, by persona)."""
    return Rule(ADMIN, get={STAFF: supervisor, SUPERUSER: supervisor if superuser is None else superuser,
                            **(others or {})})


# The admin site's own views: URL name (or route, where it has none) -> (path, rule). They send a visitor without a
# session to the admin's login (their `login_url`); the models' pages leave that to LoginRequiredMiddleware (LOGIN).
def site(supervisor, superuser=None, others: dict | None = None) -> Rule:
    return staff(supervisor, superuser, {**dict.fromkeys(NO_SESSION, ADMIN_LOGIN), **(others or {})})


ADMIN_SITE = {
    "admin:index": ("/admin/", site(200)),
    # the form for anyone not staff (a signed-in person is told they lack access); staff go on to the index
    "admin:login": ("/admin/login/", site(302, others=dict.fromkeys(PERSONAS, 200))),
    # logging out is a POST; a signed-in person who is not staff is sent to the index, and from there to log in
    "admin:logout": ("/admin/logout/", site(405, others=dict.fromkeys(SIGNED_IN, 302))),
    "admin:password_change": ("/admin/password_change/", site(200)),
    "admin:password_change_done": ("/admin/password_change/done/", site(200)),
    "admin:autocomplete": ("/admin/autocomplete/", site(403)),  # names no model field to complete
    "admin:jsi18n": ("/admin/jsi18n/", site(200)),
    "admin:view_on_site": (None, site(404)),  # no model has a public URL (get_absolute_url)
    "admin:app_list": (None, None),  # one per app (app_index)
    CATCH_ALL: ("/admin/no-such-page/", site(404)),
}


def admin_target(route: Route) -> tuple[str, str] | None:
    """What an admin URL pattern shows: (model label, view) for a model's page, ("", name) for one of the site's
    own; None for a pattern this test does not know (a ModelAdmin's own URL: declare it in ADMIN_EXTRA_VIEWS)."""
    if route.key in ADMIN_SITE:
        return "", route.key
    if route.key in ADMIN_EXTRA_VIEWS:
        return ADMIN_EXTRA_VIEWS[route.key][0], route.key
    models = {f"{m._meta.app_label}_{m._meta.model_name}": m._meta.label_lower for m in admin.site._registry}
    match = MODEL_VIEW.fullmatch(route.key)
    if match and match["model"] in models:
        return models[match["model"]], match["view"]
    match = OBJECT_REDIRECT.fullmatch(route.route)
    if match and f"{match['app']}_{match['model']}" in models:
        return models[f"{match['app']}_{match['model']}"], "object"
    return None


def admin_cases(route: Route, world: World) -> list[tuple[str, Rule]]:
    label, view = admin_target(route)
    if view == "admin:app_list":
        return [(reverse(view, args=[app]), app_index(app)) for app in sorted({m.split(".")[0] for m in ADMIN_MODELS})]
    if view == "admin:view_on_site":
        task = world.tasks[0]
        return [(reverse(view, args=[ContentType.objects.get_for_model(task).pk, task.pk]), ADMIN_SITE[view][1])]
    if view in ADMIN_SITE:
        return [ADMIN_SITE[view]]
    # A model's page: every path argument is the object's id.
    path = "/" + re.sub(r"<[^>]+>", str(world.admin_object(label).pk), route.route)
    if view == "object":
        return [(path, staff(302))]  # on to its change page, whatever the permissions
    needs = ADMIN_EXTRA_VIEWS[view][1] if view in ADMIN_EXTRA_VIEWS else ADMIN_MODEL_VIEWS[view]
    rule = ADMIN_MODELS[label]
    return [(path, staff(*(200 if getattr(rule, who) & needs else 403 for who in ("supervisor", "superuser"))))]


def app_index(app: str) -> Rule:
    """An app's admin index: shown to staff who may see one of its models, 404 to the others."""
    models = [rule for label, rule in ADMIN_MODELS.items() if label.startswith(f"{app}.")]
    return site(*(200 if any(getattr(rule, who) for rule in models) else 404 for who in ("supervisor", "superuser")))


# --- the routes ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    key: str  # the pattern's namespaced name, or its route where it has none
    route: str  # the whole route, its includes' prefixes joined
    namespace: str

    def __str__(self) -> str:
        return self.key


def walk(patterns, prefix: str = "", namespace: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = ":".join(part for part in (namespace, pattern.namespace) if part)
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        else:
            route = prefix + str(pattern.pattern)
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
            yield Route(name or route, route, namespace)


ROUTES = list(walk(get_resolver().url_patterns))


def group(route: Route) -> str:
    """The test that tries a route: its own, or for the admin, one per model (and one for the site's own views)."""
    if route.namespace != "admin":
        return route.key
    target = admin_target(route)
    return f"admin {target[0] or 'site'}" if target else f"admin {route.key}"


GROUPS: dict[str, list[Route]] = {}
for _route in ROUTES:
    GROUPS.setdefault(group(_route), []).append(_route)


def cases_for(route: Route, world: World) -> list[tuple[Callable[[], str], Rule]] | None:
    """The requests that try one URL pattern: a function that makes the path (fresh objects, for some), and the rule."""
    if route.namespace == "admin":
        if admin_target(route) is None:
            return None
        return [(lambda path=path: path, rule) for path, rule in admin_cases(route, world)]
    rule = EXPECTED.get(route.key)
    if rule is None:
        return None

    def path() -> str:
        return reverse(route.key, kwargs={name: argument(value, world) for name, value in rule.args.items()})

    return [(path, rule)]


def argument(value, world: World):
    if isinstance(value, Of):
        return getattr(getattr(world, value.name), value.field)
    if isinstance(value, Fresh):
        return value.make(world)
    return value


def test_every_route_has_a_declared_expectation():
    keys = [route.key for route in ROUTES]
    assert len(keys) == len(set(keys)), f"two URL patterns share a name: {sorted(k for k in keys if keys.count(k) > 1)}"
    undeclared = [route.key for route in ROUTES if route.namespace != "admin" and route.key not in EXPECTED]
    assert not undeclared, (
        f"URL patterns without a declared expectation: {undeclared}. Add each to EXPECTED in "
        f"tests/test_permission_matrix.py: who may use it (page, form, action, robot_api, public), the status they "
        f"get, and its path arguments; a pattern needs a name to have an entry.")
    stale = sorted(set(EXPECTED) - set(keys))
    assert not stale, f"EXPECTED names URL patterns that no longer exist: {stale}; remove them"
    registered = {model._meta.label_lower for model in admin.site._registry}
    assert registered == set(ADMIN_MODELS), (
        f"models registered in the admin but not in ADMIN_MODELS: {sorted(registered - set(ADMIN_MODELS))}; "
        f"in ADMIN_MODELS but not registered: {sorted(set(ADMIN_MODELS) - registered)}. Declare what a staff "
        f"supervisor and a superuser may do with each in tests/test_permission_matrix.py")
    unknown = [route.key for route in ROUTES if route.namespace == "admin" and admin_target(route) is None]
    assert not unknown, (
        f"admin URL patterns this test does not know: {unknown}. Declare a ModelAdmin's own URL in "
        f"ADMIN_EXTRA_VIEWS (its model and the permission it needs), a site view in ADMIN_SITE")


def test_the_api_rules_try_every_method_the_api_serves():
    """A second method on an existing API path shares its URL pattern: the schema says which methods it serves."""
    from gateway.api import api

    paths = api.get_openapi_schema(path_prefix="/api/v1/")["paths"]
    for route in ROUTES:
        rule = EXPECTED.get(route.key)
        if rule is None or rule.kind != API:
            continue
        served = {method.upper() for method in paths[re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", "/" + route.route)]}
        assert served == set(methods(rule)), f"{route.key} serves {sorted(served)}; EXPECTED tries {methods(rule)}"


# --- the world -----------------------------------------------------------------------------------------------------

@dataclass
class World:
    people: dict[str, User]
    tokens: dict[str, str]
    tasks: list
    robot: Robot
    token: RobotToken
    version: PolicyVersion  # deployed to the fleet
    candidate: PolicyVersion  # a checkpoint awaiting decisions
    episode: Episode  # the robot's, timed out, flagged, claimed by the annotator, with a rendered replay
    alert: Alert
    victim: User  # whom a supervisor deactivates
    export: DatasetExport  # the annotator's, built: its owner and supervisors see it, nobody else
    webhook: object  # an outgoing webhook endpoint (ops)

    def admin_object(self, label: str):
        model = next(m for m in admin.site._registry if m._meta.label_lower == label)
        row = model._default_manager.order_by("pk").first()
        assert row is not None, f"the world has no {label} row for the admin's object pages: make one in world()"
        return row


@pytest.fixture(scope="class")
def shared_world(django_db_setup, django_db_blocker):
    """One world for the whole matrix, built once inside a transaction that is rolled back afterwards. Each test runs
    in a savepoint within it (pytest-django's `db`), so each starts from this world as it was built: what Django's
    setUpTestData does. Building it for each test took a third of the matrix's time."""
    with django_db_blocker.unblock(), transaction.atomic(), override_settings(PASSWORD_HASHERS=FAST_HASHER):
        yield build_world()
        transaction.set_rollback(True)


@pytest.fixture
def world(shared_world, db) -> World:
    return shared_world


FAST_HASHER = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # as tests.conftest's (function-scoped) fixture


def build_world() -> World:
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    tasks = make_tasks()
    people = {OUTSIDER: make_user("oscar"), OPERATOR: make_user("olivia", "operators"),
              SUPERVISOR: make_user("sam", "supervisors"), ANNOTATOR: make_user("anna", "annotators"),
              STAFF: make_user("stella", "supervisors"), SUPERUSER: User.objects.create_superuser("root")}
    people[STAFF].is_staff = True
    people[STAFF].save(update_fields=["is_staff"])
    version = publish_random_policy(1, TASK_NAMES)
    deploy_to_fleet(version, reason="base")
    candidate = PolicyVersion.objects.create(number=2, algorithm="bc", checkpoint_path="policies/matrix-v2",
                                             checkpoint_sha256="0" * 64)  # its checkpoint is never read here
    robot = control.add("remote-a", tasks, people[OPERATOR], kind=Robot.Kind.REMOTE)
    token_row, token = credentials.issue(robot, people[OPERATOR])
    other = control.add("remote-b", tasks, people[OPERATOR], kind=Robot.Kind.REMOTE)
    _, other_token = credentials.issue(other, people[OPERATOR])

    episode = ingest(tasks[0], synthetic(), robot=robot, version=version)
    EpisodeFlag.raise_flag(episode, people[OPERATOR], "it stalled")
    ReviewClaim.claim(episode, people[ANNOTATOR])  # the annotator is labelling it
    video = ReplayVideo.objects.create(episode=episode, status=ReplayVideo.Status.READY, path=f"replays/matrix-"
                                       f"{episode.pk}.mp4", finished_at=timezone.now(), fps=20, frames=40, progress=1)
    video.file.parent.mkdir(parents=True, exist_ok=True)
    video.file.write_bytes(b"\0" * 256)
    labelled = ingest(tasks[0], synthetic(seed=1), robot=robot, version=version)
    EpisodeLabel.objects.create(episode=labelled, annotator=people[ANNOTATOR], failure_mode="missed_grasp")

    login_record = {"username": "mallory", "ip_address": "192.0.2.1", "user_agent": "curl", "http_accept": "*/*",
                    "path_info": "/login/"}
    AccessAttempt.objects.create(**login_record, get_data="", post_data="", failures_since_start=3)
    AccessLog.objects.create(**login_record)
    AccessFailureLog.objects.create(**login_record, locked_out=False)
    rollout_mode.set_mode("rules", people[SUPERVISOR], reason="the matrix's world")  # the control row exists
    export = DatasetExport.objects.create(
        requested_by=people[ANNOTATOR], dispositions=["relabel"], status=DatasetExport.Status.READY, progress=1.0,
        episodes=1, path="exports/matrix.zip", size=22, finished_at=timezone.now())
    zipped = Path(settings.STORAGE_DIR) / export.path
    zipped.parent.mkdir(parents=True, exist_ok=True)
    zipped.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    return World(
        people=people, tokens={ROBOT: token, OTHER_ROBOT: other_token}, tasks=tasks, robot=robot, token=token_row,
        version=version, candidate=candidate, episode=episode, alert=Alert.raise_alert("canary regressed"),
        victim=make_user("victor", "operators"), export=export, webhook=new_webhook())


# --- clients -------------------------------------------------------------------------------------------------------

class RobotApiClientHandler(ClientHandler):
    """Serves requests through the middleware of sopweb.asgi's robot API handler, as production serves /api/v1/."""

    def load_middleware(self, is_async=False):
        with override_settings(MIDDLEWARE=API_MIDDLEWARE):
            super().load_middleware(is_async=is_async)


def session_of(user: User) -> str:
    """The key of a new logged-in session of `user`: what Client.force_login stores, without the login's signals
    (last_login, axes' access log), which cost a quarter of this file's time."""
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session.session_key


class Visitor:
    """One persona's clients: /api/v1/ goes through the robot API's handler (sopweb.asgi.http_app), the rest through
    the people's; both carry the persona's session cookie or robot token."""

    def __init__(self, user: User | None, token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.pages = Client(headers=headers)
        self.api = Client(headers=headers)
        self.api.handler = RobotApiClientHandler(enforce_csrf_checks=False)
        if user is not None:
            self.pages.cookies[settings.SESSION_COOKIE_NAME] = session_of(user)
            self.api.cookies = self.pages.cookies

    def send(self, method: str, path: str, body: dict):
        client = self.api if path.startswith("/api/v1/") else self.pages
        return client.get(path) if method == "GET" else getattr(client, method.lower())(path, **body)


# --- the matrix ----------------------------------------------------------------------------------------------------

def methods(rule: Rule) -> list[str]:
    tried = [method for method in ("GET", "POST", "PUT") if getattr(rule, method.lower()) is not None]
    if rule.kind == PAGE and "GET" not in tried:
        tried.insert(0, "GET")  # a POST-only view must refuse GET (405) and change nothing
    return tried


def expected(rule: Rule, persona: str, method: str) -> int | str:
    status = getattr(rule, method.lower())
    if isinstance(status, dict):
        if persona in status:
            return status[persona]
    elif status is not None and (rule.kind == PUBLIC or persona in rule.may):
        return status
    if rule.kind == API:
        return 403 if persona == OTHER_ROBOT else 401  # the other robot's token is good; the path is not its own
    if persona in NO_SESSION:
        return LOGIN
    if status is None:
        return 405
    return ADMIN_LOGIN if rule.kind == ADMIN else 403


def outcome(response) -> int | str:
    if response.status_code == 302:
        location = response["Location"]
        if location.startswith(f"{resolve_url(settings.LOGIN_URL)}?next="):
            return LOGIN
        if location.startswith(f"{reverse('admin:login')}?next="):
            return ADMIN_LOGIN
    return response.status_code


def lets_through(status) -> bool:
    return isinstance(status, int) and status < 400


def footprint() -> tuple:
    """What a refused request must leave as it was: every decision writes an audit row; the rest is telemetry,
    claims, tokens, sessions and uploads."""
    return (
        AuditEvent.objects.count(), Episode.objects.count(), EpisodeFlag.objects.count(),
        EpisodeLabel.objects.count(), Session.objects.count(), Alert.objects.filter(status="active").count(),
        list(ReviewClaim.objects.order_by("pk").values_list("episode_id", "annotator_id", "expires_at")),
        list(RobotToken.objects.order_by("pk").values_list("key", "revoked_at")),
        list(Robot.objects.order_by("pk").values_list("name", "status", "enabled", "retired", "last_heartbeat")),
        list(User.objects.order_by("pk").values_list("username", "is_active", "password")),
        list(PolicyVersion.objects.order_by("pk").values_list("number", "state")),
        list(ReplayVideo.objects.order_by("pk").values_list("episode_id", "status")),
    )


class TestEveryRoute:
    """A class for its world: built once for all of them (shared_world), torn down before the socket tests, whose
    transactions must not wait on it."""

    @pytest.mark.parametrize("name", GROUPS)
    def test_each_persona_gets_what_the_matrix_declares(self, name, world):
        admin_group = GROUPS[name][0].namespace == "admin"
        personas = ADMIN_PERSONAS if admin_group else PERSONAS
        visitors = {persona: Visitor(world.people.get(persona), world.tokens.get(persona)) for persona in personas}
        wrong = []
        for route in GROUPS[name]:
            cases = cases_for(route, world)
            if cases is None:
                pytest.fail(f"{route.key} has no declared expectation: see "
                            f"test_every_route_has_a_declared_expectation")
            for path, rule in cases:
                wrong += try_everyone(path, rule, personas, visitors, world)
        assert not wrong, "\n".join(wrong)


def try_everyone(path: Callable[[], str], rule: Rule, personas, visitors, world) -> list[str]:
    tries = [(method, persona) for method in methods(rule) for persona in personas]
    # Refusals first: what an allowed POST changes, no later request sees.
    tries.sort(key=lambda t: (t[0] != "GET" and lets_through(expected(rule, t[1], t[0])), t[0] != "GET"))
    wrong = []
    for method, persona in tries:
        want = expected(rule, persona, method)
        target = path()
        body = rule.data(world) if callable(rule.data) else {"data": rule.data or {}}
        before = footprint() if method != "GET" and not lets_through(want) else None
        got = outcome(visitors[persona].send(method, target, body))
        if got != want:
            wrong.append(f"{persona} {method} {target}: expected {want}, got {got}")
        elif before is not None and footprint() != before:
            wrong.append(f"{persona} {method} {target}: refused ({got}) but changed something")
    return wrong


# --- sockets -------------------------------------------------------------------------------------------------------

def socket_routes(app, prefix: str = ""):
    """The websocket routes reachable in an ASGI application, through routers and the middleware around them."""
    if isinstance(app, URLRouter):
        for route in app.routes:
            yield from socket_routes(route.callback, prefix + str(route.pattern))
    elif hasattr(app, "inner") or hasattr(app, "application"):
        yield from socket_routes(getattr(app, "inner", None) or app.application, prefix)
    else:
        yield prefix


# Route -> what each persona's socket gets: OPEN, or the close code that refuses it. The robot's socket accepts first
# and waits AUTH_SECONDS for a token message, so a visitor without a token is closed with 4401 then.
SOCKETS = {
    "ws/fleet/": {ANONYMOUS: 4401, OUTSIDER: 4403, OPERATOR: OPEN, SUPERVISOR: OPEN, ANNOTATOR: 4403, ROBOT: 4401,
                  OTHER_ROBOT: 4401},
    "ws/robot/": {ANONYMOUS: 4401, OUTSIDER: 4401, OPERATOR: 4401, SUPERVISOR: 4401, ANNOTATOR: 4401, ROBOT: OPEN,
                  OTHER_ROBOT: OPEN},
}


def test_every_socket_route_has_a_declared_expectation():
    routes = set(socket_routes(application.application_mapping["websocket"]))
    assert routes == set(SOCKETS), (
        f"websocket routes without an entry in SOCKETS: {sorted(routes - set(SOCKETS))}; entries for no route: "
        f"{sorted(set(SOCKETS) - routes)}. Declare who may open each in tests/test_permission_matrix.py")
    assert all(set(expectations) == set(PERSONAS) for expectations in SOCKETS.values())


async def knock(path: str, headers: list) -> int | str:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    try:
        connected, code = await communicator.connect(timeout=10)
        if not connected:
            return code
        if await communicator.receive_nothing(timeout=1):
            return OPEN
        message = await communicator.receive_output()
        return message.get("code", 1000) if message["type"] == "websocket.close" else OPEN
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize("route", sorted(SOCKETS))
@pytest.mark.django_db(transaction=True)
async def test_each_persona_gets_the_socket_the_matrix_declares(route, tasks, monkeypatch):
    from asgiref.sync import sync_to_async

    from gateway import consumers

    monkeypatch.setattr(consumers, "AUTH_SECONDS", 0.05)

    def make_visitors() -> dict[str, list]:
        people = {OUTSIDER: make_user("oscar"), OPERATOR: make_user("olivia", "operators"),
                  SUPERVISOR: make_user("sam", "supervisors"), ANNOTATOR: make_user("anna", "annotators")}
        # Every socket comes from our own origin: what is tried here is who it is (tests/test_websocket.py tries
        # foreign origins); a robot that sends one is judged by its token, and on people's sockets has no session.
        origin = [(b"origin", b"http://localhost")]
        headers = {ANONYMOUS: origin}
        for persona, user in people.items():
            headers[persona] = [*origin, (b"cookie", session_cookie(user).encode())]
        for persona, name in ((ROBOT, "remote-a"), (OTHER_ROBOT, "remote-b")):
            _, token = credentials.issue(control.add(name, tasks, kind=Robot.Kind.REMOTE), None)
            headers[persona] = [*origin, (b"authorization", f"Bearer {token}".encode())]
        return headers

    headers = await sync_to_async(make_visitors)()
    wrong = []
    for persona in PERSONAS:
        got = await knock(f"/{route}", headers[persona])
        if got != SOCKETS[route][persona]:
            wrong.append(f"{persona} on /{route}: expected {SOCKETS[route][persona]}, got {got}")
    assert not wrong, "\n".join(wrong)

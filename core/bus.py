"""Redis keys and channels shared by web, actors and learner: the one place their names are defined."""
from __future__ import annotations

import contextlib
import json
import threading
import time

import redis
from django.conf import settings

from core.outages import Outage

# Pub/sub channels belong to the whole Redis server, not to a database: their names carry the database number, so
# a deployment on another database of the same server (tests beside a demo) neither hears nor disturbs them.
_DB = int(redis.connection.parse_url(settings.REDIS_URL).get("db") or 0)
VERSIONS_CHANNEL = f"sopweb:{_DB}:versions"  # a robot's assigned version changed: {"robot", "version", "path", "sha256"}
EPISODES_CHANNEL = f"sopweb:{_DB}:episodes"  # training data changed: {"episode", "task", ...} (learner nudge)
ROBOTS_CHANNEL = f"sopweb:{_DB}:robots"  # to remote robots' sockets: {"robot", "event", ...} (gateway)
LIVE_CHANNEL = f"sopweb:{_DB}:live"  # dashboards' deltas: {"event", "data"} (core.events -> fleet.consumers.LiveHub)
# A person's session ended (logout, deactivation, password change): {"session": tag} or {"user": id}; every web
# process closes the matching dashboard sockets (accounts.sessions -> fleet.consumers.LiveHub). A tag is a hash of
# the session key, never the key itself.
SESSIONS_CHANNEL = f"sopweb:{_DB}:sessions"

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def client() -> redis.Redis:
    """This process's Redis client. It is thread-safe (each command borrows a connection from its pool, which a
    forked child replaces with its own), so threads share it: the web process runs every request's work in a
    thread of its own, and a client per thread would connect anew for each request. Pub/sub needs a connection
    of its own: `client().pubsub()`."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = redis.Redis.from_url(settings.REDIS_URL, **CLIENT_OPTIONS)
    return _client


# Every command gives up after REDIS_SOCKET_TIMEOUT seconds: a stalled Redis (SIGSTOP, a network partition) then
# looks like a failed command that the caller degrades around, rather than a thread blocked for ever. Pub/sub
# readers wait with `get_message(timeout=...)`, which the socket timeout does not cut short; the health check pings
# an idle connection before reusing it.
CLIENT_OPTIONS = {"socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
                  "socket_connect_timeout": settings.REDIS_SOCKET_TIMEOUT, "health_check_interval": 15}


redis_outage = Outage("Redis")  # this process's commands to Redis (bus.client())

_health = {"checked": 0.0, "since": None}
HEALTH_PERIOD = 2.0  # seconds between two pings of `unreachable_since`, per process


def unreachable_since() -> float | None:
    """When this process last found Redis unreachable, as epoch seconds of the outage's start, or None if it
    answers. Pings at most every HEALTH_PERIOD seconds, with a short timeout, so a page that asks is never held
    up for long: pages render from PostgreSQL and show a banner instead of live data while this is set."""
    now = time.monotonic()
    # In an outage it is asked again sooner: the banner should leave soon after Redis is back.
    if now - _health["checked"] >= (HEALTH_PERIOD if redis_outage.since is None else HEALTH_PERIOD / 4):
        _health["checked"] = now
        try:
            _ping_client().ping()
        except redis.RedisError as exc:
            redis_outage.failed(exc)
        else:
            redis_outage.ok()
    return redis_outage.since


_pinger: redis.Redis | None = None


def _ping_client() -> redis.Redis:
    global _pinger
    if _pinger is None:
        _pinger = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    return _pinger


def degrade(action, *args, default=None, **kwargs):
    """`action(*args, **kwargs)`, or `default` when Redis cannot be reached: for work that only Redis makes faster
    or livelier (progress, leases, nudges, live events), never for the record itself, which PostgreSQL keeps."""
    if not redis_outage.due():
        return default  # in an outage, and not yet time for the next try: no 5 s wait on every call
    try:
        result = action(*args, **kwargs)
    except redis.RedisError as exc:
        redis_outage.failed(exc)
        return default
    redis_outage.ok()
    return result


def lease_key(robot_id: int) -> str:
    return f"sopweb:robot:{robot_id}:lease"


def takeover_key(robot_id: int) -> str:
    return f"sopweb:robot:{robot_id}:takeover"


def scheduled_key(robot_id: int) -> str:
    return f"sopweb:robot:{robot_id}:scheduled"


def abort_key(robot_id: int) -> str:
    return f"sopweb:robot:{robot_id}:abort"


def episode_counter_key(robot_id: int) -> str:
    """How many online episodes the robot started: its tasks are taken in turn by this count."""
    return f"sopweb:robot:{robot_id}:episodes"


LEARNER_LEASE_KEY = "sopweb:learner:lease"  # held by the one learner slice that trains (learner.loop)
LEARNER_QUEUED_KEY = "sopweb:learner:queued"  # the token of the one learner slice that may start next (learner.loop)


# Running episodes' progress: one hash, field = robot id, value = JSON {robot, task, version, source, started_at,
# step, control, at}. Actors write their field once a second and delete it at the episode's end; readers ignore fields
# older than PROGRESS_STALE_SECONDS (a killed actor's last word). Dashboards poll it rather than have every
# update fanned out to every socket.
PROGRESS_KEY = "sopweb:progress"
PROGRESS_STALE_SECONDS = 10.0


def fresh_progress(raw: dict, now: float) -> dict[int, dict]:
    """Parse the progress hash (field -> JSON, as bytes or str), dropping stale entries."""
    result = {}
    for field, value in raw.items():
        entry = json.loads(value)
        if now - entry.get("at", 0) <= PROGRESS_STALE_SECONDS:
            result[int(field)] = entry
    return result


def ready_key(robot_id: int) -> str:
    return f"sopweb:robot:{robot_id}:ready"


def request_takeover(robot_id: int, ttl: float = 60.0) -> None:
    """An operator asks for the expert on this robot; the running episode picks it up within a few steps."""
    client().set(takeover_key(robot_id), "1", px=int(ttl * 1000))


def tell_robot(robot_id: int, message: dict) -> None:
    """Push `message` to the remote robot's socket, if it has one open (gateway.consumers); pub/sub keeps nothing,
    so a robot without a socket reads the same state from the API when it next polls."""
    client().publish(ROBOTS_CHANNEL, json.dumps({"robot": robot_id, **message}))


def rate_limit_key(scope: str, who: int | str, window: int) -> str:
    """Hits of one client in one rate-limit window (core.ratelimit): scope "robot" (a remote robot's API requests),
    "render" and "export" (a person's replay renders and exports)."""
    return f"sopweb:rate:{scope}:{who}:{window}"


def rejections_key(minute: int) -> str:
    """Episodes refused in one minute (since the epoch), every process together (core.metrics; ops.rules reads it)."""
    return f"sopweb:rejections:{minute}"


def rule_seen_key(rule: str, subject: int | str) -> str:
    """The newest row an alert rule saw for a subject at its previous check (ops.rules: what arrived since)."""
    return f"sopweb:rules:{rule}:{subject}:seen"


class Lease:
    """At most one holder at a time (an episode per robot, one learner): a Redis key with a token and an expiry,
    renewed while running. A killed worker stops renewing, the key expires, and the work can be picked up again.
    """

    def __init__(self, key: str, token: str, ttl: float):
        self.key, self.token, self.ttl_ms = key, token, int(ttl * 1000)
        self.lost = False  # set by `kept` when someone else took it

    @contextlib.contextmanager
    def kept(self, every: float):
        """Renew it from a thread of its own every `every` seconds while the block runs, whatever the holder's
        thread is doing (a long rebuild, a save): the expiry can then be short, so a killed holder's work is picked
        up again soon. With Redis away it is neither renewed nor lost (nobody can take it meanwhile). If someone
        else holds it, `lost` is set and renewing stops; the holder checks it before acting as the holder."""
        stop = threading.Event()

        def renew_until_stopped():
            while not stop.wait(every):
                if degrade(self.renew, default=True) is False:
                    self.lost = True
                    return

        thread = threading.Thread(target=renew_until_stopped, name=f"lease {self.key}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def acquire(self) -> bool:
        return bool(client().set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """Extend it if it is still ours, or take it back if it expired and nobody took it (Redis was away for
        longer than the expiry): False only when someone else holds it now. One round trip."""
        return bool(client().eval(
            "local holder = redis.call('get', KEYS[1]) "
            "if holder == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
            "elseif not holder then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 "
            "else return 0 end", 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        client().eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                      "else return 0 end", 1, self.key, self.token)

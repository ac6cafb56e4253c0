"""sopweb settings: everything comes from the environment and a bad value stops start-up, naming the variable.

See README.md ("Configuration") for every variable.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from learner import defaults as learner_defaults
from sopweb import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = embedded.var_dir()


def _bad(name: str, value: str, why: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}={value!r} is invalid: {why}")


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _bad(name, value, "expected true or false")


def env_number(name: str, default, *, kind=int, min_value=None, max_value=None):
    value = env_str(name)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise _bad(name, value, f"expected {'an integer' if kind is int else 'a number'}") from None
    if number != number or (min_value is not None and number < min_value) or (
        max_value is not None and number > max_value
    ):
        raise _bad(name, value, f"expected a value in [{min_value}, {max_value}]")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if value is None:
        return default
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise _bad(name, value, "expected a comma-separated list with at least one item")
    return items


def _service_url(name: str) -> str:
    """From the environment, else from the embedded services a launcher is running (sopweb/embedded.py)."""
    value = env_str(name) or embedded.read_state().get(name)
    if not value:
        raise ImproperlyConfigured(
            f"{name} is unset and no embedded service is running: set {name}, or start the product with "
            "`make demo` (or run a command under `python -m sopweb.embedded run -- ...`)."
        )
    return value


def _pooled() -> bool:
    return env_bool("DATABASE_POOL", False)


def parse_database_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise _bad("DATABASE_URL", embedded.redacted(url), "expected postgresql://user[:password]@host[:port]/name")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = query.pop("host", None) or parts.hostname or ""
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise _bad("DATABASE_URL", embedded.redacted(url), "the database name is missing")
    try:
        port = parts.port
    except ValueError:
        raise _bad("DATABASE_URL", embedded.redacted(url), "the port is not a number") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        # The web process (sopweb/asgi.py) pools: under ASGI, Django runs each request's database work in a thread
        # of its own, so a persistent connection would be opened (~6 ms) for every request and never reused.
        # Workers keep one persistent connection per process.
        "CONN_MAX_AGE": 0 if _pooled() else env_number("DATABASE_CONN_MAX_AGE", 60, min_value=0),
        "CONN_HEALTH_CHECKS": not _pooled(),
        "OPTIONS": {**query, **({"pool": {"min_size": 1, "timeout": 10,
                                          "max_size": env_number("DATABASE_POOL_SIZE", 8, min_value=1)}}
                                if _pooled() else {})},
        "TEST": {"NAME": f"test_{name}"},
    }


def parse_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise _bad("REDIS_URL", embedded.redacted(url), "expected redis://host:port/db")
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise _bad("REDIS_URL", embedded.redacted(url), "the database number after the last / must be an integer")
    try:
        parts.port
    except ValueError:
        raise _bad("REDIS_URL", embedded.redacted(url), "the port is not a number") from None
    return url


# --- core -------------------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    if value := env_str("SECRET_KEY"):
        return value
    if path := env_str("SECRET_KEY_FILE"):
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise _bad("SECRET_KEY_FILE", path, str(exc)) from None
    # A per-installation random key, made once: safe for one host; several hosts must share SECRET_KEY.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        from django.core.management.utils import get_random_secret_key

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(get_random_secret_key())
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", ["http://127.0.0.1:8000", "http://localhost:8000"])
for _origin in CSRF_TRUSTED_ORIGINS:
    if urlsplit(_origin).scheme not in ("http", "https") or not urlsplit(_origin).netloc:
        raise _bad("CSRF_TRUSTED_ORIGINS", _origin, "each origin must look like https://host[:port]")

# Served over https (behind a TLS-terminating proxy that sets X-Forwarded-Proto): secure cookies and HSTS.
HTTPS = all(origin.startswith("https://") for origin in CSRF_TRUSTED_ORIGINS)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_number("SECURE_HSTS_SECONDS", 31536000, min_value=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",  # login throttling (django-axes): per account and per client address
    # Layered bottom to top (.importlinter): each imports only those above it in this list (actors and gateway
    # are siblings at the top).
    "core",
    "accounts",
    "fleet",
    "review",
    "learner",
    "governance",
    "actors",
    "gateway",
    "experiments",
    "ops",
    "ninja",  # serves the API docs' Swagger UI from its own static files (no CDN)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Before LoginRequiredMiddleware: a session idle too long is logged out, then the page asks for a login.
    "accounts.middleware.IdleTimeoutMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last: turns a login refused by axes into the "locked, try again in N minutes" page.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy (django-csp): pages run only this site's own scripts — no inline script, no eval, no
# other origin — so an injected <script> or event-handler attribute does nothing. The templates keep data in
# <script type="application/json"> (json_script), which is not executed, and carry no inline style; but Plotly
# writes style attributes into the SVG it builds, so style-src allows inline styles (which cannot run script).
# Websockets and fetches go to this origin ('self' covers ws: and wss: of it); replay videos and images too; no
# page may be framed (frame-ancestors, with X-Frame-Options).
_SELF, _NONE = "'self'", "'none'"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [_NONE],
        "script-src": [_SELF],
        "style-src": [_SELF, "'unsafe-inline'"],
        "img-src": [_SELF, "data:"],
        "font-src": [_SELF],
        "connect-src": [_SELF],
        "media-src": [_SELF],
        "form-action": [_SELF],
        "base-uri": [_NONE],
        "frame-ancestors": [_NONE],
        "object-src": [_NONE],
    },
}

ROOT_URLCONF = "sopweb.urls"
ASGI_APPLICATION = "sopweb.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "fleet.views.navigation",
                "governance.views.rollout_context",
            ],
        },
    },
]

DATABASES = {"default": parse_database_url(_service_url("DATABASE_URL"))}
# Ingestion's server-binding cursors keep their statements prepared per connection (planning its INSERT took longer
# than running it); Django's own cursors bind client-side and never prepare, whatever this says.
DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- accounts: demo mode, login throttling, idle sessions (accounts/) ---------------------------------

# Demo mode (`make demo` sets it): seed_demo creates accounts with known, printed passwords, and the web command
# serves only on a loopback address. Without it, the web command refuses to start while a demo account is active
# (accounts.demo.web_start_problem).
DEMO_MODE = env_bool("SOPWEB_DEMO", False)

# django-axes: the first backend refuses a locked-out login before the password is checked. A login is locked
# after LOGIN_FAILURE_LIMIT failures for one username, or LOGIN_FAILURE_LIMIT failures from one client address,
# within LOGIN_LOCKOUT_MINUTES; the lock lasts LOGIN_LOCKOUT_MINUTES from the latest failure (a further attempt
# during the lock starts it again). Attempts live in PostgreSQL, so every web process sees them.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_FAILURE_LIMIT = env_number("LOGIN_FAILURE_LIMIT", 5, min_value=1, max_value=1000)
LOGIN_LOCKOUT_MINUTES = env_number("LOGIN_LOCKOUT_MINUTES", 15.0, kind=float, min_value=0.1, max_value=7 * 24 * 60)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = False  # else a valid login of one's own would clear an address's failures between guesses
# The client address is REMOTE_ADDR, which uvicorn takes from X-Forwarded-For only when the peer is one of
# FORWARDED_ALLOW_IPS (sopweb/web.py): the trusted proxies are configured once, for the whole web process.
AXES_CLIENT_IP_CALLABLE = "accounts.throttle.client_address"
AXES_LOCKOUT_CALLABLE = "accounts.throttle.lockout_response"
AXES_VERBOSE = False  # no banner in every process's log; failures and lockouts are still logged (without passwords)

# A session unused for this many seconds is logged out (sliding expiry: accounts.middleware; a dashboard's socket is
# not a use). The robot API (/api/v1/) has no sessions at all.
SESSION_IDLE_TIMEOUT = env_number("SESSION_IDLE_TIMEOUT", 8 * 3600, min_value=60, max_value=90 * 24 * 3600)
SESSION_COOKIE_AGE = SESSION_IDLE_TIMEOUT
# Dashboard sockets re-check their session and permission this often (a session that ends by logout or
# deactivation closes its sockets at once, over Redis: accounts.sessions).
WS_PERMISSION_RECHECK_SECONDS = env_number("WS_PERMISSION_RECHECK_SECONDS", 60.0, kind=float, min_value=0.5,
                                           max_value=3600.0)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
# One date format on every page (ISO-like, absolute): sopweb/formats/en/formats.py.
FORMAT_MODULE_PATH = ["sopweb.formats"]
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))  # collectstatic's target in production
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve straight from static/ without collectstatic on a dev machine

# plain: one human-readable line per record; json: one JSON object per line for log pipelines (core.logs.JsonFormatter:
# timestamp, level, process, logger, message, and the context a record carries: robot, episode, version, task).
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise _bad("LOG_FORMAT", LOG_FORMAT, "expected plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "core.logs.JsonFormatter"}},
    "filters": {"client_errors_on_one_line": {"()": "core.logs.ClientErrorsOnOneLine"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # A refused request is one line; a server error keeps its traceback (core.logs).
    "loggers": {**{name: {"filters": ["client_errors_on_one_line"]} for name in ("django.request", "django.security")},
                # httpx logs every request's full URL at INFO: a webhook's URL may be a secret (Slack's are).
                **{name: {"level": "WARNING"} for name in ("httpx", "httpcore")}},
}

# --- Redis: live events, Celery broker -----------------------------------------------------------

REDIS_URL = parse_redis_url(_service_url("REDIS_URL"))
# A Redis command (or connection attempt) that has no answer after this many seconds fails, and the caller degrades
# around it (core.bus): a stalled Redis must not hold a robot's episode, a page or a learner for ever.
REDIS_SOCKET_TIMEOUT = env_number("REDIS_SOCKET_TIMEOUT", 5.0, kind=float, min_value=0.1, max_value=300.0)

# No channel layer: dashboards' deltas travel on one Redis pub/sub channel that each web process subscribes to
# once and fans out to its own sockets (core.events, fleet.consumers.LiveHub).

def _broker_tls(url: str) -> tuple[str, dict | None]:
    """TLS to Redis (rediss://): redis-py reads `ssl_*` options from the URL's query (ssl_ca_certs, ssl_certfile,
    ssl_keyfile, ssl_cert_reqs); Celery's Redis transport wants them as broker_use_ssl instead, so they move there,
    and the certificate is verified unless the URL says ssl_cert_reqs=none."""
    import ssl
    from urllib.parse import parse_qsl, urlencode

    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url, None
    query = dict(parse_qsl(parts.query))
    options = {key: query.pop(key) for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if key in query}
    reqs = query.pop("ssl_cert_reqs", "required").lower()
    levels = {"none": ssl.CERT_NONE, "cert_none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "cert_optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED, "cert_required": ssl.CERT_REQUIRED}
    if reqs not in levels:
        raise _bad("REDIS_URL", embedded.redacted(url), "ssl_cert_reqs must be none, optional or required")
    return parts._replace(query=urlencode(query)).geturl(), {**options, "ssl_cert_reqs": levels[reqs]}


# The Celery broker: REDIS_URL unless CELERY_BROKER_URL names another, e.g. RabbitMQ (amqp://user:password@host:5672/
# vhost, amqps:// for TLS, verified). Live events, leases and progress stay on REDIS_URL whatever the broker.
def _broker() -> tuple[str, dict | bool | None]:
    import ssl

    raw = env_str("CELERY_BROKER_URL")
    if raw is None:
        return _broker_tls(REDIS_URL)
    scheme = urlsplit(raw).scheme
    if scheme in ("redis", "rediss"):
        return _broker_tls(raw)
    if scheme in ("amqp", "amqps", "pyamqp"):
        # server_hostname None: kombu checks the certificate against the URL's host name.
        return raw, ({"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None} if scheme == "amqps" else None)
    raise _bad("CELERY_BROKER_URL", embedded.redacted(raw), "expected redis://, rediss://, amqp:// or amqps://")


CELERY_BROKER_URL, _tls = _broker()
if _tls is not None:
    CELERY_BROKER_USE_SSL = _tls
BROKER_IS_AMQP = urlsplit(CELERY_BROKER_URL).scheme in ("amqp", "amqps", "pyamqp")
CELERY_QUEUE_NAMES = ("actors", "learner", "control", "default", "background")


def celery_queues(amqp: bool):
    """RabbitMQ orders a queue by message priority only when every declaration of it names a maximum
    (x-max-priority), workers' included: the queues are declared here, one direct exchange each, as Celery would.
    On Redis, Celery keeps a list per priority step instead and declares its queues itself (None).
    review.models.render_priority picks the numbers each way round."""
    if not amqp:
        return None
    from kombu import Exchange, Queue

    return [Queue(name, Exchange(name), routing_key=name, queue_arguments={"x-max-priority": 10})
            for name in CELERY_QUEUE_NAMES]


CELERY_TASK_QUEUES = celery_queues(BROKER_IS_AMQP)
CELERY_TASK_QUEUE_MAX_PRIORITY = 10 if BROKER_IS_AMQP else None
# A task sent without a priority sits between a person's render (9 on RabbitMQ) and render-ahead's (0), as it does
# on Redis, where no priority means the first step.
CELERY_TASK_DEFAULT_PRIORITY = 5 if BROKER_IS_AMQP else None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None  # progress goes to rows and live events, never to results
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Queues, each served by its own worker process (Procfile): `actors` (robots' episodes), `learner` (training),
# `control` (what keeps the fleet safe: governance checks with their automatic rollbacks, finishing evaluations,
# the offline sweep, the learner's watchdog), `background` (bulk work at low CPU priority: replay renders, dataset
# exports) and `default` (the rest: render-ahead, retention, eviction). A flood of bulk or default work never
# delays a control task: none of it can occupy the control worker.
CONTROL_TASKS = ["governance.check", "governance.finish_evaluations", "fleet.sweep_robots", "learner.ensure_running",
                 "ops.check_rules"]
CELERY_TASK_ROUTES = {"actors.*": {"queue": "actors"}, "learner.train": {"queue": "learner"},
                      "review.render_replay": {"queue": "background"},
                      "review.export_dataset": {"queue": "background"},
                      **{name: {"queue": "control"} for name in CONTROL_TASKS}}
CELERY_TASK_SOFT_TIME_LIMIT = env_number("CELERY_TASK_SOFT_TIME_LIMIT", 300, min_value=1)
CELERY_TASK_TIME_LIMIT = env_number("CELERY_TASK_TIME_LIMIT", 360, min_value=1)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE
# Exactly one beat sends periodic tasks, however many run (celery-redbeat: the schedule and a lock in Redis; see
# sopweb/beat.py). A standby beat takes over within BEAT_LOCK_SECONDS of the holder's death; the holder renews the
# lock every fifth of it.
BEAT_LOCK_SECONDS = env_number("BEAT_LOCK_SECONDS", 30.0, kind=float, min_value=2.0, max_value=3600.0)
CELERY_BEAT_SCHEDULER = "sopweb.beat:Scheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = BEAT_LOCK_SECONDS / 5
CELERY_REDBEAT_REDIS_URL = REDIS_URL
CELERY_REDBEAT_KEY_PREFIX = "sopweb:beat"
CELERY_REDBEAT_LOCK_TIMEOUT = int(max(2, BEAT_LOCK_SECONDS))
# Commands retry (with back-off) while Redis is away, rather than end the beat.
CELERY_REDBEAT_REDIS_OPTIONS = {"retry_period": -1, "socket_timeout": REDIS_SOCKET_TIMEOUT,
                                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT}
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    raise _bad("CELERY_TASK_TIME_LIMIT", str(CELERY_TASK_TIME_LIMIT), "must exceed CELERY_TASK_SOFT_TIME_LIMIT")

# --- the fleet and the learner ---------------------------------------------------------------------

# Where checkpoints, episode videos, exports and archived payloads live (core.storage): this folder by default
# (shared by every host that runs workers, e.g. over NFS), or an S3 bucket when STORAGE_URL=s3://bucket/prefix.
# Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role),
# never from the URL; STORAGE_ENDPOINT_URL points at MinIO or another S3-compatible server.
STORAGE_DIR = Path(env_str("SOPWEB_STORAGE_DIR", str(VAR_DIR / "storage"))).resolve()
STORAGE_URL = env_str("STORAGE_URL", "")
STORAGE_ENDPOINT_URL = env_str("STORAGE_ENDPOINT_URL", "")
STORAGE_REGION = env_str("STORAGE_REGION", "us-east-1")
# Presigned download URLs (replays, exports, robots' checkpoints) stay valid this long.
STORAGE_URL_SECONDS = env_number("STORAGE_URL_SECONDS", 3600, min_value=60, max_value=7 * 24 * 3600)
# Checkpoints fetched from object storage are kept here, by sha256 (the newest STORAGE_CACHE_CHECKPOINTS of them).
STORAGE_CACHE_DIR = Path(env_str("SOPWEB_STORAGE_CACHE_DIR", str(VAR_DIR / "cache"))).resolve()
STORAGE_CACHE_CHECKPOINTS = env_number("STORAGE_CACHE_CHECKPOINTS", 20, min_value=2, max_value=10_000)


def storage_backend(url: str, endpoint: str, region: str, url_seconds: int, folder: Path) -> tuple[dict, str | None]:
    """settings.STORAGES["default"] for STORAGE_URL, and the origin its presigned URLs point at (None: a folder)."""
    if not url:
        return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(folder)}}, None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname or "@" in parts.netloc or parts.query:
        raise _bad("STORAGE_URL", url.split("@")[-1], "use s3://bucket or s3://bucket/prefix (credentials go in "
                   "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never in the URL)")
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        raise _bad("STORAGE_ENDPOINT_URL", endpoint, "must be an http:// or https:// URL")
    backend = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": parts.netloc,
            "location": parts.path.strip("/"),
            "endpoint_url": endpoint or None,
            "region_name": region,
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": url_seconds,
            "signature_version": "s3v4",
            "addressing_style": "path" if endpoint else None,
        },
    }
    origin = (f"{urlsplit(endpoint).scheme}://{urlsplit(endpoint).netloc}" if endpoint
              else f"https://{parts.netloc}.s3.{region}.amazonaws.com")
    return backend, origin


_default_storage, _STORAGE_ORIGIN = storage_backend(STORAGE_URL, STORAGE_ENDPOINT_URL, STORAGE_REGION,
                                                    STORAGE_URL_SECONDS, STORAGE_DIR)
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if _STORAGE_ORIGIN:  # replay videos play straight from the bucket (presigned, with byte ranges)
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["media-src"].append(_STORAGE_ORIGIN)

# Dashboards: a browser gets at most this many websocket messages per second (a token bucket holding one second's
# worth); each message carries every change since the previous one. Progress telemetry waits up to a second.
DASHBOARD_PUSH_RATE = env_number("DASHBOARD_PUSH_RATE", 8.0, kind=float, min_value=0.5, max_value=100.0)
# While Redis answers, a dashboard socket hears something at least this often (0: never): a page that hears nothing
# for three periods shows "reconnecting" (static/js/live.js assumes the default).
DASHBOARD_HEARTBEAT_SECONDS = env_number("DASHBOARD_HEARTBEAT_SECONDS", 2.0, kind=float, min_value=0.0,
                                         max_value=60.0)

# Meta-World v3 tasks seeded for a new fleet.
FLEET_TASKS = env_list(
    "FLEET_TASKS", ["shelf-place-v3", "box-close-v3", "pick-place-v3", "peg-insert-side-v3"]
)
for _task in FLEET_TASKS:
    if not _task.endswith("-v3"):
        raise _bad("FLEET_TASKS", _task, "Meta-World v3 task names end in -v3, e.g. pick-place-v3")
# A robot silent for this many seconds is marked offline by the periodic sweep.
FLEET_HEARTBEAT_TIMEOUT = env_number("FLEET_HEARTBEAT_TIMEOUT", 30.0, kind=float, min_value=1.0)
FLEET_SWEEP_INTERVAL = env_number("FLEET_SWEEP_INTERVAL", 10.0, kind=float, min_value=1.0)
# Simulated robots run at this multiple of their real control rate; 0 means as fast as possible.
FLEET_REALTIME_FACTOR = env_number("FLEET_REALTIME_FACTOR", 1.0, kind=float, min_value=0.0)
# A deployment site unlike the training one (experiments' `shift` sweep): simulated robots' object and goal ranges
# move by "dx,dy" metres on the table (fleet.sim.envs.shift_scene); unset: the tasks' own scenes.
def _scene_shift() -> tuple[float, float] | None:
    value = env_str("FLEET_SCENE_SHIFT")
    if value is None:
        return None
    try:
        dx, dy = (float(part) for part in value.split(","))
    except ValueError:
        raise _bad("FLEET_SCENE_SHIFT", value, "expected two numbers in metres, dx,dy (e.g. 0.06,0)") from None
    if max(abs(dx), abs(dy)) > 0.2:
        raise _bad("FLEET_SCENE_SHIFT", value, "each shift must lie within ±0.2 m (the table)")
    return dx, dy


FLEET_SCENE_SHIFT = _scene_shift()
# An actor's claim on its robot expires this long after its last renewal (a killed worker's robot is freed).
FLEET_LEASE_SECONDS = env_number("FLEET_LEASE_SECONDS", 20.0, kind=float, min_value=1.0)
# A finished episode the database does not take (it is restarting, failing over) is retried with back-off for this
# long, then kept on the actor's disk under FLEET_OUTBOX_DIR and stored when the database answers (actors.outbox).
FLEET_INGEST_RETRY_SECONDS = env_number("FLEET_INGEST_RETRY_SECONDS", 20.0, kind=float, min_value=0.0, max_value=90.0)
# Group commit (fleet.group_commit): episodes stored at once by several threads of a process share one
# transaction; the writer waits this long for companions, and takes at most this many. False: each alone.
INGEST_GROUP_COMMIT = env_bool("INGEST_GROUP_COMMIT", True)
INGEST_GROUP_WINDOW_MS = env_number("INGEST_GROUP_WINDOW_MS", 2.0, kind=float, min_value=0.0, max_value=100.0)
INGEST_GROUP_MAX = env_number("INGEST_GROUP_MAX", 64, min_value=1, max_value=1000)
FLEET_OUTBOX_DIR = Path(env_str("FLEET_OUTBOX_DIR", str(VAR_DIR / "outbox" / "episodes"))).resolve()
# The HG-DAgger expert gate, as JSON overrides of fleet.sim.gate.GateConfig, e.g. {"no_progress_steps": 20}.
def _gate_config() -> dict:
    import json

    from fleet.sim.gate import GateConfig

    raw = env_str("FLEET_GATE", "{}")
    try:
        return GateConfig.from_dict(json.loads(raw)).as_dict()
    except (ValueError, TypeError) as exc:
        raise _bad("FLEET_GATE", raw, str(exc)) from None


FLEET_GATE = _gate_config()
# Learner: publish a candidate every N gradient steps; SOP resampler temperature alpha.
# Offline demonstrations per task that the base policy is cloned from: 5 leaves it weak (~0.5 success).
LEARNER_BASE_DEMOS = env_number("LEARNER_BASE_DEMOS", 5, min_value=1)
# Gradient steps (batch 256) of that behaviour cloning: about a minute of one core at 3000.
LEARNER_BASE_STEPS = env_number("LEARNER_BASE_STEPS", 3000, min_value=1)
LEARNER_PUBLISH_EVERY = env_number("LEARNER_PUBLISH_EVERY", learner_defaults.PUBLISH_EVERY, min_value=1)
LEARNER_ALGORITHM = env_str("LEARNER_ALGORITHM", learner_defaults.ALGORITHM)
if LEARNER_ALGORITHM not in learner_defaults.ALGORITHMS:
    raise _bad("LEARNER_ALGORITHM", LEARNER_ALGORITHM, f"expected one of {', '.join(learner_defaults.ALGORITHMS)}")
# RECAP: gradient steps that fit the value function before it is frozen.
LEARNER_RECAP_VALUE_STEPS = env_number("LEARNER_RECAP_VALUE_STEPS", learner_defaults.RECAP_VALUE_STEPS, min_value=1)
# RECAP: a new run waits for this many online episodes of its base version per task the fleet runs before it fits
# its value function (fitted on demonstrations alone, it sees only successes); 0: fit at once.
LEARNER_RECAP_BASE_ROLLOUTS = env_number("LEARNER_RECAP_BASE_ROLLOUTS", 10, min_value=0, max_value=10_000)
LEARNER_BATCH_SIZE = env_number("LEARNER_BATCH_SIZE", learner_defaults.BATCH_SIZE, min_value=1, max_value=65536)
LEARNER_LR = env_number("LEARNER_LR", learner_defaults.LR, kind=float, min_value=1e-7, max_value=1.0)
# The learner task trains for this long, saves its state and re-queues itself (Celery time limits apply per slice).
LEARNER_SLICE_SECONDS = env_number("LEARNER_SLICE_SECONDS", 240.0, kind=float, min_value=5.0, max_value=3000.0)
# A killed learner resumes within about LEARNER_LEASE_SECONDS + LEARNER_WATCHDOG_SECONDS (plus rebuilding its
# buffer): its lease (renewed by a thread every quarter of it) expires, and beat's watchdog queues a slice. It loses
# at most LEARNER_SAVE_SECONDS of training: state is saved that often, and before every published version.
LEARNER_LEASE_SECONDS = env_number("LEARNER_LEASE_SECONDS", 10.0, kind=float, min_value=2.0, max_value=600.0)
LEARNER_WATCHDOG_SECONDS = env_number("LEARNER_WATCHDOG_SECONDS", 5.0, kind=float, min_value=1.0, max_value=600.0)
LEARNER_SAVE_SECONDS = env_number("LEARNER_SAVE_SECONDS", 30.0, kind=float, min_value=1.0, max_value=3600.0)
# manual: versions wait for a supervisor; rules: the GOVERNANCE_* rules below act too; continuous: every published
# version goes straight to the whole fleet (SOP's own mode, used by the learning experiments and the demo).
ROLLOUT_MODE = env_str("ROLLOUT_MODE", "manual")
if ROLLOUT_MODE not in ("manual", "rules", "continuous"):
    raise _bad("ROLLOUT_MODE", ROLLOUT_MODE, "expected manual, rules or continuous")
LEARNER_RESAMPLER_ALPHA = env_number("LEARNER_RESAMPLER_ALPHA", learner_defaults.RESAMPLER_ALPHA, kind=float,
                                     min_value=0.0, max_value=100.0)
# "raw": the seed's formula on the mean losses as they are; "normalised": on the losses divided by their average.
LEARNER_RESAMPLER_SCALE = env_str("LEARNER_RESAMPLER_SCALE", learner_defaults.RESAMPLER_SCALE)
if LEARNER_RESAMPLER_SCALE not in learner_defaults.RESAMPLER_SCALES:
    raise _bad("LEARNER_RESAMPLER_SCALE", LEARNER_RESAMPLER_SCALE,
               f"expected one of {', '.join(learner_defaults.RESAMPLER_SCALES)}")
# Torch's intra-op threads in the learner process. Not torch's default (one per core): on a machine shared with
# actors and renders its OpenMP threads spin at every barrier while their siblings wait for a core, and the learner
# fell from ~110k to ~17k samples/s beside two busy processes (docs/decisions.md, bench/learner_under_load.py).
# The controlled clock (experiments): at most this many gradient steps per second of robot time (wall time times
# FLEET_REALTIME_FACTOR) since the run started, so a fleet's size does not change how much the learner trains; 0: off.
LEARNER_STEPS_PER_ROBOT_SECOND = env_number("LEARNER_STEPS_PER_ROBOT_SECOND", learner_defaults.STEPS_PER_ROBOT_SECOND,
                                            kind=float, min_value=0.0, max_value=1e6)
LEARNER_TORCH_THREADS = env_number("LEARNER_TORCH_THREADS", 1, min_value=1, max_value=256)
# Processes of the data-parallel learner (learner.distributed): 1 is the Celery learner worker (slices); N > 1 makes
# `python -m learner.service` a torchrun group of N (one per GPU, or gloo on CPU) that loops over slices itself.
LEARNER_WORLD_SIZE = env_number("LEARNER_WORLD_SIZE", 1, min_value=1, max_value=1024)
if LEARNER_BATCH_SIZE % LEARNER_WORLD_SIZE:
    raise _bad("LEARNER_BATCH_SIZE", str(LEARNER_BATCH_SIZE), f"must split evenly among the LEARNER_WORLD_SIZE="
               f"{LEARNER_WORLD_SIZE} processes of the data-parallel learner")
LEARNER_DEVICE = env_str("LEARNER_DEVICE", "auto")
if LEARNER_DEVICE not in ("auto", "cpu", "cuda"):
    raise _bad("LEARNER_DEVICE", LEARNER_DEVICE, "expected auto, cpu or cuda")

# Experiments (`manage.py experiment`): where runs, summaries and reports are kept; the Redis database a run's system
# uses (flushed at each run's start: never one the product uses); processes that evaluate kept versions at a run's end.
EXPERIMENTS_DIR = Path(env_str("EXPERIMENTS_DIR", str(VAR_DIR / "experiments"))).resolve()
EXPERIMENTS_REDIS_DB = env_number("EXPERIMENTS_REDIS_DB", 11, min_value=0, max_value=15)
EXPERIMENTS_EVAL_WORKERS = env_number("EXPERIMENTS_EVAL_WORKERS", os.cpu_count() or 1, min_value=1, max_value=256)

# Episode review: an annotator's claim on an episode lapses this long after the page stops renewing it.
REVIEW_CLAIM_SECONDS = env_number("REVIEW_CLAIM_SECONDS", 300.0, kind=float, min_value=10.0)
# Replays: rendered ahead for this many queued episodes; video size (multiples of 16) and camera.
REVIEW_RENDER_AHEAD = env_number("REVIEW_RENDER_AHEAD", 3, min_value=0, max_value=50)
# Replays are a cache: one rendered more than this many days ago is deleted (hourly), unless its episode is being
# reviewed right now; opening the episode later renders it again.
REVIEW_REPLAY_KEEP_DAYS = env_number("REVIEW_REPLAY_KEEP_DAYS", 14.0, kind=float, min_value=0.01)
REVIEW_VIDEO_WIDTH = env_number("REVIEW_VIDEO_WIDTH", 320, min_value=16, max_value=1920)
REVIEW_VIDEO_HEIGHT = env_number("REVIEW_VIDEO_HEIGHT", 240, min_value=16, max_value=1088)
for _name in ("REVIEW_VIDEO_WIDTH", "REVIEW_VIDEO_HEIGHT"):
    if globals()[_name] % 16:
        raise _bad(_name, str(globals()[_name]), "video sizes are multiples of 16 (H.264 macroblocks)")
REVIEW_VIDEO_CAMERA = env_str("REVIEW_VIDEO_CAMERA", "corner")
# A replay draws every REVIEW_VIDEO_STRIDE-th control step (2: 40 fps at the robot's 80 Hz, still its own pace) and,
# with REVIEW_VIDEO_ANTIALIAS, 4x multisampling, which costs three times the frame in software rendering.
REVIEW_VIDEO_STRIDE = env_number("REVIEW_VIDEO_STRIDE", 2, min_value=1, max_value=8)
REVIEW_VIDEO_ANTIALIAS = env_bool("REVIEW_VIDEO_ANTIALIAS", False)
# Replays render on the `background` queue, whose worker runs at this niceness (0-19) so that bulk work never takes
# CPU from robots, ingestion or the learner, with this many render threads (OSMesa's llvmpipe and x264).
BACKGROUND_NICE = env_number("BACKGROUND_NICE", 10, min_value=0, max_value=19)
REVIEW_RENDER_THREADS = env_number("REVIEW_RENDER_THREADS", 1, min_value=1, max_value=64)
REVIEW_RENDER_TIME_LIMIT = env_number("REVIEW_RENDER_TIME_LIMIT", 300, min_value=10)
# A queued or rendering replay that has not moved for this long is queued again (its worker died).
REVIEW_RENDER_STALE_SECONDS = env_number("REVIEW_RENDER_STALE_SECONDS", 120.0, kind=float, min_value=10.0)
# Renders people cause (opening an episode, replay.json, retry) per user per window; past it, 429 (core.ratelimit).
# Polling a replay that is rendered or on its way costs nothing.
REVIEW_RENDER_RATE_LIMIT = env_number("REVIEW_RENDER_RATE_LIMIT", 60, min_value=1)
REVIEW_RENDER_RATE_WINDOW = env_number("REVIEW_RENDER_RATE_WINDOW", 600.0, kind=float, min_value=1.0,
                                       max_value=86400.0)
# At most this many renders queued or rendering at once, system-wide: a request for another is answered 503 and
# queues nothing. Render-ahead fills at most half of it, so people's own requests always have room.
REVIEW_RENDER_QUEUE_MAX = env_number("REVIEW_RENDER_QUEUE_MAX", 20, min_value=1, max_value=10000)
# Dataset exports are Celery jobs on `background` (review.DatasetExport): at most this many episodes per job
# (larger sets go through `manage.py export_dataset`), this many queued or running per user, this long each, and
# the zip is kept this many days.
REVIEW_EXPORT_MAX_EPISODES = env_number("REVIEW_EXPORT_MAX_EPISODES", 2000, min_value=1)
REVIEW_EXPORTS_PER_USER = env_number("REVIEW_EXPORTS_PER_USER", 1, min_value=1, max_value=100)
REVIEW_EXPORT_TIME_LIMIT = env_number("REVIEW_EXPORT_TIME_LIMIT", 1800, min_value=10)
REVIEW_EXPORT_KEEP_DAYS = env_number("REVIEW_EXPORT_KEEP_DAYS", 7.0, kind=float, min_value=0.01)
# Exports a person may start per window (dataset export jobs and audit CSV downloads together); past it, 429.
EXPORT_RATE_LIMIT = env_number("EXPORT_RATE_LIMIT", 10, min_value=1)
EXPORT_RATE_WINDOW = env_number("EXPORT_RATE_WINDOW", 3600.0, kind=float, min_value=1.0, max_value=7 * 86400.0)

# Checkpoint retention (learner.retention): the newest CHECKPOINT_KEEP_LAST versions keep their files whatever their
# state, and so do the CHECKPOINT_KEEP_FLEET versions the fleet ran before the deployed one (successive roll-back
# targets); versions that robots run or may run always do. Older checkpoints are deleted every
# CHECKPOINT_PRUNE_INTERVAL seconds.
CHECKPOINT_KEEP_LAST = env_number("CHECKPOINT_KEEP_LAST", 100, min_value=1)
CHECKPOINT_KEEP_FLEET = env_number("CHECKPOINT_KEEP_FLEET", 10, min_value=1)
# Episode payloads (the recorded arrays) of episodes finished more than this many days ago move from PostgreSQL to
# storage (fleet.archive), at most PAYLOAD_ARCHIVE_BATCH an hour; 0 keeps every payload in PostgreSQL.
PAYLOAD_ARCHIVE_AFTER_DAYS = env_number("PAYLOAD_ARCHIVE_AFTER_DAYS", 30.0, kind=float, min_value=0.0)
PAYLOAD_ARCHIVE_BATCH = env_number("PAYLOAD_ARCHIVE_BATCH", 2000, min_value=1, max_value=1_000_000)
CHECKPOINT_PRUNE_INTERVAL = env_number("CHECKPOINT_PRUNE_INTERVAL", 600.0, kind=float, min_value=10.0)

CELERY_BEAT_SCHEDULE = {
    "sweep-robots": {"task": "fleet.sweep_robots", "schedule": FLEET_SWEEP_INTERVAL},
    "drain-episode-outbox": {"task": "actors.drain_outbox", "schedule": 30.0},
    "keep-learner-running": {"task": "learner.ensure_running", "schedule": LEARNER_WATCHDOG_SECONDS},
    "prune-checkpoints": {"task": "learner.prune_checkpoints", "schedule": CHECKPOINT_PRUNE_INTERVAL},
    "render-replays-ahead": {"task": "review.render_ahead", "schedule": 30.0},
    "evict-old-files": {"task": "review.evict_old_files", "schedule": 3600.0},
    "archive-payloads": {"task": "fleet.archive_payloads", "schedule": 3600.0},
}

# --- operations: metrics, health, alert rules, webhooks (core.metrics, ops/) ----------------------------

# Prometheus: every process writes its metrics under METRICS_DIR (prometheus_client's multiprocess mode; emptied
# when `make demo` starts); the web process serves them all at /metrics, without a login, to clients whose address
# lies in METRICS_ALLOWED_NETWORKS or that present `Authorization: Bearer METRICS_TOKEN`.
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
METRICS_DIR = Path(env_str("PROMETHEUS_MULTIPROC_DIR") or env_str("METRICS_DIR") or str(VAR_DIR / "metrics")).resolve()


def _networks(name: str, default: str) -> list:
    import ipaddress

    raw = env_str(name, default)
    try:
        return [ipaddress.ip_network(item.strip(), strict=False) for item in raw.split(",") if item.strip()]
    except ValueError as exc:
        raise _bad(name, raw, f"expected comma-separated networks such as 10.0.0.0/8,::1/128 ({exc})") from None


METRICS_ALLOWED_NETWORKS = _networks("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
METRICS_TOKEN = env_str("METRICS_TOKEN")
if METRICS_TOKEN is not None and len(METRICS_TOKEN) < 16:
    raise _bad("METRICS_TOKEN", "<hidden>", "a bearer token needs at least 16 characters")
# /readyz: each dependency (PostgreSQL, Redis, the broker) must answer within this many seconds.
HEALTH_TIMEOUT_SECONDS = env_number("HEALTH_TIMEOUT_SECONDS", 2.0, kind=float, min_value=0.1, max_value=30.0)

# Alert rules (ops.rules), evaluated by beat every ALERT_CHECK_SECONDS; each fires once per incident and resolves
# itself when its condition clears.
ALERT_CHECK_SECONDS = env_number("ALERT_CHECK_SECONDS", 30.0, kind=float, min_value=0.5, max_value=3600.0)
# A task's autonomous success drops: the Wilson 95 % interval of its last ALERT_SUCCESS_WINDOW online episodes (or of
# every one since the previous check, when more arrived) lies wholly below the lower end of the interval of the
# ALERT_SUCCESS_BASELINE episodes before them (at least ALERT_SUCCESS_MIN_BASELINE of them), by more than
# ALERT_SUCCESS_MARGIN.
ALERT_SUCCESS_WINDOW = env_number("ALERT_SUCCESS_WINDOW", 20, min_value=2, max_value=10_000)
ALERT_SUCCESS_BASELINE = env_number("ALERT_SUCCESS_BASELINE", 100, min_value=2, max_value=100_000)
ALERT_SUCCESS_MIN_BASELINE = env_number("ALERT_SUCCESS_MIN_BASELINE", 20, min_value=2, max_value=100_000)
ALERT_SUCCESS_MARGIN = env_number("ALERT_SUCCESS_MARGIN", 0.05, kind=float, min_value=0.0, max_value=1.0)
if ALERT_SUCCESS_MIN_BASELINE > ALERT_SUCCESS_BASELINE:
    raise _bad("ALERT_SUCCESS_MIN_BASELINE", str(ALERT_SUCCESS_MIN_BASELINE), "must not exceed ALERT_SUCCESS_BASELINE")
# The learner published nothing for this many minutes while episodes arrived (0: rule off).
ALERT_LEARNER_IDLE_MINUTES = env_number("ALERT_LEARNER_IDLE_MINUTES", 30.0, kind=float, min_value=0.0,
                                        max_value=7 * 24 * 60.0)
# More than this many episode uploads or ingestions refused per minute, averaged over ALERT_REJECTIONS_MINUTES.
ALERT_REJECTIONS_PER_MINUTE = env_number("ALERT_REJECTIONS_PER_MINUTE", 10.0, kind=float, min_value=0.0)
ALERT_REJECTIONS_MINUTES = env_number("ALERT_REJECTIONS_MINUTES", 5, min_value=1, max_value=60)
# A Celery queue holding more than this many messages.
ALERT_QUEUE_DEPTH = env_number("ALERT_QUEUE_DEPTH", 500, min_value=1)
# Outgoing webhooks (ops.webhooks): each POST waits this long for an answer; a failure or a 5xx is tried again after
# WEBHOOK_RETRY_SECONDS, doubling each time, up to WEBHOOK_MAX_ATTEMPTS attempts in all.
WEBHOOK_TIMEOUT_SECONDS = env_number("WEBHOOK_TIMEOUT_SECONDS", 5.0, kind=float, min_value=0.1, max_value=20.0)
WEBHOOK_RETRY_SECONDS = env_number("WEBHOOK_RETRY_SECONDS", 10.0, kind=float, min_value=0.05, max_value=3600.0)
WEBHOOK_MAX_ATTEMPTS = env_number("WEBHOOK_MAX_ATTEMPTS", 6, min_value=1, max_value=20)
CELERY_BEAT_SCHEDULE["check-alert-rules"] = {"task": "ops.check_rules", "schedule": ALERT_CHECK_SECONDS}

# --- rollout governance (governance/) ----------------------------------------------------------------

# Evaluation: each candidate runs this many held-out seeds per task (policy alone), paired with the deployed version.
GOVERNANCE_EVALUATION_EPISODES = env_number("GOVERNANCE_EVALUATION_EPISODES", 10, min_value=1, max_value=1000)
# Canary: share of robots a rule's canary takes (and the form's default); at least one robot stays on the deployed
# version. It is rolled back automatically when its success (without help) is below the deployed version's by more
# than the margin once both have at least the minimum of online episodes since it started.
GOVERNANCE_CANARY_SHARE = env_number("GOVERNANCE_CANARY_SHARE", 0.25, kind=float, min_value=0.01, max_value=1.0)
GOVERNANCE_CANARY_MARGIN = env_number("GOVERNANCE_CANARY_MARGIN", 0.1, kind=float, min_value=0.0, max_value=1.0)
GOVERNANCE_CANARY_MIN_EPISODES = env_number("GOVERNANCE_CANARY_MIN_EPISODES", 20, min_value=1)
# Seconds between governance checks (finished evaluations, canary analysis, the nomination rule).
GOVERNANCE_CHECK_SECONDS = env_number("GOVERNANCE_CHECK_SECONDS", 10.0, kind=float, min_value=0.5)
# Rules (ROLLOUT_MODE=rules only): nominate the newest checkpoint every K minutes (0: off); approve a candidate to
# a canary when its evaluation is not worse than the deployed version's by more than the margin ("off": never).
GOVERNANCE_NOMINATE_EVERY_MINUTES = env_number("GOVERNANCE_NOMINATE_EVERY_MINUTES", 10.0, kind=float, min_value=0.0)


def _auto_canary_margin() -> float | None:
    raw = env_str("GOVERNANCE_AUTO_CANARY_MARGIN", "0.05")
    if raw.strip().lower() == "off":
        return None
    try:
        return env_number("GOVERNANCE_AUTO_CANARY_MARGIN", 0.05, kind=float, min_value=0.0, max_value=1.0)
    except ImproperlyConfigured:
        raise _bad("GOVERNANCE_AUTO_CANARY_MARGIN", raw, "expected a number in [0, 1], or off") from None


GOVERNANCE_AUTO_CANARY_MARGIN = _auto_canary_margin()
CELERY_BEAT_SCHEDULE["governance-check"] = {"task": "governance.check", "schedule": GOVERNANCE_CHECK_SECONDS}

# --- the robot gateway (gateway/, /api/v1/) ------------------------------------------------------------

# Requests per robot token per window (a fixed window in Redis shared by every web process); past it, 429.
API_RATE_LIMIT = env_number("API_RATE_LIMIT", 600, min_value=1)
API_RATE_WINDOW = env_number("API_RATE_WINDOW", 60.0, kind=float, min_value=1.0, max_value=3600.0)
# An uploaded episode: its body (the .npz), what it may inflate to, its steps, and its `meta` JSON.
API_MAX_EPISODE_BYTES = env_number("API_MAX_EPISODE_BYTES", 8 * 1024 * 1024, min_value=1024)
API_MAX_INFLATED_BYTES = env_number("API_MAX_INFLATED_BYTES", 64 * 1024 * 1024, min_value=1024)
API_MAX_EPISODE_STEPS = env_number("API_MAX_EPISODE_STEPS", 2000, min_value=1)
API_MAX_META_BYTES = env_number("API_MAX_META_BYTES", 8192, min_value=2)
# An upload may name any version its robot was assigned during the episode, looking back at most this far.
API_MAX_EPISODE_SECONDS = env_number("API_MAX_EPISODE_SECONDS", 3600, min_value=10)
# Django reads a request body up to this size; the episode cap decides, with room for the multipart overhead.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, API_MAX_EPISODE_BYTES + 65536)

"""Loaded with -p before Django is set up: tests get their own Redis database.

A demo running on the same Redis keeps its queues, leases and live events; tests use database TEST_REDIS_DB
(default 15) of the same server, flushed at the start of the session (pub/sub channels, which Redis shares
between databases, carry the database number in their names: core.bus).
"""
import os
from urllib.parse import urlsplit, urlunsplit

from sopweb import embedded

# Under pytest-xdist (`make test` runs two): each test process is one of the suite's streams, gw0, gw1, ...; each
# gets its own Redis database (15, 14, ...: bench/soak.py keeps 13 for itself), its own test database (pytest-django
# adds the suffix) and its own storage directory, so streams share nothing but the servers.
STREAM = os.environ.get("PYTEST_XDIST_WORKER", "")
if STREAM and "TEST_REDIS_DB_BASE" not in os.environ:
    os.environ["TEST_REDIS_DB_BASE"] = os.environ.get("TEST_REDIS_DB", "15")
if STREAM:
    os.environ["TEST_REDIS_DB"] = str(int(os.environ["TEST_REDIS_DB_BASE"]) - int(STREAM.removeprefix("gw")))
os.environ.setdefault("TEST_REDIS_DB", "15")

# The suite's queues live in its own Redis database (REDIS_URL below), never on a broker a demo or a deployment uses;
# tests/test_broker.py points processes at a RabbitMQ virtual host of its own where it tests that broker.
os.environ.pop("CELERY_BROKER_URL", None)
url = os.environ.get("REDIS_URL") or embedded.read_state().get("REDIS_URL")
if url:
    parts = urlsplit(url)
    os.environ["REDIS_URL"] = urlunsplit(parts._replace(path="/" + os.environ["TEST_REDIS_DB"]))

# Checkpoints and other files written by tests go to a throwaway directory, shared with the worker processes.
if "SOPWEB_STORAGE_DIR" not in os.environ:
    import tempfile

    os.environ["SOPWEB_STORAGE_DIR"] = tempfile.mkdtemp(prefix="sopweb-test-storage-")
if STREAM and os.path.basename(os.environ["SOPWEB_STORAGE_DIR"]) != STREAM:
    os.environ["SOPWEB_STORAGE_DIR"] = os.path.join(os.environ["SOPWEB_STORAGE_DIR"], STREAM)
    os.environ.pop("FLEET_OUTBOX_DIR", None)  # the controller's, inherited
    os.makedirs(os.environ["SOPWEB_STORAGE_DIR"], exist_ok=True)
# Prometheus's per-process metric files (core.metrics): this stream's own, so a test's counters count its processes.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(os.environ["SOPWEB_STORAGE_DIR"], "metrics")
# Episodes an actor keeps on disk while the database is away (actors.outbox): the tests' own, never a demo's.
if "FLEET_OUTBOX_DIR" not in os.environ:
    os.environ["FLEET_OUTBOX_DIR"] = os.path.join(os.environ["SOPWEB_STORAGE_DIR"], "outbox")
# Modules that import sopweb.asgi at collection (the permission matrix, the import graph) set DATABASE_POOL=1 in this
# process's environment, as the web process wants; conftest puts the environment back before any test starts
# processes that would inherit it.
DATABASE_POOL_AT_START = os.environ.get("DATABASE_POOL")

# Dashboard sockets' heartbeats would interleave with the events most tests count: on only where a test asks
# (DASHBOARD_HEARTBEAT_SECONDS in its settings or its processes' environment).
os.environ.setdefault("DASHBOARD_HEARTBEAT_SECONDS", "0")
# One beat at a time holds Redis's beat lock (sopweb/beat.py): a test that kills its beat leaves the lock to expire
# before the next test's beat may send anything, so the suite's lock is short.
os.environ.setdefault("BEAT_LOCK_SECONDS", "3")

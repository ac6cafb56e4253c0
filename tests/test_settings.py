"""Configuration comes from the environment; a bad value stops start-up with a message naming the variable."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SETUP = "import django; django.setup(); from django.conf import settings; print('OK', settings.DATABASES['default']['NAME'])"


def run_setup(tmp_path, code=SETUP, **env):
    full_env = dict(os.environ, SOPWEB_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="sopweb.settings")
    full_env.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sopweb")
    full_env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("name, value, message", [
    ("DEBUG", "maybe", "expected true or false"),
    ("DATABASE_URL", "mysql://root@localhost/sopweb", "expected postgresql://"),
    ("DATABASE_URL", "postgresql://postgres@localhost:54x/sopweb", "the port is not a number"),
    ("DATABASE_URL", "postgresql://postgres@localhost:5432/", "the database name is missing"),
    ("REDIS_URL", "http://localhost:6379", "expected redis://"),
    ("REDIS_URL", "redis://localhost:6379/zero", "must be an integer"),
    ("ALLOWED_HOSTS", " , ", "at least one item"),
    ("CSRF_TRUSTED_ORIGINS", "fleet.example.com", "https://host"),
    ("FLEET_HEARTBEAT_TIMEOUT", "soon", "expected a number"),
    ("FLEET_HEARTBEAT_TIMEOUT", "0", "in [1.0, None]"),
    ("FLEET_REALTIME_FACTOR", "nan", "expected a value"),
    ("FLEET_TASKS", "pick-place-v2", "end in -v3"),
    ("CHECKPOINT_KEEP_LAST", "0", "in [1, None]"),
    ("CHECKPOINT_KEEP_FLEET", "all", "expected an integer"),
    ("LEARNER_PUBLISH_EVERY", "1.5", "expected an integer"),
    ("LEARNER_RESAMPLER_ALPHA", "-1", "expected a value"),
    ("LEARNER_DEVICE", "tpu", "expected auto, cpu or cuda"),
    ("CELERY_TASK_TIME_LIMIT", "10", "must exceed CELERY_TASK_SOFT_TIME_LIMIT"),
    ("SECRET_KEY_FILE", "/nonexistent/secret", "No such file"),
    ("REVIEW_RENDER_QUEUE_MAX", "0", "in [1, 10000]"),
    ("REVIEW_RENDER_RATE_LIMIT", "lots", "expected an integer"),
    ("EXPORT_RATE_WINDOW", "0", "in [1.0, 604800.0]"),
    ("REVIEW_EXPORTS_PER_USER", "0", "in [1, 100]"),
    ("FLEET_SCENE_SHIFT", "0.06", "expected two numbers in metres"),
    ("FLEET_SCENE_SHIFT", "0.5,0", "within ±0.2 m"),
    ("LEARNER_STEPS_PER_ROBOT_SECOND", "-5", "expected a value"),
    ("LEARNER_RECAP_BASE_ROLLOUTS", "some", "expected an integer"),
    ("EXPERIMENTS_REDIS_DB", "16", "in [0, 15]"),
    ("LOG_FORMAT", "xml", "expected plain or json"),
    ("CELERY_BROKER_URL", "sqs://queue", "expected redis://, rediss://, amqp:// or amqps://"),
    ("METRICS_ENABLED", "perhaps", "expected true or false"),
    ("METRICS_ALLOWED_NETWORKS", "10.0.0.0/33", "expected comma-separated networks"),
    ("METRICS_TOKEN", "short", "at least 16 characters"),
    ("ALERT_SUCCESS_MIN_BASELINE", "500", "must not exceed ALERT_SUCCESS_BASELINE"),
    ("ALERT_SUCCESS_MARGIN", "2", "in [0.0, 1.0]"),
    ("WEBHOOK_MAX_ATTEMPTS", "0", "in [1, 20]"),
])
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, name, value, message):
    result = run_setup(tmp_path, **{name: value})
    assert result.returncode != 0
    assert f"{name}=" in result.stderr and message in result.stderr, result.stderr
    assert "OK" not in result.stdout


def test_good_values_are_accepted(tmp_path):
    result = run_setup(tmp_path, FLEET_TASKS="pick-place-v3, box-close-v3", DEBUG="false",
                       DATABASE_URL="postgresql://fleet:s%40cret@db.internal:6543/fleetdb?sslmode=require")
    assert result.returncode == 0, result.stderr
    assert "OK fleetdb" in result.stdout


def test_unset_urls_without_embedded_services_say_how_to_start_them(tmp_path):
    result = run_setup(tmp_path, DATABASE_URL=None)
    assert result.returncode != 0
    assert "DATABASE_URL is unset and no embedded service is running" in result.stderr


def test_a_generated_secret_key_is_kept_private_and_stable(tmp_path):
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    first = run_setup(tmp_path, code, SECRET_KEY=None)
    second = run_setup(tmp_path, code, SECRET_KEY=None)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and len(first.stdout.strip()) >= 50
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"


def test_production_settings_pass_the_deploy_check_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT, text=True,
        capture_output=True, timeout=60,
        env=dict(os.environ, SOPWEB_VAR_DIR=str(tmp_path), DEBUG="false", SECRET_KEY=secrets.token_urlsafe(64),
                 ALLOWED_HOSTS="fleet.example.com", CSRF_TRUSTED_ORIGINS="https://fleet.example.com",
                 DATABASE_URL="postgresql://postgres@127.0.0.1:5432/sopweb", REDIS_URL="redis://127.0.0.1:6379/0"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (0 silenced)" in result.stdout


def test_plain_http_with_debug_off_is_flagged_by_the_deploy_check(tmp_path):
    """The check can fail: without https the secure-cookie settings are off and Django says so."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT, text=True,
        capture_output=True, timeout=60,
        env=dict(os.environ, SOPWEB_VAR_DIR=str(tmp_path), DEBUG="false", SECRET_KEY=secrets.token_urlsafe(64),
                 DATABASE_URL="postgresql://postgres@127.0.0.1:5432/sopweb", REDIS_URL="redis://127.0.0.1:6379/0"),
    )
    assert result.returncode != 0
    assert "SESSION_COOKIE_SECURE" in result.stdout + result.stderr

"""Supervisors configure outgoing webhooks and read their delivery log (ops.manage_webhooks, fleet/roles.py)."""
from django.db import migrations

from fleet.roles import ensure_roles


def grant(apps, schema_editor):
    ensure_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        # Every app that holds a role's permission, at its latest migration (ensure_roles grants what it finds).
        ("ops", "0001_initial"),
        ("fleet", "0014_rollup_autonomous_success"),
        ("accounts", "0002_mark_demo_accounts"),
        ("core", "0002_audit_append_only"),
        ("review", "0006_one_open_flag_per_person"),
        ("governance", "0004_alert_incidents"),
        ("learner", "0004_metric_restarts"),
        ("gateway", "0001_robot_tokens"),
    ]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]

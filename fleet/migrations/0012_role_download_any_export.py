"""Supervisors may see and download everyone's dataset exports (review.download_any_export, fleet/roles.py)."""
from django.db import migrations

from fleet.roles import ensure_roles


def grant(apps, schema_editor):
    ensure_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        # Every app that holds a role's permission, at its latest migration: ensure_roles grants exactly what it
        # finds, so none may be missing from the historical registry here.
        ("fleet", "0011_role_manage_users"),
        ("accounts", "0001_initial"),
        ("core", "0002_audit_append_only"),
        ("review", "0004_dataset_exports"),
        ("governance", "0002_rollout_from_fleet"),
        ("learner", "0003_checkpoint_removed_at"),
        ("gateway", "0001_robot_tokens"),
    ]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]

"""Roles are Django groups with model permissions. This is the one list of who may do what."""
from __future__ import annotations

ROLES = {
    "operators": [
        "fleet.view_robot", "fleet.view_task", "fleet.view_episode", "governance.view_rollout",
        "learner.view_policyversion", "fleet.control_robot", "review.flag_episode", "gateway.enrol_robot",
    ],
    "supervisors": [
        "fleet.view_robot", "fleet.view_task", "fleet.view_episode", "governance.view_rollout",
        "learner.view_policyversion", "core.view_auditevent", "governance.approve_rollout", "review.flag_episode",
        "review.view_episodelabel", "review.view_failuremode", "review.add_failuremode",
        "review.change_failuremode", "review.delete_failuremode", "review.download_any_export",
        "accounts.manage_users", "ops.manage_webhooks",
    ],
    "annotators": [
        "fleet.view_task", "fleet.view_episode", "review.view_episodelabel", "review.label_episode",
    ],
}


def ensure_roles(apps) -> None:
    """Create the role groups and grant exactly their permissions. `apps` may be a migration's historical
    registry or the live one; called by the data migration and after every migrate/flush."""
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran; the groups need them now.
    for app_config in apps.get_app_configs():
        original = getattr(app_config, "models_module", None)
        app_config.models_module = original or True  # historical app configs have none
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = original
    from django.apps import apps as live_apps

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".")
            permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if permission is None:
                if apps is live_apps:
                    raise LookupError(f"role {role}: permission {perm} does not exist")
                # A data migration runs before apps migrated after it (review) have models; post_migrate,
                # with the live registry, grants the rest once every migration ran.
                continue
            wanted.append(permission)
        group.permissions.set(wanted)

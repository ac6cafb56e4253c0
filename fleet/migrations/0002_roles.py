"""Roles are Django groups with model permissions; this creates them with their permissions."""
from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    "operators": [
        "fleet.view_robot", "fleet.view_task", "fleet.view_episode", "fleet.view_rollout",
        "learner.view_policyversion", "fleet.control_robot", "fleet.flag_episode",
    ],
    "supervisors": [
        "fleet.view_robot", "fleet.view_task", "fleet.view_episode", "fleet.view_rollout",
        "learner.view_policyversion", "fleet.view_auditevent", "fleet.approve_rollout", "fleet.flag_episode",
    ],
    "annotators": [
        "fleet.view_task", "fleet.view_episode", "fleet.view_episodelabel", "fleet.label_episode",
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations ran; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0001_initial"),
        ("learner", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]

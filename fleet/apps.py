from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(sender, apps=None, **kwargs):
    from django.apps import apps as live_apps

    from fleet.roles import ensure_roles

    ensure_roles(apps or live_apps)  # flush (as in tests) sends no historical registry


class FleetConfig(AppConfig):
    name = "fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Keeps the role groups in step with ROLES after every migrate (and after a test flush).
        post_migrate.connect(_sync_roles, sender=self, dispatch_uid="fleet.sync_roles")
        from fleet import archive  # noqa: F401  (an archived payload's object goes with its row)

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The platform layer: audit trail, Redis bus and live events, interval statistics, locks, HTTP helpers.
    Every app may use it; it uses no app."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

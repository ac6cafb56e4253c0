from django.apps import AppConfig
from django.db.models.signals import post_save


def _seed_failure_modes(sender, instance, created, **kwargs):
    if created:
        from review.models import FailureMode

        FailureMode.seed_defaults(instance)


class ReviewConfig(AppConfig):
    name = "review"
    verbose_name = "Episode review"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # A new task starts with the default failure-mode taxonomy, which supervisors then edit in the admin.
        post_save.connect(_seed_failure_modes, sender="fleet.Task", dispatch_uid="review.seed_failure_modes")

from django.contrib import admin

from core.admin import ViewOnlyAdmin
from learner.models import PolicyVersion


@admin.register(PolicyVersion)
class PolicyVersionAdmin(ViewOnlyAdmin):
    """Versions are published by the learner and move through PolicyVersion.advance (audited)."""

    list_display = ["number", "algorithm", "state", "parent", "train_steps", "samples_online", "samples_offline",
                    "samples_intervention", "created_at"]
    list_filter = ["state", "algorithm"]

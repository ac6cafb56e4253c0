from django.contrib import admin

from core.admin import ViewOnlyAdmin
from governance.models import Rollout, RolloutControl


@admin.register(Rollout)
class RolloutAdmin(ViewOnlyAdmin):
    """Rollouts start and end through governance.decisions (audited)."""

    list_display = ["version", "stage", "status", "requested_by", "approved_by", "created_at", "ended_at"]
    list_filter = ["stage", "status"]
    readonly_fields = ["status", "ended_at"]


@admin.register(RolloutControl)
class RolloutControlAdmin(ViewOnlyAdmin):
    """The mode and the freeze change on the Rollouts page, through governance.mode (audited)."""

    list_display = ["mode", "frozen", "frozen_by", "frozen_at", "changed_by", "changed_at"]

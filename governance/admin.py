from django.contrib import admin

from governance.models import Rollout


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin):
    list_display = ["version", "stage", "status", "requested_by", "approved_by", "created_at", "ended_at"]
    list_filter = ["stage", "status"]
    readonly_fields = ["status", "ended_at"]

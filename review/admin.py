from django.contrib import admin

from review.models import FailureMode, ReplayVideo, ReviewClaim


@admin.register(FailureMode)
class FailureModeAdmin(admin.ModelAdmin):
    """Supervisors edit each task's taxonomy here (the review page offers the active modes, keys 1-9)."""

    list_display = ["name", "code", "task", "key", "position", "active"]
    list_editable = ["key", "position", "active"]
    list_filter = ["task", "active"]
    search_fields = ["name", "code"]


@admin.register(ReviewClaim)
class ReviewClaimAdmin(admin.ModelAdmin):
    list_display = ["episode", "annotator", "claimed_at", "expires_at"]
    raw_id_fields = ["episode"]


@admin.register(ReplayVideo)
class ReplayVideoAdmin(admin.ModelAdmin):
    list_display = ["episode", "status", "progress", "frames", "render_seconds", "attempts", "finished_at"]
    list_filter = ["status"]
    raw_id_fields = ["episode"]
    # The job's state moves only through request / retry and the render task.
    readonly_fields = ["status", "progress", "error", "path", "fps", "frames", "width", "height", "render_seconds",
                       "attempts", "heartbeat_at", "finished_at"]

from django.contrib import admin

from core.admin import ViewOnlyAdmin
from fleet.admin import EpisodeAdmin
from fleet.models import Episode
from review.models import DatasetExport, EpisodeFlag, EpisodeLabel, FailureMode, ReplayVideo, ReviewClaim


@admin.register(FailureMode)
class FailureModeAdmin(admin.ModelAdmin):
    """Supervisors edit each task's taxonomy here (the review page offers the active modes, keys 1-9)."""

    list_display = ["name", "code", "task", "key", "position", "active"]
    list_editable = ["key", "position", "active"]
    list_filter = ["task", "active"]
    search_fields = ["name", "code"]


@admin.register(ReviewClaim)
class ReviewClaimAdmin(ViewOnlyAdmin):
    """Claims are taken, renewed and released by the labelling page (review.models.ReviewClaim)."""

    list_display = ["episode", "annotator", "claimed_at", "expires_at"]
    raw_id_fields = ["episode"]


@admin.register(ReplayVideo)
class ReplayVideoAdmin(admin.ModelAdmin):
    list_display = ["episode", "status", "progress", "frames", "render_seconds", "attempts", "finished_at"]
    list_filter = ["status"]
    raw_id_fields = ["episode"]
    # The job's state moves only through request / retry and the render task.
    readonly_fields = ["status", "progress", "error", "path", "fps", "stride", "frames", "width", "height",
                       "render_seconds", "attempts", "urgent", "heartbeat_at", "finished_at"]


class FlagInline(admin.TabularInline):
    model = EpisodeFlag
    fk_name = "episode"
    extra = 0
    readonly_fields = ["reason", "raised_by", "status", "resolved_by", "resolved_at", "created_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None):  # raised on the episode page (audited)
        return False


admin.site.unregister(Episode)


@admin.register(Episode)
class EpisodeWithFlagsAdmin(EpisodeAdmin):
    """The fleet's episode admin with the episode's flags below it."""

    inlines = [*EpisodeAdmin.inlines, FlagInline]


@admin.register(EpisodeLabel)
class EpisodeLabelAdmin(ViewOnlyAdmin):
    """Labels are written by the annotator holding the claim (ReviewClaim.submit_label, audited)."""

    list_display = ["episode", "failure_mode", "failure_step", "disposition", "annotator", "updated_at"]
    list_filter = ["failure_mode", "disposition"]
    raw_id_fields = ["episode"]


@admin.register(EpisodeFlag)
class EpisodeFlagAdmin(ViewOnlyAdmin):
    """Flags are raised on the episode page and resolved by labelling or dismissal (audited)."""

    list_display = ["episode", "reason", "status", "raised_by", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["episode"]
    readonly_fields = ["status", "resolved_by", "resolved_at"]


@admin.register(DatasetExport)
class DatasetExportAdmin(ViewOnlyAdmin):
    """Exports are requested on the export page and built by their job; the row is who exported what, and when."""

    list_display = ["pk", "requested_by", "task", "status", "episodes", "size", "created_at", "finished_at"]
    list_filter = ["status"]

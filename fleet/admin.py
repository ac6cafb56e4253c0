from django.contrib import admin

from fleet.models import (AuditEvent, Episode, EpisodeFlag, EpisodeLabel, InterventionSegment, Robot, Rollout,
                          Task)


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["env_name", "title", "max_steps", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["env_name", "title"]


@admin.register(Robot)
class RobotAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "status", "policy_version", "last_heartbeat"]
    list_filter = ["kind", "status"]
    search_fields = ["name"]
    filter_horizontal = ["tasks"]
    # Status and version change only through audited transitions (pause/resume views, rollouts).
    readonly_fields = ["status", "policy_version", "last_heartbeat", "created_at"]


class InterventionInline(admin.TabularInline):
    """Recorded by the robot (gate, operator) or written by labelling (annotator): shown, never edited here."""

    model = InterventionSegment
    extra = 0
    can_delete = False
    readonly_fields = ["start_step", "end_step", "source"]

    def has_add_permission(self, request, obj=None):
        return False


class FlagInline(admin.TabularInline):
    model = EpisodeFlag
    fk_name = "episode"
    extra = 0
    readonly_fields = ["status", "resolved_by", "resolved_at"]


@admin.register(Episode)
class EpisodeAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "robot", "policy_version", "source", "outcome", "steps", "intervention_steps",
                    "finished_at"]
    list_filter = ["source", "outcome", "task"]
    search_fields = ["uuid"]
    date_hierarchy = "finished_at"
    list_select_related = ["task", "robot", "policy_version"]
    # An episode is a record of what happened, which its payload, the dashboards' roll-ups (kept by an insert/delete
    # trigger) and the learner's buffer all agree on: shown here, never edited (deleting one is consistent).
    readonly_fields = [field.name for field in Episode._meta.concrete_fields]
    inlines = [InterventionInline, FlagInline]
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is not worth it


@admin.register(EpisodeLabel)
class EpisodeLabelAdmin(admin.ModelAdmin):
    list_display = ["episode", "failure_mode", "failure_step", "disposition", "annotator", "updated_at"]
    list_filter = ["failure_mode", "disposition"]
    raw_id_fields = ["episode"]


@admin.register(EpisodeFlag)
class EpisodeFlagAdmin(admin.ModelAdmin):
    list_display = ["episode", "reason", "status", "raised_by", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["episode"]
    readonly_fields = ["status", "resolved_by", "resolved_at"]


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin):
    list_display = ["version", "stage", "status", "requested_by", "approved_by", "created_at", "ended_at"]
    list_filter = ["stage", "status"]
    readonly_fields = ["status", "ended_at"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "verb", "object_repr", "reason"]
    list_filter = ["verb", "object_type"]
    search_fields = ["object_repr", "reason", "object_id"]
    date_hierarchy = "created_at"

    # The audit trail is append-only, even for superusers.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

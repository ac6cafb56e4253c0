from django.contrib import admin

from core.admin import ViewOnlyAdmin
from fleet.models import Episode, InterventionSegment, Robot, Task


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["env_name", "title", "max_steps", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["env_name", "title"]


@admin.register(Robot)
class RobotAdmin(ViewOnlyAdmin):
    """Robots are added, started, stopped, paused, given versions and removed through fleet.control (audited):
    the fleet page and enrolment do that; the admin shows them."""

    list_display = ["name", "kind", "status", "enabled", "policy_version", "last_heartbeat"]
    list_filter = ["kind", "status", "enabled"]
    search_fields = ["name"]


class InterventionInline(admin.TabularInline):
    """Recorded by the robot (gate, operator) or written by labelling (annotator): shown, never edited here."""

    model = InterventionSegment
    extra = 0
    can_delete = False
    readonly_fields = ["start_step", "end_step", "source"]

    def has_add_permission(self, request, obj=None):
        return False


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
    inlines = [InterventionInline]  # review/admin.py adds the flags
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is not worth it

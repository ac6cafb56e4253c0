from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from core.models import AuditEvent


class ViewOnlyAdmin(admin.ModelAdmin):
    """For audited state: it changes only through the models' own transitions (which write the audit row), so the
    admin shows it and never edits, adds or deletes it, even for superusers."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ViewOnlyAdmin):
    list_display = ["created_at", "actor_name", "verb", "object_repr", "reason"]
    list_filter = ["verb", "object_type"]
    search_fields = ["object_repr", "reason", "object_id", "actor_name"]
    date_hierarchy = "created_at"


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class UserWithoutDeleteAdmin(UserAdmin):
    """Users are deactivated (Active unticked), never deleted: the audit trail names them (PROTECT)."""

    def has_delete_permission(self, request, obj=None):
        return False

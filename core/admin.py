from django.contrib import admin

from core.models import AuditEvent


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

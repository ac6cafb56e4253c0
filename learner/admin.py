from django.contrib import admin

from learner.models import PolicyVersion


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = ["number", "algorithm", "state", "parent", "train_steps", "samples_online", "samples_offline",
                    "samples_intervention", "created_at"]
    list_filter = ["state", "algorithm"]
    raw_id_fields = ["parent"]
    # The lifecycle moves only through PolicyVersion.advance (audited), never by editing the field.
    readonly_fields = ["state", "checkpoint_path", "checkpoint_sha256", "created_at"]

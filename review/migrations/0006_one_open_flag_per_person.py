"""A person has at most one open flag per episode. Duplicates raised before the constraint (a double click, two
tabs) are dismissed first, oldest kept, each with an audit row saying why (the trail is append-only: new rows only).
"""
from django.conf import settings
from django.db import migrations, models
from django.db.models import Count
from django.utils import timezone


def dismiss_duplicate_open_flags(apps, schema_editor):
    EpisodeFlag = apps.get_model("review", "EpisodeFlag")
    AuditEvent = apps.get_model("core", "AuditEvent")
    doubled = (EpisodeFlag.objects.filter(status="open", raised_by__isnull=False)
               .values("episode_id", "raised_by_id").annotate(n=Count("id")).filter(n__gt=1))
    now = timezone.now()
    for group in doubled:
        flags = list(EpisodeFlag.objects.filter(status="open", episode_id=group["episode_id"],
                                                raised_by_id=group["raised_by_id"]).order_by("created_at", "id"))
        kept = flags[0]
        for flag in flags[1:]:
            EpisodeFlag.objects.filter(pk=flag.pk).update(status="dismissed", resolved_at=now)
            AuditEvent.objects.create(
                actor=None, actor_name="", verb="flag.dismissed", object_type="review.episodeflag",
                object_id=str(flag.pk), object_repr=f"flag on episode {flag.episode_id}",
                reason=f"duplicate of flag {kept.pk}: one open flag per episode and person",
                details={"from": "open", "to": "dismissed"}, created_at=now)


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0002_audit_append_only"),
        ("review", "0005_replay_stride_and_urgent"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(dismiss_duplicate_open_flags, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="episodeflag",
            constraint=models.UniqueConstraint(condition=models.Q(("status", "open")), fields=("episode", "raised_by"),
                                               name="flag_one_open_per_person"),
        ),
    ]

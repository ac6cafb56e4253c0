"""The audit trail is append-only: the actor's name is kept on each row, users who acted cannot be deleted, and a
trigger refuses UPDATE and DELETE on the table (TRUNCATE, an owner's deliberate act, stays possible)."""
from django.conf import settings
from django.db import migrations, models

from core.moves import APPEND_ONLY_TRIGGER

FUNCTION = "auditevent_refuse_change"


def names_from_users(apps, schema_editor):
    schema_editor.execute(
        "UPDATE fleet_auditevent a SET actor_name = u.username FROM auth_user u WHERE u.id = a.actor_id")


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0001_auditevent_from_fleet"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        # The moves rewrite audit rows (core.moves.relabel_audit_trail): they run before the table is guarded.
        ("fleet", "0009_move_models_to_their_apps"),
        ("review", "0002_flags_and_labels_from_fleet"),
        ("governance", "0002_rollout_from_fleet"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent", name="actor_name",
            field=models.CharField(blank=True, default="", max_length=150,
                                   help_text="The actor's username when they acted; empty for the system."),
            preserve_default=False,
        ),
        migrations.RunPython(names_from_users, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditevent", name="actor",
            field=models.ForeignKey(blank=True, null=True, on_delete=models.deletion.PROTECT,
                                    to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunSQL(
            f"""
            CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the audit trail is append-only: % of audit event % refused', TG_OP, OLD.id
                    USING ERRCODE = 'insufficient_privilege';
            END $$;
            CREATE TRIGGER {APPEND_ONLY_TRIGGER} BEFORE UPDATE OR DELETE ON fleet_auditevent
                FOR EACH ROW EXECUTE FUNCTION {FUNCTION}();
            """,
            f"DROP TRIGGER {APPEND_ONLY_TRIGGER} ON fleet_auditevent; DROP FUNCTION {FUNCTION}();",
        ),
    ]

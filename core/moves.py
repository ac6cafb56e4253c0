"""Data steps for migrations that move a model from one app to another while keeping its table: the content type
follows the model, so its permissions (and every group and user holding them) and admin log entries stay attached.
Used with SeparateDatabaseAndState moves (core/0001, review/0002, governance/0002); each step runs either way."""
from __future__ import annotations


def move_content_type(apps, old_app: str, new_app: str, model: str) -> None:
    """Relabel the content type (old_app, model) as (new_app, model). Should the new one exist already, the old
    one's permissions move onto it (unless it has that codename) and the old one goes."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    old = ContentType.objects.filter(app_label=old_app, model=model).first()
    if old is None:
        return  # a database migrated before any content type was created: post_migrate creates the new one
    new = ContentType.objects.filter(app_label=new_app, model=model).first()
    if new is None:
        old.app_label = new_app
        old.save(update_fields=["app_label"])
        return
    taken = set(Permission.objects.filter(content_type=new).values_list("codename", flat=True))
    Permission.objects.filter(content_type=old).exclude(codename__in=taken).update(content_type=new)
    old.delete()


def move_permission(apps, codename: str, old: tuple[str, str], new: tuple[str, str]) -> None:
    """Attach the permission `codename` of content type `old` (app, model) to `new`, keeping its row (and so who
    holds it). Nothing to do when either is missing; when `new` already has it, the old row goes."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    source = ContentType.objects.filter(app_label=old[0], model=old[1]).first()
    target = ContentType.objects.filter(app_label=new[0], model=new[1]).first()
    if source is None or target is None:
        return
    permission = Permission.objects.filter(content_type=source, codename=codename).first()
    if permission is None:
        return
    if Permission.objects.filter(content_type=target, codename=codename).exists():
        permission.delete()
        return
    permission.content_type = target
    permission.save(update_fields=["content_type"])


def relabel_audit_trail(apps, old_label: str, new_label: str) -> None:
    """Audit rows name their object as app_label.model: rows about a moved model follow it, so the audit page's
    filters and each object's history find old and new rows under one name."""
    from django.db import connection

    AuditEvent = apps.get_model("core", "AuditEvent")
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with connection.cursor() as cursor:  # the table is append-only (core/migrations/0002): a migration may say so
        cursor.execute("SELECT 1 FROM pg_trigger WHERE tgname = %s", [APPEND_ONLY_TRIGGER])
        guarded = cursor.fetchone() is not None
        if guarded:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {APPEND_ONLY_TRIGGER}")
        AuditEvent.objects.filter(object_type=old_label).update(object_type=new_label)
        if guarded:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {APPEND_ONLY_TRIGGER}")


APPEND_ONLY_TRIGGER = "auditevent_append_only"

"""Payload archival: episode payloads older than PAYLOAD_ARCHIVE_AFTER_DAYS move from PostgreSQL to storage
(core.storage: the bucket, or the storage folder), so the table keeps summaries and recent arrays only.

Each move is copy, verify, then clear: the bytes are written under payloads/<yyyy>/<mm>/<uuid>.npz, read back and
hashed against the row's sha256, and only then is the row updated (data NULL, archive the name) in one statement
that also checks the row still holds those bytes. A crash at any point leaves either the row as it was (the object
is written again, under the same name, by the next run) or the move done. `fleet.ingest.load_arrays` reads both.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from core import storage
from fleet.models import EpisodePayload
from fleet.sim.episode_data import EpisodeDataError

log = logging.getLogger(__name__)


class ArchiveError(EpisodeDataError):
    """An archived payload is missing from storage or does not match its sha256: to its readers (replays, exports,
    the learner) a payload that cannot be read, like a corrupt one."""


def archive_name(payload: EpisodePayload) -> str:
    finished = payload.episode.finished_at
    return f"payloads/{finished:%Y/%m}/{payload.episode.uuid}.npz"


def archive_payloads(older_than: timedelta | None = None, limit: int | None = None) -> dict:
    """Move up to `limit` payloads of episodes finished before now - `older_than` to storage, oldest first.
    Returns {"archived": n, "bytes": b, "failed": f}; a payload that fails stays in PostgreSQL and is tried again."""
    older_than = timedelta(days=settings.PAYLOAD_ARCHIVE_AFTER_DAYS) if older_than is None else older_than
    limit = settings.PAYLOAD_ARCHIVE_BATCH if limit is None else limit
    cutoff = timezone.now() - older_than
    candidates = (EpisodePayload.objects.filter(data__isnull=False, episode__finished_at__lt=cutoff)
                  .select_related("episode").only("episode__uuid", "episode__finished_at", "sha256", "nbytes")
                  .order_by("episode__finished_at")[:limit])
    archived = moved = failed = 0
    for payload in candidates:
        try:
            moved += _archive_one(payload)
            archived += 1
        except Exception:  # noqa: BLE001 — storage away or the bytes wrong: this one stays, the rest go on
            failed += 1
            log.exception("could not archive the payload of episode %s", payload.episode_id)
    if archived or failed:
        log.info("archived %d episode payloads (%d bytes) to %s; %d failed", archived, moved, storage.describe(),
                 failed)
    return {"archived": archived, "bytes": moved, "failed": failed}


def _archive_one(payload: EpisodePayload) -> int:
    data = EpisodePayload.objects.filter(pk=payload.pk).values_list("data", flat=True).first()
    if data is None:
        return 0  # archived meanwhile by another run
    data = bytes(data)
    if hashlib.sha256(data).hexdigest() != payload.sha256:
        raise ArchiveError(f"the stored payload of episode {payload.episode_id} does not match its sha256; "
                           "it is left where it is")
    name = archive_name(payload)
    storage.write_bytes(name, data)  # copy
    if hashlib.sha256(storage.read_bytes(name)).hexdigest() != payload.sha256:  # verify
        raise ArchiveError(f"{name} did not read back as written; the payload stays in PostgreSQL")
    with transaction.atomic():  # clear: only if the row still holds these bytes
        cleared = EpisodePayload.objects.filter(pk=payload.pk, data__isnull=False, sha256=payload.sha256).update(
            data=None, archive=name, archived_at=timezone.now())
    return len(data) if cleared else 0


def read_archived(payload: EpisodePayload) -> bytes:
    """The archived bytes, checked against the row's sha256."""
    try:
        data = storage.read_bytes(payload.archive)
    except FileNotFoundError:
        raise ArchiveError(f"the archived payload of episode {payload.episode_id} ({payload.archive}) is missing "
                           f"from storage") from None
    if hashlib.sha256(data).hexdigest() != payload.sha256:
        raise ArchiveError(f"the archived payload of episode {payload.episode_id} ({payload.archive}) does not "
                           f"match its sha256")
    return data


@receiver(post_delete, sender=EpisodePayload, dispatch_uid="fleet.archive.delete_archived_payload")
def delete_archived_payload(sender, instance: EpisodePayload, **kwargs) -> None:
    """An episode deleted (with its payload): its archived object goes too, once the deletion commits."""
    if instance.archive:
        name = instance.archive
        transaction.on_commit(lambda: storage.delete(name))

"""Finished episodes that could not be stored yet: kept on this machine's disk until PostgreSQL takes them.

PostgreSQL is the record. An actor that finished an episode while the database was away retries for
FLEET_INGEST_RETRY_SECONDS and then keeps the episode here rather than drop it; every episode an actor runs
afterwards, and beat's `actors.drain_outbox`, store what is kept. Ingestion is idempotent by UUID, so an episode
that was stored just before its process died (and is still on disk) is stored once.

An episode is two files named by its UUID: `<uuid>.npz` (the payload, exactly as ingestion stores it) and then
`<uuid>.json` (the other fields), written under a temporary name and renamed, so a kept episode is complete or
absent. A process that stores one holds an exclusive `flock` on its `.json` (released by the kernel if the
process dies), so two actors never store the same file at once.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid as uuid_lib
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from core.outages import Outage
from fleet.ingest import ingest_episode
from fleet.sim import episode_data

log = logging.getLogger(__name__)
database_outage = Outage("PostgreSQL (episode ingestion)")
UNAVAILABLE = (OperationalError, InterfaceError)  # the database is away; anything else is the episode's own fault


def directory() -> Path:
    path = Path(settings.FLEET_OUTBOX_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep(episode: dict, evaluation_item: int | None = None) -> Path:
    """Write a finished episode (ingest_episode's keyword arguments) to the outbox. Returns its `.json` path."""
    key = str(episode["uuid"])
    folder = directory()
    payload = episode.get("payload") or episode_data.encode(episode["arrays"])
    (folder / f"{key}.npz.tmp").write_bytes(payload)
    os.replace(folder / f"{key}.npz.tmp", folder / f"{key}.npz")
    fields = {name: value for name, value in episode.items() if name not in ("arrays", "payload")}
    fields.update(uuid=key, started_at=episode["started_at"].isoformat(),
                  finished_at=episode["finished_at"].isoformat(), evaluation_item=evaluation_item)
    (folder / f"{key}.json.tmp").write_text(json.dumps(fields))
    os.replace(folder / f"{key}.json.tmp", folder / f"{key}.json")
    log.warning("kept episode %s on disk (%s) until PostgreSQL takes it", key, folder)
    return folder / f"{key}.json"


def pending() -> list[Path]:
    folder = Path(settings.FLEET_OUTBOX_DIR)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def drain() -> int:
    """Store every kept episode this process can lock; stop at the first database failure (the rest wait for the
    next drain). Returns how many were stored (or found stored already)."""
    stored = 0
    for path in pending():
        try:
            handle = open(path)
        except FileNotFoundError:
            continue  # stored by another process meanwhile
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another process is storing it
            if not path.exists():
                continue  # it stored and removed it between our listing and our lock
            try:
                _store(path, json.loads(handle.read()))
            except UNAVAILABLE as exc:
                database_outage.failed(exc, log)
                connection.close()
                break
            except Exception:
                # Unreadable or refused for good (e.g. its robot was deleted meanwhile): set aside, never retried
                # in a loop, never silently deleted.
                log.exception("kept episode %s cannot be stored; moved aside", path.stem)
                path.rename(path.with_suffix(".rejected"))
                continue
            database_outage.ok(log)
            path.unlink()
            path.with_suffix(".npz").unlink(missing_ok=True)
            stored += 1
    if stored:
        log.info("stored %d episode(s) kept on disk", stored)
    return stored


def _store(path: Path, fields: dict) -> None:
    payload = path.with_suffix(".npz").read_bytes()
    item_id = fields.pop("evaluation_item", None)
    fields.update(uuid=uuid_lib.UUID(fields["uuid"]), started_at=datetime.fromisoformat(fields["started_at"]),
                  finished_at=datetime.fromisoformat(fields["finished_at"]))
    episode, created = ingest_episode(arrays=episode_data.decode(payload, legacy=False), payload=payload, **fields)
    if created and item_id is not None:
        from governance import evaluation as governance_evaluation
        from governance.models import EvaluationItem

        item = EvaluationItem.objects.filter(pk=item_id).select_related("task").first()
        if item is not None:
            governance_evaluation.record(item, episode)

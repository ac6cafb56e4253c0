"""Checkpoints in storage (core.storage), under policies/<hex>/: config.json and model.safetensors, whose SHA-256
(config's bytes, then the weights') is the version's checkpoint_sha256. On object storage a third object, `bundle`,
holds the two back to back: robots download it through a presigned URL, with byte ranges, straight from the bucket.

Hosts read checkpoints through `local_dir`: the storage folder itself, or a local cache keyed by sha256 that is
filled once per checkpoint and verified before use. Torch-free (the web process serves checkpoints); writing a
policy imports learner.policy when asked.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from core import storage
from learner.checkpoints import CONFIG_FILE, WEIGHTS_FILE, CheckpointError

BUNDLE_FILE = "bundle"


def write(policy, path: str) -> str:
    """Save `policy` as the checkpoint `path` (a new folder name); returns its sha256."""
    from learner.policy import save_checkpoint

    local = storage.local_path(path)
    if local is not None:
        return save_checkpoint(policy, local)
    with tempfile.TemporaryDirectory(prefix="sopweb-checkpoint-") as work:
        folder = Path(work)
        sha = save_checkpoint(policy, folder)
        # The two files first, the bundle last: a reader that finds the bundle finds a whole checkpoint.
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            storage.upload(f"{path}/{name}", folder / name)
        storage.write_bytes(f"{path}/{BUNDLE_FILE}",
                            (folder / CONFIG_FILE).read_bytes() + (folder / WEIGHTS_FILE).read_bytes())
    return sha


def local_dir(path: str, sha256: str) -> Path:
    """A folder on this host holding the checkpoint `path`. CheckpointError when it is gone from storage or, fetched
    from object storage, does not match `sha256` (learner.policy.load_checkpoint checks the bytes it loads again)."""
    local = storage.local_path(path)
    if local is not None:
        return local
    root = Path(settings.STORAGE_CACHE_DIR) / "checkpoints"
    cached = root / sha256
    if (cached / CONFIG_FILE).exists() and (cached / WEIGHTS_FILE).exists():
        os.utime(cached)  # most recently used
        return cached
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{sha256[:12]}-"))
    try:
        try:
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                storage.download(f"{path}/{name}", work / name)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} is gone from storage") from None
        digest = hashlib.sha256()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            digest.update((work / name).read_bytes())
        if digest.hexdigest() != sha256:
            raise CheckpointError(f"checkpoint {path} in storage has sha256 {digest.hexdigest()[:12]}…, expected "
                                  f"{sha256[:12]}…")
        try:
            work.rename(cached)
        except OSError:  # another process of this host cached it first: theirs is as good
            if not (cached / WEIGHTS_FILE).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _trim(root)
    return cached


def _trim(root: Path) -> None:
    """Keep the newest STORAGE_CACHE_CHECKPOINTS cached checkpoints (by last use)."""
    entries = sorted((entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
                     key=lambda entry: entry.stat().st_mtime, reverse=True)
    for entry in entries[settings.STORAGE_CACHE_CHECKPOINTS:]:
        shutil.rmtree(entry, ignore_errors=True)


def read_bundle(path: str) -> bytes:
    """config.json then the weights, as robots download them; FileNotFoundError when gone."""
    return storage.read_bytes(f"{path}/{CONFIG_FILE}") + storage.read_bytes(f"{path}/{WEIGHTS_FILE}")


def sizes(path: str) -> tuple[int, int]:
    """(config bytes, bundle bytes); FileNotFoundError when gone."""
    config = storage.size(f"{path}/{CONFIG_FILE}")
    return config, config + storage.size(f"{path}/{WEIGHTS_FILE}")


def bundle_url(path: str) -> str | None:
    """A presigned URL of the bundle on object storage; None when storage is a folder."""
    return storage.signed_url(f"{path}/{BUNDLE_FILE}", content_type="application/octet-stream")


def delete(path: str) -> int:
    """Remove the checkpoint's folder; how many files went."""
    return storage.delete_folder(path)

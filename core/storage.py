"""Where sopweb keeps its files: checkpoints, replay videos, dataset exports and archived episode payloads, each
under a name such as "policies/<hex>/config.json".

Django's storage API holds them (the "default" entry of settings.STORAGES): a folder, SOPWEB_STORAGE_DIR, by
default; an S3 bucket through django-storages when STORAGE_URL=s3://bucket/prefix (AWS, MinIO, any S3-compatible
server). Names are written once and never changed in place (a new checkpoint gets a new folder), so a host may keep
what it read in a local cache keyed by content (learner.checkpoints) and browsers and robots may download straight
from the bucket through presigned URLs (`signed_url`), which keep byte ranges.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage, storages


class StorageNameError(ValueError):
    """A name that is not a plain relative path inside storage."""


def backend() -> Storage:
    return storages["default"]


def remote() -> bool:
    """True when the files live in object storage rather than in a folder of this host."""
    return not isinstance(backend(), FileSystemStorage)


def clean(name: str) -> str:
    """`name` as a relative POSIX path with no "..": storage names are written by sopweb, never by a request, but a
    corrupt row must not reach outside the storage root either."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or str(path) in ("", "."):
        raise StorageNameError(f"{name!r} is not a name inside storage")
    return str(path)


def local_path(name: str) -> Path | None:
    """The file's path on this host when storage is a folder; None for object storage."""
    if remote():
        return None
    return Path(backend().path(clean(name)))


def write_bytes(name: str, data: bytes) -> None:
    """Store `data` under `name`, replacing what was there (atomically in a folder)."""
    put(name, ContentFile(data))


def upload(name: str, source: Path) -> None:
    """Store the local file `source` under `name` (in a folder: moved there when on the same filesystem)."""
    with open(source, "rb") as handle:
        put(name, File(handle))


def move_in(name: str, source: Path) -> None:
    """Store the local file `source` under `name` and remove `source` (renamed into place in a folder on the same
    filesystem, so a large zip is not copied)."""
    target = local_path(name)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
            return
        except OSError:  # another filesystem: copied below
            pass
    upload(name, source)
    Path(source).unlink(missing_ok=True)


def put(name: str, content: File) -> None:
    name = clean(name)
    target = local_path(name)
    if target is None:
        content.seek(0)
        backend().save(name, content)  # S3Storage overwrites (file_overwrite) and never renames
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            content.seek(0)
            for chunk in content.chunks():
                out.write(chunk)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_bytes(name: str) -> bytes:
    """The stored bytes; FileNotFoundError when there is no such file."""
    name = clean(name)
    target = local_path(name)
    if target is not None:
        return target.read_bytes()
    if not backend().exists(name):
        raise FileNotFoundError(f"{name} is not in storage")
    with backend().open(name, "rb") as handle:
        return handle.read()


def download(name: str, target: Path) -> None:
    """Copy the stored file to the local path `target` (written beside it, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    name = clean(name)
    if not remote() and not local_path(name).exists() or remote() and not backend().exists(name):
        raise FileNotFoundError(f"{name} is not in storage")
    try:
        with backend().open(name, "rb") as handle, open(temporary, "wb") as out:
            while chunk := handle.read(1 << 20):
                out.write(chunk)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def exists(name: str) -> bool:
    return backend().exists(clean(name))


def size(name: str) -> int:
    """The stored file's bytes; FileNotFoundError when there is no such file."""
    name = clean(name)
    target = local_path(name)
    if target is not None:
        return target.stat().st_size
    if not backend().exists(name):
        raise FileNotFoundError(f"{name} is not in storage")
    return backend().size(name)


def delete(name: str) -> None:
    """Remove the file; nothing happens when it is not there."""
    name = clean(name)
    target = local_path(name)
    if target is not None:
        target.unlink(missing_ok=True)
    else:
        backend().delete(name)


def folders(prefix: str) -> list[str]:
    """The names of the folders directly under `prefix` ("policies" -> ["policies/ab12…", …])."""
    prefix = clean(prefix)
    try:
        directories, _ = backend().listdir(prefix)
    except FileNotFoundError:
        return []
    return [f"{prefix}/{directory}" for directory in directories]


def delete_folder(prefix: str) -> int:
    """Remove every file under the folder `prefix` (and the folder); returns how many files went."""
    import shutil

    prefix = clean(prefix)
    target = local_path(prefix)
    if target is not None:
        if target.is_symlink() or target.is_file():
            target.unlink()
            return 1
        if not target.is_dir():
            return 0
        count = sum(1 for entry in target.rglob("*") if entry.is_file())
        shutil.rmtree(target)
        return count
    store = backend()
    key = "/".join(part for part in (store.location.strip("/"), prefix) if part) + "/"
    removed = store.bucket.objects.filter(Prefix=key).delete()
    return sum(len(batch.get("Deleted", [])) for batch in removed)


def signed_url(name: str, *, filename: str | None = None, content_type: str | None = None) -> str | None:
    """A time-limited URL (STORAGE_URL_SECONDS) that fetches the file straight from object storage, byte ranges
    included; None when storage is a folder (the caller serves the file itself). `filename` makes a browser save
    it under that name."""
    if not remote():
        return None
    parameters = {}
    if filename:
        parameters["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    if content_type:
        parameters["ResponseContentType"] = content_type
    return backend().url(clean(name), parameters=parameters or None, expire=int(settings.STORAGE_URL_SECONDS))


def describe() -> str:
    """Where files go, for logs and `manage.py check`, without credentials."""
    if not remote():
        return str(settings.STORAGE_DIR)
    store = backend()
    return f"s3://{store.bucket_name}/{store.location}".rstrip("/") + (
        f" at {settings.STORAGE_ENDPOINT_URL}" if settings.STORAGE_ENDPOINT_URL else "")

"""The robot API over HTTP (httpx): every call a robot makes, with the retries a flaky network needs."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class Refused(Exception):
    """The server answered with a 4xx that retrying will not change (the upload is wrong, the token revoked)."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


class Unreachable(Exception):
    """No answer, or one that says try later (5xx, 429): the work waits and is tried again."""


class Api:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout)
        # Checkpoints on object storage come from a presigned URL of another origin: never with our token.
        self.storage = httpx.Client(timeout=timeout)
        self.robot_id: int | None = None

    def close(self) -> None:
        self.http.close()
        self.storage.close()

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{method} {path}: {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise Unreachable(f"{method} {path}: {response.status_code}")
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": "http", "detail": response.text[:200]}
            raise Refused(response.status_code, body.get("error", "http"), body.get("detail", ""))
        return response

    def whoami(self) -> dict:
        me = self._call("GET", "/api/v1/whoami").json()
        self.robot_id = me["id"]
        return me

    def assignment(self) -> dict:
        return self._call("GET", f"/api/v1/robots/{self.robot_id}/assignment").json()

    def heartbeat(self, status: str, **progress) -> dict:
        beat = {"status": status, **progress}
        return self._call("POST", f"/api/v1/robots/{self.robot_id}/heartbeat", json=beat).json()

    def next_episode(self) -> dict:
        return self._call("POST", f"/api/v1/robots/{self.robot_id}/episodes/next").json()

    def release_item(self, item: int) -> None:
        self._call("POST", f"/api/v1/robots/{self.robot_id}/evaluation-items/{item}/release")

    def put_episode(self, key: str, params: dict, body: bytes) -> dict:
        return self._call("PUT", f"/api/v1/episodes/{key}", params=params, content=body,
                          headers={"Content-Type": "application/octet-stream"}).json()

    def download(self, version: dict, into: Path) -> bytes:
        """The version's checkpoint bundle, verified against its sha256. A partial file in `into` is resumed with a
        Range request (If-Range: the server sends it whole if the checkpoint is not the one partly fetched). A URL of
        another origin (a presigned object-storage URL) is fetched without the robot's token; its object never
        changes, so a plain Range resumes it and the sha256 check catches anything else."""
        into.parent.mkdir(parents=True, exist_ok=True)
        final, partial = into, into.with_suffix(".part")
        if final.exists() and hashlib.sha256(final.read_bytes()).hexdigest() == version["sha256"]:
            return final.read_bytes()
        have = partial.stat().st_size if partial.exists() else 0
        url = httpx.URL(version["url"])
        ours = not url.is_absolute_url or url.netloc == self.http.base_url.netloc
        log.info("downloading v%d (%d bytes) from %s%s", version["number"], version.get("size", 0),
                 "sopweb" if ours else f"object storage at {url.host}", f", resuming at byte {have}" if have else "")
        headers = {"Range": f"bytes={have}-"} if have else {}
        if have and ours:
            headers["If-Range"] = f'"{version["sha256"]}"'
        try:
            with (self.http if ours else self.storage).stream("GET", url, headers=headers) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise Unreachable(f"downloading v{version['number']}: {response.status_code}")
                if response.status_code >= 400 and response.status_code != 416:
                    raise Refused(response.status_code, "download", f"checkpoint v{version['number']}")
                mode = "ab" if response.status_code == 206 else "wb"
                if response.status_code == 416:
                    mode, have = "wb", 0
                with open(partial, mode) as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise Unreachable(f"downloading v{version['number']}: {exc}") from None
        data = partial.read_bytes()
        if hashlib.sha256(data).hexdigest() != version["sha256"]:
            partial.unlink()
            raise Unreachable(f"v{version['number']} did not match its sha256; it is fetched again")
        partial.replace(final)
        return data

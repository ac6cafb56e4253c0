"""Finished episodes on local disk until the server has them: an upload that fails for want of a network is kept
and sent again, with the same UUID (so the server stores it once), oldest first."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from robot_client.api import Api, Refused, Unreachable

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, directory: Path):
        self.directory = directory
        self.rejected = directory / "rejected"
        self.directory.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, params: dict, payload: bytes) -> None:
        """Keep the episode (written whole, then renamed: a crash leaves no half episode)."""
        for suffix, data in ((".npz", payload), (".json", json.dumps(params).encode())):
            temporary = self.directory / f"{key}{suffix}.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, self.directory / f"{key}{suffix}")

    def pending(self) -> list[str]:
        entries = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        return [p.stem for p in entries if (self.directory / f"{p.stem}.npz").exists()]

    def drain(self, api: Api) -> int:
        """Send what is kept, oldest first; stop at the first failure of the network. Returns how many went."""
        sent = 0
        for key in self.pending():
            params = json.loads((self.directory / f"{key}.json").read_text())
            try:
                api.put_episode(key, params, (self.directory / f"{key}.npz").read_bytes())
            except Unreachable as exc:
                log.info("keeping %d episode(s) until the server answers: %s", len(self.pending()), exc)
                break
            except Refused as exc:  # it will never be accepted: set aside, with the reason, and go on
                if exc.status == 401:
                    raise  # the token, not the episode: the robot stops, the episode stays for a new token
                log.error("episode %s refused: %s", key, exc)
                self.rejected.mkdir(exist_ok=True)
                for suffix in (".npz", ".json"):
                    os.replace(self.directory / f"{key}{suffix}", self.rejected / f"{key}{suffix}")
                (self.rejected / f"{key}.reason").write_text(str(exc))
                if params.get("item") is not None:  # its evaluation item goes back, or it would be handed again
                    try:
                        api.release_item(int(params["item"]))
                    except (Unreachable, Refused):
                        pass  # the server takes it back at the claim's timeout
                continue
            for suffix in (".npz", ".json"):
                (self.directory / f"{key}{suffix}").unlink()
            sent += 1
        return sent

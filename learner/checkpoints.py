"""A checkpoint on storage: a directory with the policy's config (JSON) and weights (safetensors), and its
SHA-256 over the config's bytes then the weights'. Torch-free, so the web process can serve checkpoints
(gateway) and check them without loading a model (learner.policy loads them)."""
from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its recorded checksum."""


def checkpoint_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            digest.update((directory / name).read_bytes())
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {directory} has no {name}") from None
    return digest.hexdigest()

"""The policy a checkpoint bundle holds, run with numpy alone (no torch on the robot).

A bundle is config.json followed by the weights in safetensors format: an 8-byte little-endian header length, a
JSON header naming each tensor's dtype, shape and byte range, then the bytes. The network is sopweb's multi-task
MLP (learner/policy.py): normalised observation and task one-hot (and, for RECAP, a positive indicator one-hot)
through ReLU layers to a tanh output, averaged over the ensemble's members.
"""
from __future__ import annotations

import json
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}
INDICATOR_POSITIVE = 1


class PolicyError(ValueError):
    pass


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    if len(data) < 8:
        raise PolicyError("the weights are truncated")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise PolicyError("the weights' header is truncated")
    header = json.loads(data[8:8 + length])
    body = memoryview(data)[8 + length:]
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(spec["dtype"])
        if dtype is None:
            raise PolicyError(f"unsupported dtype {spec['dtype']} for {name}")
        start, end = spec["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(spec["shape"]).astype(np.float32)
    return tensors


class NumpyPolicy:
    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        if config.get("kind") != "mlp":
            raise PolicyError(f"unknown policy kind {config.get('kind')!r}")
        self.config, self.tasks = config, {name: i for i, name in enumerate(config["tasks"])}
        self.mean, self.std = weights["obs_mean"], weights["obs_std"]
        self.members = []
        for member in range(config.get("ensemble", 1)):
            layers = []
            for index in range(0, 2 * (len(config["hidden"]) + 1), 2):
                layers.append((weights[f"nets.{member}.{index}.weight"], weights[f"nets.{member}.{index}.bias"]))
            self.members.append(layers)

    @classmethod
    def from_bundle(cls, bundle: bytes, config_size: int) -> NumpyPolicy:
        try:
            return cls(json.loads(bundle[:config_size]), read_safetensors(bundle[config_size:]))
        except (KeyError, ValueError, TypeError) as exc:
            raise PolicyError(f"the checkpoint cannot be loaded: {exc}") from None

    def _features(self, obs: np.ndarray, task: str) -> np.ndarray:
        one_hot = np.zeros(len(self.tasks), np.float32)
        one_hot[self.tasks[task]] = 1.0
        parts = [(np.asarray(obs, np.float32) - self.mean) / self.std, one_hot]
        if self.config.get("indicator"):
            indicator = np.zeros(3, np.float32)
            indicator[INDICATOR_POSITIVE] = 1.0
            parts.append(indicator)
        return np.concatenate(parts)

    def predictions(self, obs: np.ndarray, task: str) -> np.ndarray:
        if task not in self.tasks:
            raise KeyError(f"this policy was not trained on task {task!r}")
        features, outputs = self._features(obs, task), []
        for layers in self.members:
            h = features
            for i, (weight, bias) in enumerate(layers):
                h = weight @ h + bias
                if i < len(layers) - 1:
                    h = np.maximum(h, 0.0)
            outputs.append(np.tanh(h))
        return np.stack(outputs)

    def select_action(self, obs: np.ndarray, task: str) -> np.ndarray:
        return self.predictions(obs, task).mean(axis=0).astype(np.float32)

    def doubt(self, obs: np.ndarray, task: str) -> float:
        if len(self.members) == 1:
            return 0.0
        return float(np.linalg.norm(self.predictions(obs, task).var(axis=0)))

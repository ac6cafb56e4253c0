"""Load a dataset this product exported with the real `lerobot` package (run by `make check-lerobot` in its own
virtualenv, var/lerobot-venv: lerobot pins a torch of its own). Prints what it found as one JSON line.

    var/lerobot-venv/bin/python bin/lerobot-check.py DATASET_DIR

Offline: HF_HUB_OFFLINE=1, so a metadata file the loader cannot find locally is an error, not a Hub download.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(root: str) -> dict:
    import lerobot
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/sopweb-export", root=root)
    item = dataset[len(dataset) - 1]
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True, num_workers=0)
    batch = next(iter(loader))
    return {
        "lerobot": lerobot.__version__, "torch": torch.__version__,
        "codebase_version": dataset.meta.info["codebase_version"],
        "len": len(dataset), "num_episodes": dataset.num_episodes, "num_frames": dataset.num_frames,
        "fps": dataset.fps,
        "item_keys": sorted(item),
        "item_action": item["action"].tolist(), "item_action_shape": list(item["action"].shape), "item_action_dtype": str(item["action"].dtype),
        "item_state_shape": list(item["observation.state"].shape), "item_task": item["task"],
        "item_episode_index": int(item["episode_index"]), "item_frame_index": int(item["frame_index"]),
        "batch_action_shape": list(batch["action"].shape),
        "batch_state_shape": list(batch["observation.state"].shape),
        "stats_keys": sorted(dataset.meta.stats["action"]) if dataset.meta.stats else [],
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: lerobot-check.py DATASET_DIR")
    print(json.dumps(main(sys.argv[1])))

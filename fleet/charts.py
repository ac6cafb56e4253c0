"""The data the episode charts draw (static/js/episode_charts.js), for the episode page and the review page."""
from __future__ import annotations

from fleet.models import Episode
from fleet.sim.envs import CONTROL_DT


def episode_series(row: Episode, arrays: dict) -> dict:
    """What static/js/episode_charts.js draws (the episode page and the review page)."""
    return {
        "action": arrays["action"].round(4).T.tolist(),
        "expert_action": arrays["expert_action"].round(4).T.tolist(),
        "reward": arrays["reward"].round(4).tolist(),
        "success": arrays["success"].astype(int).tolist(),
        "segments": list(row.interventions.values("start_step", "end_step", "source")),
        "dt": CONTROL_DT,
    }

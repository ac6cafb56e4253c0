"""The canary check: while a canary runs, compare it with the deployed version and roll it back automatically
when it is worse beyond the margin (any mode: it protects the fleet)."""
from __future__ import annotations

import logging

from core.audit import IllegalTransition
from core.events import broadcast
from governance.analysis import canary_analysis
from governance.decisions import active_canary, roll_back_automatically

log = logging.getLogger(__name__)


def check_canaries() -> dict:
    """Returns {version number: verdict}; pushes the figures to the dashboards."""
    rollout = active_canary()  # approve_canary allows one at a time
    if rollout is None:
        return {}
    analysis = canary_analysis(rollout)
    broadcast("canary.analysis", analysis)
    if analysis["verdict"] == "worse":
        try:
            roll_back_automatically(rollout, analysis)
        except IllegalTransition as exc:  # promoted or rolled back by a supervisor in the meantime
            log.info("canary check: %s", exc)
            return {rollout.version.number: "decided meanwhile"}
        log.warning("rolled back the canary of %s automatically: %s", rollout.version, analysis["overall"],
                    extra={"version": rollout.version.number})
    return {rollout.version.number: analysis["verdict"]}

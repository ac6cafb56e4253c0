"""Celery tasks of rollout governance (queue `default`)."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="governance.finish_evaluations", soft_time_limit=60, time_limit=90)
def finish_evaluations() -> int:
    """Finish the evaluations whose episodes are all in (queued by the robot that ran the last one)."""
    from governance.evaluation import finish_complete

    return len(finish_complete())


@shared_task(name="governance.check", soft_time_limit=60, time_limit=90)
def check() -> dict:
    """Beat, every GOVERNANCE_CHECK_SECONDS: finished evaluations, the canary analysis (with its automatic
    rollback) and the nomination rule. Each step is idempotent, so an overlapping or repeated run is harmless."""
    from governance.canary import check_canaries
    from governance.evaluation import finish_complete
    from governance.rules import nominate_newest

    finished = finish_complete()
    verdicts = check_canaries()
    nominated = nominate_newest()
    return {"finished": [e.candidate.number for e in finished], "canaries": verdicts,
            "nominated": nominated.number if nominated else None}

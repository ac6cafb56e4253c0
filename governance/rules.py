"""Which versions reach robots without a person deciding each one (ROLLOUT_MODE, settings.py):

- manual: none; every step after publication is a supervisor's decision.
- rules: the newest checkpoint is nominated every GOVERNANCE_NOMINATE_EVERY_MINUTES (and so evaluated), and a
  candidate whose evaluation is not worse than the deployed version's by more than GOVERNANCE_AUTO_CANARY_MARGIN
  goes to a canary of GOVERNANCE_CANARY_SHARE of the robots. Promotion stays a person's decision.
- continuous: SOP's own mode — every published version goes straight to the whole fleet.

The automatic canary rollback is not a rule: it protects the fleet in every mode.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core.audit import IllegalTransition
from core.models import AuditEvent
from learner.models import PolicyVersion

log = logging.getLogger(__name__)
State = PolicyVersion.State
# A version in one of these states is still on its way: the nomination rule waits for it to be decided.
IN_PROGRESS = (State.CANDIDATE, State.EVALUATING, State.AWAITING_APPROVAL, State.CANARY)


def summary() -> dict:
    """The mode and the rules in force, in words, for every page's header."""
    mode = settings.ROLLOUT_MODE
    rules = []
    if mode == "continuous":
        rules.append("every published version goes straight to the whole fleet")
    elif mode == "rules":
        if settings.GOVERNANCE_NOMINATE_EVERY_MINUTES > 0:
            rules.append(f"the newest checkpoint is nominated and evaluated every "
                         f"{settings.GOVERNANCE_NOMINATE_EVERY_MINUTES:g} min")
        if settings.GOVERNANCE_AUTO_CANARY_MARGIN is not None:
            rules.append(f"a candidate no worse than the deployed version by more than "
                         f"{settings.GOVERNANCE_AUTO_CANARY_MARGIN:.0%} in evaluation goes to a canary of "
                         f"{settings.GOVERNANCE_CANARY_SHARE:.0%} of the robots")
    return {"mode": mode, "rules": rules}


def version_published(sender, version: PolicyVersion, deploy: bool | None = None, reason: str = "",
                      **kwargs) -> None:
    """A version was published (learner.signals.version_published): the whole fleet runs it now if its publisher
    asks for that, or, when the publisher leaves it to the rollout mode, in continuous mode."""
    from governance.decisions import deploy_to_fleet

    if deploy:
        deploy_to_fleet(version, reason=reason)
    elif deploy is None and settings.ROLLOUT_MODE == "continuous":
        deploy_to_fleet(version, reason=f"continuous mode: learner run {version.config.get('run')} "
                                        f"step {version.config.get('step')}")


def nominate_newest(now=None) -> PolicyVersion | None:
    """The nomination rule: at most one version in progress at a time, one nomination per K minutes."""
    from governance.decisions import deployed_version, nominate

    every = settings.GOVERNANCE_NOMINATE_EVERY_MINUTES
    if settings.ROLLOUT_MODE != "rules" or every <= 0:
        return None
    now = now or timezone.now()
    last = AuditEvent.objects.filter(verb="version.nominate").order_by("-created_at").first()
    if last is not None and last.created_at > now - timedelta(minutes=every):
        return None
    if PolicyVersion.objects.filter(state__in=IN_PROGRESS).exists():
        return None
    newest = PolicyVersion.objects.filter(state=State.CHECKPOINT).order_by("-number").first()
    deployed = deployed_version()
    if newest is None or (deployed is not None and newest.number < deployed.number):
        return None
    try:
        return nominate(newest, None, reason=f"rule: the newest checkpoint, nominated every {every:g} min")
    except IllegalTransition as exc:
        log.info("nomination rule: %s", exc)
        return None


def after_evaluation(evaluation, figures: dict) -> None:
    """The auto-canary rule, once an evaluation has finished."""
    from governance.decisions import approve_canary

    margin = settings.GOVERNANCE_AUTO_CANARY_MARGIN
    if settings.ROLLOUT_MODE != "rules" or margin is None or figures["overall"].get("deployed") is None:
        return
    cand, dep = figures["overall"]["candidate"], figures["overall"]["deployed"]
    if cand["rate"] is None or dep["rate"] is None or cand["rate"] < dep["rate"] - margin:
        log.info("auto-canary rule: %s stays awaiting approval (%s vs %s)", evaluation.candidate, cand["rate"],
                 dep["rate"])
        return
    try:
        approve_canary(evaluation.candidate, None, share=settings.GOVERNANCE_CANARY_SHARE, reason=(
            f"rule: evaluation {cand['rate']:.0%} vs the deployed v{figures['deployed']}'s {dep['rate']:.0%}, "
            f"within the margin {margin:.0%}"))
    except IllegalTransition as exc:
        log.warning("auto-canary rule could not start a canary of %s: %s", evaluation.candidate, exc)

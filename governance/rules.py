"""Which versions reach robots without a person deciding each one: the rollout mode (governance.mode: set by
supervisors on the Rollouts page, seeded by ROLLOUT_MODE):

- manual: none; every step after publication is a supervisor's decision.
- rules: the newest checkpoint is nominated every GOVERNANCE_NOMINATE_EVERY_MINUTES (and so evaluated), and a
  candidate whose evaluation is not worse than the deployed version's by more than GOVERNANCE_AUTO_CANARY_MARGIN
  goes to a canary of GOVERNANCE_CANARY_SHARE of the robots. Promotion stays a person's decision.
- continuous: SOP's own mode — every published version goes straight to the whole fleet.

The automatic canary rollback is not a rule: it protects the fleet in every mode, frozen or not. While deployments
are frozen no rule deploys, approves a canary or nominates.

Each rule reads the cached mode to decide whether to try at all, then, under the rollout lock, the row itself
(mode.fresh()) before it acts: a mode switched or a freeze committed a moment ago is always obeyed.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.audit import IllegalTransition
from core.locks import rollout_lock
from core.models import AuditEvent
from governance import mode as rollout_mode
from learner.models import PolicyVersion

log = logging.getLogger(__name__)
State = PolicyVersion.State
# A version in one of these states is still on its way: the nomination rule waits for it to be decided.
IN_PROGRESS = (State.CANDIDATE, State.EVALUATING, State.AWAITING_APPROVAL, State.CANARY)


def summary(state: rollout_mode.Mode | None = None) -> dict:
    """The mode, the freeze and the rules in force, in words, for every page's header (the cached mode unless
    `state` is given)."""
    state = state or rollout_mode.current()
    mode = state.mode
    rules = []
    if state.frozen:
        pass  # no rule acts while frozen; the banner says so
    elif mode == "continuous":
        rules.append("every published version goes straight to the whole fleet")
    elif mode == "rules":
        if settings.GOVERNANCE_NOMINATE_EVERY_MINUTES > 0:
            rules.append(f"the newest checkpoint is nominated and evaluated every "
                         f"{settings.GOVERNANCE_NOMINATE_EVERY_MINUTES:g} min")
        if settings.GOVERNANCE_AUTO_CANARY_MARGIN is not None:
            rules.append(f"a candidate no worse than the deployed version by more than "
                         f"{settings.GOVERNANCE_AUTO_CANARY_MARGIN:.0%} in evaluation goes to a canary of "
                         f"{settings.GOVERNANCE_CANARY_SHARE:.0%} of the robots")
    return {"mode": mode, "rules": rules, "frozen": state.frozen, "state": state}


def _still(mode: str) -> bool:
    """Under the rollout lock: the row (not this process's copy) says `mode` and nothing is frozen."""
    rollout_lock()
    state = rollout_mode.fresh()
    return state.mode == mode and not state.frozen


def version_published(sender, version: PolicyVersion, deploy: bool | None = None, reason: str = "",
                      **kwargs) -> None:
    """A version was published (learner.signals.version_published): the whole fleet runs it now if its publisher
    asks for that, or, when the publisher leaves it to the rollout mode, in continuous mode."""
    from governance.decisions import deploy_to_fleet

    if deploy:
        deploy_to_fleet(version, reason=reason)  # refused (IllegalTransition) while deployments are frozen
    elif deploy is None and rollout_mode.current().deploys_continuously:
        with transaction.atomic():
            if not _still("continuous"):
                log.info("continuous mode: %s not deployed, the mode changed or deployments froze", version)
                return
            deploy_to_fleet(version, reason=f"continuous mode: learner run {version.config.get('run')} "
                                            f"step {version.config.get('step')}")


def nominate_newest(now=None) -> PolicyVersion | None:
    """The nomination rule: at most one version in progress at a time, one nomination per K minutes."""
    from governance.decisions import deployed_version, nominate

    every = settings.GOVERNANCE_NOMINATE_EVERY_MINUTES
    state = rollout_mode.current()
    if state.mode != "rules" or state.frozen or every <= 0:
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
        with transaction.atomic():
            if not _still("rules"):
                return None
            return nominate(newest, None, reason=f"rule: the newest checkpoint, nominated every {every:g} min")
    except IllegalTransition as exc:
        log.info("nomination rule: %s", exc)
        return None


def after_evaluation(evaluation, figures: dict) -> None:
    """The auto-canary rule, once an evaluation has finished."""
    from governance.decisions import approve_canary

    margin = settings.GOVERNANCE_AUTO_CANARY_MARGIN
    if rollout_mode.current().mode != "rules" or margin is None or figures["overall"].get("deployed") is None:
        return
    cand, dep = figures["overall"]["candidate"], figures["overall"]["deployed"]
    if cand["rate"] is None or dep["rate"] is None or cand["rate"] < dep["rate"] - margin:
        log.info("auto-canary rule: %s stays awaiting approval (%s vs %s)", evaluation.candidate, cand["rate"],
                 dep["rate"])
        return
    try:
        with transaction.atomic():
            if not _still("rules"):
                return
            approve_canary(evaluation.candidate, None, share=settings.GOVERNANCE_CANARY_SHARE, reason=(
                f"rule: evaluation {cand['rate']:.0%} vs the deployed v{figures['deployed']}'s {dep['rate']:.0%}, "
                f"within the margin {margin:.0%}"))
    except IllegalTransition as exc:
        log.warning("auto-canary rule could not start a canary of %s: %s", evaluation.candidate, exc)

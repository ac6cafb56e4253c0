"""What the learner tells the apps above it, without knowing them (governance receives these: governance/apps.py)."""
from __future__ import annotations

import django.dispatch

# Sent after a version's row is committed. kwargs: version; deploy — None: the rollout mode decides what happens
# next (the learner's own publications), True: the publisher asks for it to run on the whole fleet now (a base
# policy), False: it only waits for a person; reason — the words for the audit trail when it is deployed.
version_published = django.dispatch.Signal()

# Sent by retention (learner.retention) under the rollout lock before it deletes checkpoints. kwargs: keep_fleet —
# how many earlier fleet versions to keep for a roll back. Each receiver returns the ids of the versions whose
# checkpoints it still needs.
checkpoints_needed = django.dispatch.Signal()

"""The learner's defaults, in one place: LearnerConfig's field defaults and the LEARNER_* settings' defaults both
come from here. Plain values, no torch: settings.py reads them in every process."""
from __future__ import annotations

ALGORITHMS = ("bc", "hg_dagger", "recap")  # the plug-ins of learner/algorithms/
ALGORITHM = "hg_dagger"
BATCH_SIZE = 256
LR = 3e-4
PUBLISH_EVERY = 5000
RESAMPLER_ALPHA = 1.5
# How the resampler's losses enter SOP's formula: "raw" (the seed's, as written) or "normalised" (each task's two
# mean losses divided by their average first, so the share follows their ratio, not their scale).
RESAMPLER_SCALES = ("raw", "normalised")
RESAMPLER_SCALE = "raw"
RECAP_VALUE_STEPS = 2000
STEPS_PER_ROBOT_SECOND = 0.0  # 0: the learner trains as fast as it can (the controlled clock is for experiments)

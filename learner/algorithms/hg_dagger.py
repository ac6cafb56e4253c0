"""HG-DAgger (ALGORITHMS.md §2): aggregate only the frames where the expert was in control — the gate's, an
operator's or an annotator's corrections — on top of the offline demonstrations."""
from __future__ import annotations

from learner.algorithms import bc


class Algorithm(bc.Algorithm):
    def frames(self, task: str, source: str, arrays: dict, max_steps: int):
        if source == "offline":
            return super().frames(task, source, arrays, max_steps)
        expert = arrays["intervention"]
        if not expert.any():
            return None
        # On expert frames the executed action *is* the expert's action: the label HG-DAgger aggregates.
        return expert, arrays["action"][expert], 0

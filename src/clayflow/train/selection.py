r"""Model selection on the validation rows: which step's weights a run reports.

The untrained flow (step 0, the fitted start of ``clayflow.models.start`` for tables) is the
first candidate. Training replaces it only when validation says so beyond its noise: with
per-row log-likelihood gains ``d_i = log p_step(x_i) - log p_start(x_i)`` over the n
validation rows, the first trained step to be chosen must satisfy

    mean(d) > MARGIN * std(d) / sqrt(n),

so on 18 validation rows a model that is better by luck is not chosen over the Gaussian it
started from (on thousands of rows the margin is negligible; with fewer than 2 rows the
start is kept). From then on, a step replaces the best so far when its validation NLL is
lower. Without the start's log-likelihoods (a checkpoint of an older clayflow, or a run
resumed from one) the lowest validation NLL is chosen.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

MARGIN = 2.0  # standard errors of the paired gain over the start


class BestModel:
    """The best validation step so far (``step`` None until a candidate was seen)."""

    def __init__(self) -> None:
        self.val_nll, self.step = math.inf, None
        self.start_log_probs: Tensor | None = None  # per validation row, float64

    def consider(self, step: int, log_probs: Tensor) -> bool:
        """Whether the weights of ``step``, with validation log-likelihoods ``log_probs``
        ``(n,)``, are the new best; if so they are recorded as such."""
        val_nll = -log_probs.mean().item()
        if step == 0 and self.start_log_probs is None:
            self.start_log_probs = log_probs.double().cpu()
        elif self.step == 0 and not self.beats_start(log_probs):  # the start is still the best
            return False
        if val_nll < self.val_nll:
            self.val_nll, self.step = val_nll, step
            return True
        return False

    def beats_start(self, log_probs: Tensor) -> bool:
        """Whether ``log_probs`` beat the start's by more than ``MARGIN`` standard errors."""
        if self.start_log_probs is None:
            return True
        gains = log_probs.double().cpu() - self.start_log_probs
        if len(gains) < 2:
            return False
        return bool(gains.mean() > MARGIN * gains.std() / math.sqrt(len(gains)))

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_nll": self.val_nll, "best_step": self.step, "start_val_log_probs": self.start_log_probs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.val_nll, self.step = state["best_val_nll"], state["best_step"]
        self.start_log_probs = state.get("start_val_log_probs")

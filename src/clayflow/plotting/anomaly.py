"""The ROC curve of an anomaly score on labelled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clayflow.plotting.plots import plt, save_figure


def plot_roc(path: str, false_positive: np.ndarray, true_positive: np.ndarray, auroc: float, method: str) -> Path:
    """Draw the ROC curve (detection rate against false-alarm rate) to ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(false_positive, true_positive, color="tab:blue", label=f"{method} score, AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="false-alarm rate (normal rows flagged)", ylabel="detection rate (anomalies flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, Path(path))

"""``tabular.png``: a panel per dataset, a bar per estimator.

Bars are the mean test log-likelihood minus the full-covariance Gaussian's on that dataset
(so 0 is "no better than a Gaussian" and panels of very different scales read alike), with
± one standard error over seeds; each bar is labelled with the log-likelihood itself. A panel
where a bar passes 10 nats uses a symlog axis so one failing flow does not hide the rest.
"""

from __future__ import annotations

import math
from pathlib import Path

from .flows import FLOWS

COLUMNS = 5
BASELINE_COLORS = {"gaussian": "0.6", "gmm": "0.4", "gmm_bic": "0.3", "kde": "0.8"}


def plot(path: Path, scores: dict, datasets: list[str], estimators: list[str]) -> None:
    """``scores``: (dataset, estimator) -> (mean, standard error) of the test log-likelihood."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {**BASELINE_COLORS, **{e: plt.get_cmap("tab10")(i) for i, e in enumerate(FLOWS)}}
    columns = min(COLUMNS, len(datasets))
    rows = math.ceil(len(datasets) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(max(7.0, 3.4 * columns), 3.2 * rows + 0.6), squeeze=False
    )
    for ax, d in zip(axes.flat, datasets):
        base = scores.get((d, "gaussian"), (math.nan, math.nan))[0]
        base = base if math.isfinite(base) else 0.0
        names = [e for e in estimators if (d, e) in scores]
        means = [scores[d, e][0] for e in names]
        heights = [m - base if math.isfinite(m) else 0.0 for m in means]
        errors = [s if math.isfinite(s) else 0.0 for _, s in (scores[d, e] for e in names)]
        xs = list(range(len(names)))
        ax.bar(
            xs,
            heights,
            yerr=errors if any(errors) else None,
            capsize=3,
            color=[colors.get(e, "C9") for e in names],
        )
        for x, h, m in zip(xs, heights, means):
            label = f"{m:.2f}" if math.isfinite(m) else "failed"
            ax.annotate(
                label, (x, h), ha="center", va="bottom" if h >= 0 else "top", fontsize=7,
                xytext=(0, 2 if h >= 0 else -2), textcoords="offset points",
            )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        if max(map(abs, heights), default=0) > 10:
            ax.set_yscale("symlog", linthresh=1.0)
        else:
            ax.margins(y=0.2)
        ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{d} (Gaussian {base:.2f})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test LL − Gaussian's (nats/row)", fontsize=8)
    fig.suptitle(
        "Mean test log-likelihood minus the full-covariance Gaussian's, ± s.e. over seeds\n"
        "(bar labels: the log-likelihood in nats per row; higher is better)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

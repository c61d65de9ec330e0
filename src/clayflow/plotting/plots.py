"""Figures of a run, written as PNG files with matplotlib's Agg backend (no display needed).

* ``loss.png``: train and validation NLL against the step;
* 2D data: ``samples.png`` (data beside model samples) and ``density.png`` (model density
  heat-map with the data overlaid); for a CNF also ``trajectories.png``;
* more dimensions: ``marginals.png`` (per-column histograms, data vs model) and
  ``pairs.png`` (pairwise scatter of the first columns);
* images: ``samples.png``, ``data.png`` and ``reconstructions.png`` (see ``images.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from clayflow.core import Flow
from clayflow.diagnostics import grid_log_prob
from clayflow.files import atomic_write
from clayflow.train.run import read_metrics
from clayflow.transforms import CNF

SAMPLES = 5000


def plot_run(
    run_dir: Path,
    flow: Flow,
    data_x: torch.Tensor,
    columns: list[str] | None = None,
    levels: int | None = None,
) -> list[Path]:
    """Write every figure that applies into ``run_dir/plots``; return their paths.

    ``data_x`` is held-out data, ``(N, D)``, or images ``(N, C, H, W)`` with ``levels``
    intensity levels, to compare the model's samples with.
    """
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    metrics = read_metrics(Path(run_dir) / "metrics.csv")
    if metrics:
        paths.append(plot_losses(metrics, out / "loss.png"))
    if levels is not None:
        from clayflow.plotting.images import plot_image_run

        return paths + plot_image_run(run_dir, flow, data_x, levels)
    data = data_x[:SAMPLES].numpy()
    samples = flow.sample(len(data)).cpu().numpy()
    if data.shape[1] == 2:
        paths.append(plot_samples_2d(data, samples, out / "samples.png"))
        paths.append(plot_density_2d(flow, data, out / "density.png"))
        cnfs = [t for t in flow.transform if isinstance(t, CNF)]
        if len(cnfs) == 1 and flow.transform[len(flow.transform) - 1] is cnfs[0]:
            paths.append(plot_trajectories_2d(flow, cnfs[0], out / "trajectories.png"))
    else:
        paths.append(plot_marginals(data, samples, out / "marginals.png", columns))
        paths.append(plot_pairs(data, samples, out / "pairs.png", columns))
    return paths


def plot_losses(metrics: list[dict[str, str]], path: Path) -> Path:
    """Train and validation NLL against the step; for flow matching (no train NLL) the
    flow-matching loss on a second axis. The step-0 row (the fitted start, before any
    training step) has a train NLL but no flow-matching loss."""
    steps = [int(row["step"]) for row in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    if all(row.get("train_nll") for row in metrics):
        ax.plot(steps, [float(row["train_nll"]) for row in metrics], label="train")
    else:
        trained = [row for row in metrics if row.get("train_loss")]
        loss_ax = ax.twinx()
        loss_ax.plot([int(row["step"]) for row in trained], [float(row["train_loss"]) for row in trained],
                     color="C2", label="train loss")  # fmt: skip
        loss_ax.set_ylabel("flow-matching loss")
        loss_ax.legend(loc="upper center")
    ax.plot(steps, [float(row["val_nll"]) for row in metrics], color="C1", label="validation")
    ax.set(xlabel="step", ylabel="NLL (nats / example)", title="Negative log-likelihood")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_samples_2d(data: np.ndarray, samples: np.ndarray, path: Path) -> Path:
    """Data beside model samples, on the same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    lo, hi = _bounds(data)
    for ax, points, title in ((axes[0], data, "data"), (axes[1], samples, "model samples")):
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
        ax.set(title=title, xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal")
    return save_figure(fig, path)


def plot_density_2d(flow: Flow, data: np.ndarray, path: Path, resolution: int = 300) -> Path:
    """Heat-map of the model density p(x) with 1000 data points on top."""
    lo, hi = _bounds(data)
    _, _, log_prob = grid_log_prob(flow, (lo[0], hi[0], lo[1], hi[1]), resolution)
    fig, ax = plt.subplots(figsize=(6, 6))
    image = ax.imshow(
        log_prob.exp().numpy(),
        origin="lower",
        extent=(lo[0], hi[0], lo[1], hi[1]),
        cmap="magma",
        aspect="equal",
    )
    ax.scatter(data[:1000, 0], data[:1000, 1], s=0.5, c="cyan", alpha=0.5, label="data")
    fig.colorbar(image, ax=ax, label="p(x)", fraction=0.046)
    ax.set(title="model density")
    ax.legend(loc="upper right", markerscale=8)
    return save_figure(fig, path)


@torch.no_grad()
def plot_trajectories_2d(flow: Flow, cnf: CNF, path: Path, n: int = 2000, steps: int = 6) -> Path:
    """Base samples carried by the CNF from t = T (latent) to t = 0 (data), one panel per time,
    mapped to data units through the transforms before the CNF (e.g. standardisation)."""
    times, states = cnf.trajectory(flow.base.sample(n), steps)
    prefix = list(flow.transform)[:-1]
    fig, axes = plt.subplots(1, steps, figsize=(2.6 * steps, 2.8), sharex=True, sharey=True)
    for ax, t, state in zip(axes, times.tolist(), states):
        for transform in reversed(prefix):
            state, _ = transform.inverse(state)
        points = state.cpu().numpy()
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
        ax.set_title(f"t = {t:.2f}", fontsize=9)
    final = states[-1]
    for transform in reversed(prefix):
        final, _ = transform.inverse(final)
    lo, hi = _bounds(final.cpu().numpy())
    axes[0].set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]))
    fig.suptitle("samples along the flow: latent (t = T) to data (t = 0)", fontsize=10)
    return save_figure(fig, path)


def plot_marginals(
    data: np.ndarray, samples: np.ndarray, path: Path, columns: list[str] | None, limit: int = 8
) -> Path:
    """Histograms of each column (up to ``limit``): data against model samples."""
    count = min(limit, data.shape[1])
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.axis("off")
            continue
        edges = np.histogram_bin_edges(data[:, i], bins=40)
        ax.hist(data[:, i], bins=edges, density=True, alpha=0.5, label="data")
        ax.hist(
            np.clip(samples[:, i], edges[0], edges[-1]), bins=edges, density=True, alpha=0.5, label="model"
        )
        ax.set_title(_name(columns, i), fontsize=9)
    axes.flat[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_pairs(
    data: np.ndarray, samples: np.ndarray, path: Path, columns: list[str] | None, limit: int = 4
) -> Path:
    """Pairwise scatter of the first ``limit`` columns: data against model samples."""
    count = min(limit, data.shape[1])
    fig, axes = plt.subplots(count, count, figsize=(2.5 * count, 2.5 * count), squeeze=False)
    for i in range(count):
        for j in range(count):
            ax = axes[i, j]
            if i == j:
                ax.hist(data[:, i], bins=30, density=True, alpha=0.5)
                ax.hist(samples[:, i], bins=30, density=True, alpha=0.5)
            else:
                ax.scatter(data[:, j], data[:, i], s=1, alpha=0.3, label="data")
                ax.scatter(samples[:, j], samples[:, i], s=1, alpha=0.3, label="model")
            if i == count - 1:
                ax.set_xlabel(_name(columns, j), fontsize=8)
            if j == 0:
                ax.set_ylabel(_name(columns, i), fontsize=8)
    return save_figure(fig, path)


def _bounds(data: np.ndarray, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.percentile(data, 0.5, axis=0), np.percentile(data, 99.5, axis=0)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def _name(columns: list[str] | None, i: int) -> str:
    return columns[i] if columns and i < len(columns) else f"x{i + 1}"


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` atomically as a PNG at ``path`` (a killed run leaves the old plot or the
    new one, never half of one) and close it."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda file: fig.savefig(file, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path

"""Figures of a run of ``clayflow fit`` (a flow fitted to a target density):

* ``history.png``: ESS (as a share of the draws) and log Ẑ with its standard error against the
  step, the ELBO beside log Ẑ, and the known log Z when the target has one;
* 2-D targets: ``density.png``, the target's density (normalised on the grid), the fitted
  flow's, and the flow's samples on the target's contours, over the target's box (a user's
  own target, which has none: the box the flow's draws span, and ``weights.png`` too);
* more dimensions: ``marginals.png`` (per-dimension histograms of the flow's draws, raw and
  resampled by their importance weights) and ``weights.png`` (the log-weights' histogram,
  with ESS and Pareto k̂).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from clayflow.core import Flow
from clayflow.diagnostics import grid_log_prob
from clayflow.plotting.plots import plt, save_figure
from clayflow.train.run import read_metrics
from clayflow.variational import ImportanceWeights, Target

DRAWS = 20_000  # model draws behind the pictures of more than two dimensions
MARGINALS = 16  # at most this many dimensions in marginals.png


def plot_fitted_run(run_dir: Path, flow: Flow, target: Target, seed: int = 0) -> list[Path]:
    """Every picture of a fitted run, written into ``run_dir / "plots"``."""
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [plot_history(read_metrics(run_dir / "metrics.csv"), out / "history.png", target.log_z)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if target.dims == 2:
            if target.box is None:  # a user's own target: the box of the flow's draws
                x, weights = _draws(flow, target)
                target = dataclasses.replace(target, box=_box_of(x))
                paths.append(plot_weights(weights, out / "weights.png"))
            paths.append(plot_density(flow, target, out / "density.png"))
        else:
            x, weights = _draws(flow, target)
            paths.append(plot_marginals(x, weights.resample(len(x)), out / "marginals.png"))
            paths.append(plot_weights(weights, out / "weights.png"))
    return paths


def _box_of(x: torch.Tensor, share: float = 0.005) -> tuple[tuple[float, float], tuple[float, float]]:
    """The box ``((low1, low2), (high1, high2))`` holding draws ``x`` ``(n, 2)`` between their
    ``share`` and ``1 - share`` quantiles, widened by a quarter on each side (a mode that the
    flow missed may lie outside it)."""
    low, high = torch.quantile(x, share, dim=0), torch.quantile(x, 1 - share, dim=0)
    margin = 0.25 * (high - low).clamp(min=1e-6)
    low, high = (low - margin).tolist(), (high + margin).tolist()
    return (low[0], low[1]), (high[0], high[1])


def _draws(flow: Flow, target: Target) -> tuple[torch.Tensor, ImportanceWeights]:
    """``DRAWS`` draws of the flow ``(n, D)`` (float64, CPU) and their importance weights."""
    with torch.no_grad():
        x, log_q = flow.sample_and_log_prob(DRAWS)
        return x.double().cpu(), ImportanceWeights(target(x), log_q)


def plot_history(metrics: list[dict[str, str]], path: Path, log_z: float | None = None) -> Path:
    """ESS and log Ẑ (± 2 s.e., with the ELBO below it) against the step."""
    steps = np.array([float(r["step"]) for r in metrics])
    value = {key: np.array([float(r[key]) if r[key] != "" else np.nan for r in metrics])
             for key in ("ess", "log_z", "log_z_se", "elbo")}  # fmt: skip
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, 100 * value["ess"], marker=".")
    left.set(xlabel="step", ylabel="ESS (% of draws)", ylim=(0, 100), title="effective sample size")
    band = 2 * value["log_z_se"]
    right.plot(steps, value["log_z"], marker=".", label="log Z estimate (± 2 s.e.)")
    right.fill_between(steps, value["log_z"] - band, value["log_z"] + band, alpha=0.3)
    right.plot(steps, value["elbo"], linestyle="--", label="ELBO (a lower bound)")
    if log_z is not None:
        right.axhline(log_z, color="black", linewidth=0.8, label=f"true log Z = {log_z:.4f}")
    finite = np.concatenate([value["log_z"][1:], value["elbo"][1:]]) if len(steps) > 1 else value["log_z"]
    finite = finite[np.isfinite(finite)]
    if len(finite):
        low, high = finite.min(), finite.max()
        right.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    right.set(xlabel="step", title="normaliser")
    right.legend(fontsize=7)
    return save_figure(fig, path)


def density_grids(flow: Flow, target: Target, resolution: int = 200):
    """The target's box as ``extent`` (x0, x1, y0, y1), its grid ``xs, ys`` ``(resolution,)`` and
    on it log p of the target (normalised on the grid) and log q of the flow, ``(resolution,
    resolution)`` each, rows along y."""
    (x0, y0), (x1, y1) = target.box
    xs, ys, log_q = grid_log_prob(flow, (x0, x1, y0, y1), resolution)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    log_p = target(torch.stack([xx.flatten(), yy.flatten()], 1)).reshape(resolution, resolution)
    cell = (x1 - x0) * (y1 - y0) / resolution**2
    log_p = log_p - torch.logsumexp(log_p.flatten(), 0) - np.log(cell)
    return (x0, x1, y0, y1), xs, ys, log_p, log_q


def plot_density(flow: Flow, target: Target, path: Path, resolution: int = 200) -> Path:
    """Target density, fitted density and the flow's samples, over the target's box."""
    extent, xs, ys, log_p, log_q = density_grids(flow, target, resolution)
    (x0, x1, y0, y1) = extent
    with torch.no_grad():
        samples = flow.sample(3000).double().cpu().numpy()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, values, title in ((axes[0], log_p, f"target {target.name}"), (axes[1], log_q, "fitted flow")):
        ax.imshow(values.exp().numpy(), origin="lower", extent=extent, aspect="auto", cmap="magma")
        ax.set_title(title)
    axes[2].contour(xs.numpy(), ys.numpy(), log_p.exp().numpy(), levels=8, colors="grey", linewidths=0.6)
    axes[2].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3)
    axes[2].set(xlim=(x0, x1), ylim=(y0, y1), title="flow samples on the target's contours")
    return save_figure(fig, path)


def plot_marginals(x: torch.Tensor, resampled: torch.Tensor, path: Path) -> Path:
    """Histograms of the first ``MARGINALS`` dimensions: the flow's draws and their resampling."""
    dims = min(x.shape[1], MARGINALS)
    columns = min(dims, 4)
    rows = -(-dims // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= dims:
            ax.axis("off")
            continue
        values = x[:, j].numpy()
        edges = np.linspace(*np.quantile(values, [0.001, 0.999]), 50)
        ax.hist(values, edges, density=True, alpha=0.5, label="flow draws")
        ax.hist(x[resampled, j].numpy(), edges, density=True, histtype="step", label="resampled by weight")
        ax.set_title(f"x{j + 1}", fontsize=8)
    axes.flat[0].legend(fontsize=6)
    return save_figure(fig, path)


def plot_weights(weights: ImportanceWeights, path: Path) -> Path:
    """The log importance weights' histogram, with ESS and Pareto k̂."""
    log_w = weights.log_w.numpy()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(log_w[np.isfinite(log_w)] - np.max(log_w), 80)
    ax.set(xlabel="log w - max log w", ylabel="draws", yscale="log",
           title=f"ESS {100 * weights.ess:.1f}%, Pareto k {weights.pareto_k:.2f}, {weights.n} draws")  # fmt: skip
    return save_figure(fig, path)


__all__ = ["plot_density", "plot_fitted_run", "plot_history", "plot_marginals", "plot_weights"]

"""Figures of a run, written as PNG files with matplotlib's Agg backend (no display needed).

* ``loss.png``: train and validation NLL against the step, with the step whose weights the
  run kept marked;
* 2D data: ``samples.png`` (data beside model samples) and ``density.png`` (model density
  heat-map with the data overlaid); for a CNF also ``trajectories.png``;
* more dimensions (tables): ``marginals.png`` (per-column histograms, data vs model) and
  ``pairs.png`` (pairwise scatter of a few columns), drawn from every data row given and
  many more model samples, as densities, so that a table of a hundred rows still compares;
* images: ``samples.png``, ``data.png`` and ``reconstructions.png`` (see ``images.py``).

Each ``*_figure`` function builds a figure and returns it (tests inspect it); the matching
``plot_*`` function saves it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from clayflow.core import Flow
from clayflow.data.discrete import grid_step
from clayflow.diagnostics import grid_log_prob
from clayflow.errors import UsageError
from clayflow.files import atomic_write, read_regular_text
from clayflow.train.run import read_metrics
from clayflow.transforms import CNF

SAMPLES = 5000  # 2D figures: data points and model samples drawn (the same number of each)
# Tables: model samples against the data rows; at least MIN_MODEL_SAMPLES, SAMPLES_PER_ROW per
# data row for larger tables, at most MAX_MODEL_SAMPLES (an ODE flow samples slowly).
MIN_MODEL_SAMPLES = 5_000
SAMPLES_PER_ROW = 20
MAX_MODEL_SAMPLES = 20_000
MARGINALS_LIMIT = 16  # columns in marginals.png (a 4 x 4 grid)
PAIRS_LIMIT = 4  # columns in pairs.png (the panels grow as the square)
SCATTER_POINTS = 5000  # points of each side in a pair-plot panel
MAX_BINS = 40
RUG_ROWS = 200  # data columns of at most this many rows also show each row as a tick
MARKERS_UP_TO = 50  # loss curves with at most this many points mark each one
RANGE_MARGIN = 0.1  # histogram range: the data's, widened by this fraction on each side


def plot_run(
    run_dir: Path,
    flow: Flow,
    data_x: torch.Tensor,
    columns: list[str] | None = None,
    levels: int | None = None,
    *,
    show_columns: Sequence[int | str] | None = None,
    data_label: str = "test rows",
) -> list[Path]:
    """Write every figure that applies into ``run_dir/plots``; return their paths.

    ``data_x`` is data to compare the model's samples with, ``(N, D)`` (every row is used
    for tables; a 2D scatter draws up to ``SAMPLES``), or images ``(N, C, H, W)`` with
    ``levels`` intensity levels; a conditional flow's rows hold (x, context) and are compared
    with samples at their contexts (``table_samples``). ``columns`` are the D column names; ``show_columns`` the
    columns of a table to draw (names, or 0-based indices; default: the first ones, see
    ``choose_columns``); ``data_label`` says in the figures what the rows are.
    """
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    metrics = read_metrics(Path(run_dir) / "metrics.csv")
    if metrics:
        paths.append(plot_losses(metrics, out / "loss.png", selected_step(run_dir, metrics)))
    if levels is not None:
        from clayflow.plotting.images import plot_image_run

        return paths + plot_image_run(run_dir, flow, data_x, levels)
    data = data_x.detach().cpu().numpy()
    if data.shape[1] == 2 and not flow.context_features:
        data = data[:SAMPLES]
        samples = flow.sample(len(data)).cpu().numpy()
        paths.append(plot_samples_2d(data, samples, out / "samples.png"))
        paths.append(plot_density_2d(flow, data, out / "density.png"))
        cnfs = [t for t in flow.transform if isinstance(t, CNF)]
        if len(cnfs) == 1 and flow.transform[len(flow.transform) - 1] is cnfs[0]:
            paths.append(plot_trajectories_2d(flow, cnfs[0], out / "trajectories.png"))
    elif len(data):
        samples = table_samples(flow, data_x, model_sample_count(len(data))).numpy()
        if flow.context_features and show_columns is None:  # the context first: x against c
            width = data.shape[1]
            show_columns = [*range(width - flow.context_features, width), *range(width - flow.context_features)]
        table = (data, samples, columns, show_columns, data_label)
        paths.append(save_figure(marginals_figure(*table), out / "marginals.png"))
        paths.append(save_figure(pairs_figure(*table), out / "pairs.png"))
    return paths


def table_samples(flow: Flow, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` model samples ``(n, D)`` to set beside the table ``rows`` ``(N, D)``, on the CPU.
    A conditional flow's rows hold (x, context) (``Flow.split_rows``): its samples are
    (x ~ p(x | c), c) with the contexts of ``rows`` taken in turn, so that the figures compare
    the joint of the data with the model's conditionals at the data's own contexts."""
    if not flow.context_features:
        return flow.sample(n).cpu()
    _, context = flow.split_rows(rows.detach())
    context = context[torch.arange(n) % len(context)]
    device = next(flow.parameters()).device
    return torch.cat([flow.sample(context=context.to(device)).cpu().to(context.dtype), context], 1)


def model_sample_count(rows: int) -> int:
    """How many model samples to draw against ``rows`` data rows of a table."""
    return min(MAX_MODEL_SAMPLES, max(MIN_MODEL_SAMPLES, SAMPLES_PER_ROW * rows))


def selected_step(run_dir: Path, metrics: list[dict[str, str]]) -> int | None:
    """The step whose weights the run kept (and ``clayflow.load`` gives), from its
    ``results.json``; None without one, or when it is older than the last metrics row (a
    run resumed and training again, whose best step may change)."""
    try:
        results = json.loads(read_regular_text(Path(run_dir) / "results.json"))
        step, last = results["selected_step"], results["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(step, int) or last != int(metrics[-1]["step"]):
        return None
    return step


# ---------------------------------------------------------------- loss curves


def plot_losses(metrics: list[dict[str, str]], path: Path, selected: int | None = None) -> Path:
    """Save ``loss_figure`` at ``path``."""
    return save_figure(loss_figure(metrics, selected), path)


def loss_figure(metrics: list[dict[str, str]], selected: int | None = None) -> Figure:
    """Train and validation NLL against the step; for flow matching (no train NLL after
    step 0) the flow-matching loss on a second axis. A column's empty values are missing
    (the step-0 row, the fitted start, has a train NLL but no flow-matching loss); curves of
    few points mark each point, so that one evaluation is a visible dot. ``selected`` is
    the step whose weights the run kept, drawn as a dotted vertical line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if any(row.get("train_loss") and not row.get("train_nll") for row in metrics):
        loss_ax = ax.twinx()
        _plot_metric(loss_ax, metrics, "train_loss", color="C2", label="train loss")
        loss_ax.set_ylabel("flow-matching loss")
        loss_ax.legend(loc="upper center")
    else:
        _plot_metric(ax, metrics, "train_nll", color="C0", label="train")
    _plot_metric(ax, metrics, "val_nll", color="C1", label="validation")
    if selected is not None:
        start = ", before training" if selected == 0 else ""
        ax.axvline(selected, color="0.35", linestyle=":", label=f"weights kept (step {selected}{start})")
    ax.set(xlabel="step", ylabel="NLL (nats / example)", title="Negative log-likelihood")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _plot_metric(ax, metrics: list[dict[str, str]], key: str, **style) -> None:
    """One column of the metrics against the step, leaving out rows where it is missing."""
    rows = [row for row in metrics if row.get(key)]
    marker = "o" if len(rows) <= MARKERS_UP_TO else None
    ax.plot(
        [int(r["step"]) for r in rows], [float(r[key]) for r in rows], marker=marker, markersize=4, **style
    )


# ---------------------------------------------------------------- 2D data


def plot_samples_2d(data: np.ndarray, samples: np.ndarray, path: Path) -> Path:
    """Data beside model samples, on the same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    lo, hi = _bounds(data)
    for ax, points, title in ((axes[0], data, "data"), (axes[1], samples, "model samples")):
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
        ax.set(title=f"{title} ({len(points)})", xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal")
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


def _bounds(data: np.ndarray, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.percentile(data, 0.5, axis=0), np.percentile(data, 99.5, axis=0)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class ColumnChoice:
    """The columns of a table a figure draws, and what the figure says about the others."""

    indices: list[int]  # 0-based, in drawing order
    note: str  # "" when nothing is left out


def choose_columns(
    dims: int, names: list[str] | None, chosen: Sequence[int | str] | None, limit: int
) -> ColumnChoice:
    """The (at most ``limit``) columns of a ``dims``-column table to draw: the ``chosen``
    ones (names, or 0-based indices) in their order, else the first ones, with a note
    naming what is left out and how to choose.

    >>> choose_columns(30, None, None, 8)
    ColumnChoice(indices=[0, 1, 2, 3, 4, 5, 6, 7], note='columns 1-8 of 30 (choose with --columns)')
    >>> choose_columns(3, ["a", "b", "c"], ["c", 0], 8)
    ColumnChoice(indices=[2, 0], note='')
    """
    if chosen is None:
        note = f"columns 1-{limit} of {dims} (choose with --columns)" if dims > limit else ""
        return ColumnChoice(list(range(min(dims, limit))), note)
    indices = list(dict.fromkeys(_column_index(item, dims, names) for item in chosen))
    if not indices:
        raise UsageError("no columns chosen to plot")
    note = f"the first {limit} of the {len(indices)} columns chosen" if len(indices) > limit else ""
    return ColumnChoice(indices[:limit], note)


def _column_index(item: int | str, dims: int, names: list[str] | None) -> int:
    if isinstance(item, str) and names and item in names:
        return names.index(item)
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < dims:
        return item
    known = f"; columns: {', '.join(names)}" if names else ""
    raise UsageError(f"cannot plot column {item!r}: give a column name or an index 0-{dims - 1}{known}")


@dataclass(frozen=True)
class HistogramPair:
    """One column's histograms, data and model, as densities of all the values given:
    model mass outside the range is left out, not piled onto the edge bins. The model's
    bins split the data's (many samples afford finer bins than a few rows)."""

    data_edges: np.ndarray  # (B + 1,) the data's range with a margin
    data_density: np.ndarray  # (B,)
    model_edges: np.ndarray  # (k B + 1,) each data bin split in k, the same range
    model_density: np.ndarray  # (k B,) integrates to 1 - outside
    outside: float  # fraction of model samples outside the range (or not finite)


def histogram_pair(data: np.ndarray, samples: np.ndarray) -> HistogramPair:
    """Histograms of a column's data ``(N,)``, N >= 1, and model samples ``(S,)``."""
    finite = samples[np.isfinite(samples)]
    data_edges, model_edges = histogram_edges(data, finite)
    data_counts, _ = np.histogram(data, data_edges)
    model_counts, _ = np.histogram(finite, model_edges)
    return HistogramPair(
        data_edges=data_edges,
        data_density=data_counts / (len(data) * np.diff(data_edges)),
        model_edges=model_edges,
        model_density=model_counts / (max(len(samples), 1) * np.diff(model_edges)),
        outside=1 - model_counts.sum() / len(samples) if len(samples) else 0.0,
    )


def histogram_edges(data: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges for a column's data ``(N,)`` and finite model samples ``(S,)``: the data's
    bins ``(B + 1,)`` span the data's range widened by ``RANGE_MARGIN`` each side, about
    2 N^(1/3) of them (Rice's rule, 5 to ``MAX_BINS``); the model's ``(k B + 1,)`` split
    each in k, up to ``MAX_BINS`` in all.

    Values on a grid (counts, codes, values recorded to 0.1: ``grid_step``, of data and
    samples together when both lie on one, else of the data) get bins a whole number of
    grid steps wide with edges halfway between grid values, so that no bin holds one grid
    value more than its neighbour (which would draw false spikes and gaps).
    """
    lo, hi = float(data.min()), float(data.max())
    step = grid_step(torch.as_tensor(np.concatenate([data, samples]), dtype=torch.float32))
    step = step or grid_step(torch.as_tensor(data, dtype=torch.float32))
    span = hi - lo or step or abs(lo) or 1.0
    pad = RANGE_MARGIN * span
    bins = min(MAX_BINS, max(5, round(2 * len(data) ** (1 / 3))))
    width, parts = (span + 2 * pad) / bins, max(1, MAX_BINS // bins)
    if step is None:
        first = lo - pad
    else:
        model_width = step * max(1, round(width / parts / step))
        parts = max(1, round(width / model_width))
        width = model_width * parts
        first = lo - step / 2 - width * math.ceil(pad / width)
        bins = math.ceil((hi + step / 2 + pad - first) / width)
    return first + width * np.arange(bins + 1), first + width / parts * np.arange(bins * parts + 1)


def marginals_figure(
    data: np.ndarray,
    samples: np.ndarray,
    columns: list[str] | None = None,
    show_columns: Sequence[int | str] | None = None,
    data_label: str = "test rows",
    limit: int = MARGINALS_LIMIT,
) -> Figure:
    """Histograms of the chosen columns (``choose_columns``) of data ``(N, D)`` against model
    samples ``(S, D)``, as densities: data as bars (and a tick per row for small tables),
    model as a line; each panel says what share of the samples falls outside its range (the
    data's, widened by ``RANGE_MARGIN`` each side)."""
    choice = choose_columns(data.shape[1], columns, show_columns, limit)
    cols = math.ceil(math.sqrt(len(choice.indices)))
    rows = math.ceil(len(choice.indices) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(choice.indices) :]:
        ax.axis("off")
    for ax, j in zip(axes.flat, choice.indices):
        pair = histogram_pair(data[:, j], samples[:, j])
        _draw_histograms(ax, pair, data[:, j])
        ax.set_title(_name(columns, j) + _outside_note(pair.outside), fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(_comparison_title(len(data), len(samples), data_label, choice.note), fontsize=10)
    return fig


def pairs_figure(
    data: np.ndarray,
    samples: np.ndarray,
    columns: list[str] | None = None,
    show_columns: Sequence[int | str] | None = None,
    data_label: str = "test rows",
    limit: int = PAIRS_LIMIT,
) -> Figure:
    """Pairwise scatter of the chosen columns (``choose_columns``) of data ``(N, D)``, on
    top, against model samples ``(S, D)`` (up to ``SCATTER_POINTS`` of each), with each
    column's histograms on the diagonal; every panel spans the data's range."""
    choice = choose_columns(data.shape[1], columns, show_columns, limit)
    count = len(choice.indices)
    pairs = {j: histogram_pair(data[:, j], samples[:, j]) for j in choice.indices}
    shown_data, shown_samples = data[:SCATTER_POINTS], samples[:SCATTER_POINTS]
    data_size = 8 if len(shown_data) <= RUG_ROWS else 2
    fig, axes = plt.subplots(count, count, figsize=(2.6 * count, 2.6 * count + 0.6), squeeze=False)
    for row, i in enumerate(choice.indices):
        for col, j in enumerate(choice.indices):
            ax = axes[row, col]
            if i == j:
                _draw_histograms(ax, pairs[i], data[:, i])
                ax.set_title(_outside_note(pairs[i].outside).strip(), fontsize=7)
            else:
                ax.scatter(
                    shown_samples[:, j], shown_samples[:, i], s=1, alpha=0.15, color="C1", label="model"
                )
                ax.scatter(shown_data[:, j], shown_data[:, i], s=data_size, color="C0", label="data")
                ax.set(xlim=pairs[j].data_edges[[0, -1]], ylim=pairs[i].data_edges[[0, -1]])
            if row == count - 1:
                ax.set_xlabel(_name(columns, j), fontsize=8)
            if col == 0:
                ax.set_ylabel(_name(columns, i), fontsize=8)
    fig.suptitle(_comparison_title(len(data), len(samples), data_label, choice.note), fontsize=10)
    return fig


def _draw_histograms(ax, pair: HistogramPair, data: np.ndarray) -> None:
    ax.stairs(pair.data_density, pair.data_edges, fill=True, alpha=0.45, color="C0", label="data")
    ax.stairs(pair.model_density, pair.model_edges, color="C1", linewidth=1.2, label="model")
    if len(data) <= RUG_ROWS:
        ax.vlines(data, 0, 0.05, transform=ax.get_xaxis_transform(), color="C0", linewidth=0.8)
    ax.set_xlim(pair.data_edges[0], pair.data_edges[-1])


def _outside_note(fraction: float) -> str:
    if fraction <= 0:
        return ""
    percent = "<0.1%" if fraction < 0.001 else f"{100 * fraction:.2g}%" if fraction < 0.1 else f"{100 * fraction:.0f}%"
    return f"\n{percent} of samples outside the plot"


def _comparison_title(rows: int, samples: int, data_label: str, note: str) -> str:
    title = f"data (blue): {rows} {data_label} vs model (orange): {samples} samples, as densities"
    return f"{title}\n{note}" if note else title


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

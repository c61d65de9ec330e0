"""Image grids of a run: data, model samples at several temperatures, reconstructions and
latent interpolations."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from clayflow.core import Flow
from clayflow.files import atomic_write
from clayflow.plotting.plots import save_figure as _save

TEMPERATURES = (1.0, 0.8, 0.7, 0.6, 0.5)
GRID = 64  # images per grid
PAIRS, STEPS = 6, 8  # interpolation grid: rows of pairs, images per row


def image_grid(images: np.ndarray | torch.Tensor, levels: int, columns: int | None = None) -> np.ndarray:
    """Tile ``(N, C, H, W)`` intensity levels in ``[0, levels)`` into one ``(rows*(H+1)-1,
    cols*(W+1)-1[, 3])`` float image in [0, 1], one-pixel white gaps between tiles."""
    images = np.asarray(images, dtype=np.float64) / (levels - 1)
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c))
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = image.transpose(1, 2, 0)
    grid = np.clip(grid, 0, 1)
    return grid[..., 0] if c == 1 else grid


def save_image_grid(images, levels: int, path: Path, zoom: int = 4, columns: int | None = None) -> Path:
    """Write ``image_grid(images, levels, columns)`` atomically as a PNG, each pixel ``zoom`` x ``zoom``."""
    grid = image_grid(images, levels, columns)
    grid = np.kron(grid, np.ones((zoom, zoom) + (() if grid.ndim == 2 else (1,))))
    cmap = "gray" if grid.ndim == 2 else None
    atomic_write(path, lambda file: plt.imsave(file, grid, cmap=cmap, vmin=0, vmax=1, format="png"))
    return path


@torch.no_grad()
def plot_image_run(run_dir: Path, flow: Flow, data_x: torch.Tensor, levels: int, seed: int = 0) -> list[Path]:
    """``data.png``, ``samples.png`` (one panel per temperature in ``TEMPERATURES``),
    ``reconstructions.png`` (data above, inverse(forward(data)) below) and
    ``interpolation.png`` in ``run_dir/plots``. A class-conditional flow's ``data_x`` hold
    their class (``Flow.split_rows``); its samples are drawn in rows, one per class, and its
    reconstructions and interpolations use each image's own class."""
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    device = next(flow.parameters()).device
    data, context = flow.split_rows(data_x[:GRID].to(device).float())
    data = data.cpu()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    columns, sample_context = None, None
    if flow.context_features:  # one row of samples per class
        columns = max(1, GRID // flow.context_features)
        classes = torch.arange(flow.context_features, device=device).repeat_interleave(columns)
        sample_context = torch.nn.functional.one_hot(classes, flow.context_features).to(flow.dtype)
    samples = [flow.sample(GRID if sample_context is None else (), t, context=sample_context).cpu() for t in TEMPERATURES]
    z, _ = flow(data.to(device), context)
    reconstructed = flow.inverse(z, context)[0].cpu()
    pairs = min(PAIRS, len(data) // 2)
    start_context = context[:pairs] if context is not None else None
    between = interpolate(flow, data[:pairs], data[pairs : 2 * pairs], STEPS, start_context) if pairs else None
    torch.random.set_rng_state(generator_state)
    error = (reconstructed - data.float()).abs().max().item()

    fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(3.2 * len(TEMPERATURES), 3.6))
    per_class = ", a row per class" if columns else ""
    for ax, t, batch in zip(axes, TEMPERATURES, samples):
        _show(ax, image_grid(batch, levels, columns), f"samples, T = {t}{per_class}")
    paths = [_save(fig, out / "samples.png")]
    fig, ax = plt.subplots(figsize=(4, 4.4))
    _show(ax, image_grid(data, levels), "test data")
    paths.append(_save(fig, out / "data.png"))
    half = GRID // 2
    pairs = torch.cat([data[:half].float(), reconstructed[:half]])
    fig, ax = plt.subplots(figsize=(6, 2.4))
    _show(
        ax,
        image_grid(pairs, levels, columns=half // 2),
        f"data (top) and reconstructions, max error {error:g}",
    )
    paths.append(_save(fig, out / "reconstructions.png"))
    if between is None:  # fewer than two test images
        return paths
    fig, ax = plt.subplots(figsize=(STEPS * 0.8, len(between) / STEPS * 0.8 + 0.5))
    _show(
        ax, image_grid(between, levels, columns=STEPS), "latent interpolation between two test images per row"
    )
    paths.append(_save(fig, out / "interpolation.png"))
    return paths


@torch.no_grad()
def interpolate(
    flow: Flow, start: torch.Tensor, end: torch.Tensor, steps: int, context: torch.Tensor | None = None
) -> torch.Tensor:
    """Decode ``(1 - t) f(start) + t f(end)`` for ``steps`` values of t in [0, 1]: one row of
    ``steps`` images per pair, ``(pairs * steps, C, H, W)``; the ends reconstruct the inputs.
    A conditional flow encodes and decodes a pair under the start's ``context`` ``(pairs, K)``
    (the end is reconstructed only when its context is the same)."""
    device = next(flow.parameters()).device
    z_start, _ = flow(start.to(device).float(), context)
    z_end, _ = flow(end.to(device).float(), context)
    latent_shape = z_start.shape[1:]  # flat for multi-scale models, (C, H, W) for a CNF
    t = torch.linspace(0, 1, steps, device=device).view(1, steps, 1)
    z = (1 - t) * z_start.flatten(1).unsqueeze(1) + t * z_end.flatten(1).unsqueeze(1)
    if context is not None:
        context = context.repeat_interleave(steps, 0)
    return flow.inverse(z.reshape(-1, *latent_shape), context)[0].cpu()


def _show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")

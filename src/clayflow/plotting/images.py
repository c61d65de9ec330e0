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


def save_image_grid(images, levels: int, path: Path, zoom: int = 4) -> Path:
    """Write ``image_grid(images, levels)`` atomically as a PNG, each pixel ``zoom`` x ``zoom``."""
    grid = image_grid(images, levels)
    grid = np.kron(grid, np.ones((zoom, zoom) + (() if grid.ndim == 2 else (1,))))
    cmap = "gray" if grid.ndim == 2 else None
    atomic_write(path, lambda file: plt.imsave(file, grid, cmap=cmap, vmin=0, vmax=1, format="png"))
    return path


@torch.no_grad()
def plot_image_run(run_dir: Path, flow: Flow, data_x: torch.Tensor, levels: int, seed: int = 0) -> list[Path]:
    """``data.png``, ``samples.png`` (one panel per temperature in ``TEMPERATURES``),
    ``reconstructions.png`` (data above, inverse(forward(data)) below) and
    ``interpolation.png`` in ``run_dir/plots``."""
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    device = next(flow.parameters()).device
    data = data_x[:GRID]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    samples = [flow.sample(GRID, t).cpu() for t in TEMPERATURES]
    z, _ = flow(data.to(device).float())
    reconstructed = flow.inverse(z)[0].cpu()
    pairs = min(PAIRS, len(data) // 2)
    between = interpolate(flow, data[:pairs], data[pairs : 2 * pairs], STEPS) if pairs else None
    torch.random.set_rng_state(generator_state)
    error = (reconstructed - data.float()).abs().max().item()

    fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(3.2 * len(TEMPERATURES), 3.6))
    for ax, t, batch in zip(axes, TEMPERATURES, samples):
        _show(ax, image_grid(batch, levels), f"samples, T = {t}")
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
def interpolate(flow: Flow, start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """Decode ``(1 - t) f(start) + t f(end)`` for ``steps`` values of t in [0, 1]: one row of
    ``steps`` images per pair, ``(pairs * steps, C, H, W)``; the ends reconstruct the inputs."""
    device = next(flow.parameters()).device
    z_start, _ = flow(start.to(device).float())
    z_end, _ = flow(end.to(device).float())
    latent_shape = z_start.shape[1:]  # flat for multi-scale models, (C, H, W) for a CNF
    t = torch.linspace(0, 1, steps, device=device).view(1, steps, 1)
    z = (1 - t) * z_start.flatten(1).unsqueeze(1) + t * z_end.flatten(1).unsqueeze(1)
    return flow.inverse(z.reshape(-1, *latent_shape))[0].cpu()


def _show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")

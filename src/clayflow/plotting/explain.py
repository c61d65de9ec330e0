"""Pictures of what each layer of a flow does (``clayflow explain``), drawn from the tensors
of ``clayflow.diagnostics.explain`` so that a user can inspect the same numbers."""

from __future__ import annotations

import copy
import itertools
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from clayflow.core import Flow
from clayflow.diagnostics.explanation import Explanation, explain
from clayflow.files import atomic_write
from clayflow.plotting.plots import plt, save_figure
from clayflow.transforms import CNF, MultiScale

MAX_PANELS = 8  # 2D: stages drawn (data, evenly chosen layers, latent)


def plot_contributions(explanation: Explanation, path: Path, images: bool) -> Path:
    """A bar per layer: its mean log|det| (nats; bits/dim saved for images), then log N(z)."""
    terms = explanation.contributions()
    scale = -1 / (explanation.dims * math.log(2)) if images else 1.0
    values = [v * scale for _, v in terms]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(terms)))
    ax.barh(range(len(terms)), values, color=["tab:blue"] * (len(terms) - 1) + ["tab:grey"])
    ax.set_yticks(range(len(terms)), [name.removeprefix("transform.transforms.") for name, _ in terms], fontsize=6)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    total = float(explanation.log_prob.mean()) * scale
    what = "bits/dim each term costs (negative: saves)" if images else "nats each term adds to log p(x)"
    ax.set(xlabel=what, title=f"log p(x) by layer: total {total:.4f} {'bits/dim' if images else 'nats'}")
    return save_figure(fig, path)


def _stages(explanation: Explanation) -> list[tuple[str, np.ndarray]]:
    """(label, points (B, 2)) for the data, up to MAX_PANELS - 2 evenly chosen layers, and the latent."""
    steps = [s for s in explanation.steps if s.output.reshape(len(s.output), -1).shape[1] == 2]
    chosen = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_PANELS - 2)).round().astype(int)) if steps else []
    stages = [("data", explanation.x.numpy())]
    stages += [(f"after {steps[i].name.split('.')[-1]}: {steps[i].kind}", steps[i].output.reshape(-1, 2).numpy()) for i in chosen]
    return stages + [("latent", explanation.latent.numpy())]


def plot_layers_2d(flow: Flow, x: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """Top row: the data and a grid over it, pushed through the layers to the latent (points
    coloured by their position in the data). Bottom row: each drawn layer's log|det| over the
    data plane (nats; where the layer stretches, > 0, or squeezes, < 0)."""
    x = x.double()
    low, high = x.min(0).values, x.max(0).values
    low, high = low - 0.2 * (high - low), high + 0.2 * (high - low)
    lines = _grid_lines(low, high)
    points = explain(flow, torch.cat([x, lines]), seed)
    stages = _stages(points)
    colour = np.arctan2(*(x - x.mean(0)).T.numpy()[::-1])
    field_n = 60
    gx, gy = torch.meshgrid(torch.linspace(low[0], high[0], field_n, dtype=torch.float64),
                            torch.linspace(low[1], high[1], field_n, dtype=torch.float64), indexing="xy")  # fmt: skip
    field = explain(flow, torch.stack([gx.flatten(), gy.flatten()], 1), seed)
    by_name = {s.name: s for s in field.steps}
    point_steps = [s for s in points.steps if s.output.reshape(len(s.output), -1).shape[1] == 2]
    fig, axes = plt.subplots(2, len(stages), figsize=(2.6 * len(stages), 5.4), squeeze=False)
    n = len(x)
    for k, (label, values) in enumerate(stages):
        ax = axes[0, k]
        for line in np.split(values[n:], len(lines) // 50):
            ax.plot(line[:, 0], line[:, 1], color="lightgrey", linewidth=0.5)
        ax.scatter(values[:n, 0], values[:n, 1], c=colour, cmap="hsv", s=3)
        ax.set_title(label, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        bottom = axes[1, k]
        step = next((s for s in point_steps if label.startswith(f"after {s.name.split('.')[-1]}:")), None)
        if step is None or step.name not in by_name:
            bottom.axis("off")
            continue
        image = by_name[step.name].logabsdet.reshape(field_n, field_n).numpy()
        limit = max(float(np.abs(image).max()), 1e-6)
        shown = bottom.imshow(image, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit,
                              extent=(float(low[0]), float(high[0]), float(low[1]), float(high[1])), aspect="auto")  # fmt: skip
        bottom.set_title(f"log|det| of {step.kind}", fontsize=7)
        bottom.set_xticks([])
        bottom.set_yticks([])
        fig.colorbar(shown, ax=bottom, fraction=0.046)
    fig.suptitle("each layer, data to latent (top); where it stretches or squeezes the data plane (bottom)", fontsize=8)
    return save_figure(fig, path)


def animate_2d(flow: Flow, x: torch.Tensor, path: Path, seed: int = 0, frames_per_layer: int = 6) -> Path:
    """A GIF of the data moving through the layers to the latent, one layer after another."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    explanation = explain(flow, x.double(), seed)
    states = [explanation.x.numpy()] + [s.output.reshape(-1, 2).numpy() for s in explanation.steps
                                         if s.output.reshape(len(s.output), -1).shape[1] == 2]  # fmt: skip
    frames = [a + (b - a) * t for a, b in itertools.pairwise(states) for t in np.linspace(0, 1, frames_per_layer)]
    frames += [states[-1]] * frames_per_layer
    everything = np.concatenate(frames)
    low, high = np.percentile(everything, 0.5, 0), np.percentile(everything, 99.5, 0)
    colour = np.arctan2(*(states[0] - states[0].mean(0)).T[::-1])
    fig, ax = plt.subplots(figsize=(4, 4))
    scatter = ax.scatter(frames[0][:, 0], frames[0][:, 1], c=colour, cmap="hsv", s=3)
    ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), xticks=[], yticks=[], title="data -> latent, layer by layer")

    def update(i):
        scatter.set_offsets(frames[i])
        return (scatter,)

    animation = FuncAnimation(fig, update, frames=len(frames), blit=True)
    # Pillow names the format by the file's suffix, so the frames go to a temporary .gif first;
    # the picture then replaces ``path`` atomically, as every PNG does (``save_figure``)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".gif")
    os.close(fd)
    try:
        animation.save(scratch, writer=PillowWriter(fps=12))
        atomic_write(path, lambda file: file.write(Path(scratch).read_bytes()))
    finally:
        plt.close(fig)
        Path(scratch).unlink(missing_ok=True)
    return path


def plot_cnf_trajectories(flow: Flow, path: Path, rows: int = 300, seed: int = 0) -> Path | None:
    """For a flow with one 2D CNF block: paths of base samples from latent (t = T) to data
    (t = 0) through the block, with the function evaluations of one solve."""
    blocks = [m for m in flow.modules() if isinstance(m, CNF)]
    if len(blocks) != 1:
        return None
    cnf = blocks[0]
    dims = flow.latent_shape[0] if flow.latent_shape is not None else 2  # an augmented CNF: 2 + extra
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, dims, generator=generator, dtype=torch.float64)
    twin = copy.deepcopy(cnf).double().eval().cpu()
    with torch.no_grad():
        times, states = twin.trajectory(z, steps=25)
        _, _, stats = twin.forward_with_stats(states[-1])
    states = states.numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for i in range(rows):
        ax.plot(states[:, i, 0], states[:, i, 1], color="tab:blue", alpha=0.25, linewidth=0.6)
    ax.scatter(states[-1, :, 0], states[-1, :, 1], s=3, color="black", label="t = 0 (data side)")
    ax.scatter(states[0, :, 0], states[0, :, 1], s=3, color="tab:orange", label=f"t = {float(times[0]):.2f} (latent)")
    ax.legend(fontsize=7)
    moved = float(np.linalg.norm(states[-1] - states[0], axis=1).mean())
    if dims > 2:
        ax.text(0.02, 0.02, f"first 2 of {dims} dimensions (augmented)", transform=ax.transAxes, fontsize=7)
    ax.set(title=f"CNF paths, latent to data: mean distance moved {moved:.3g}\n"
                 f"({stats.nfe_forward} function evaluations per solve)", xticks=[], yticks=[])  # fmt: skip
    ax.title.set_fontsize(8)
    return save_figure(fig, path)


def plot_image_scales(flow: Flow, x: torch.Tensor, path: Path, temperature: float = 0.7, seed: int = 0) -> Path | None:
    """For a multi-scale image flow: an image, its latent at each scale (factored parts, then
    the top), and reconstructions that keep the coarser scales of its latent and resample the
    finer ones at ``temperature``."""
    scales = [m for m in flow.modules() if isinstance(m, MultiScale)]
    if not scales:
        return None
    multiscale = scales[0]
    explanation = explain(flow, x[:1], seed)
    device = next(flow.parameters()).device
    z = explanation.latent.to(flow.dtype)
    parts = multiscale.split_latent(explanation.latent)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for keep in range(len(parts)):  # resample parts [0, keep), keep the rest
        sizes = multiscale.latent_sizes
        fine = sum(sizes[:keep])
        resampled = z.repeat(6, 1)
        resampled[:, :fine] = temperature * torch.randn(6, fine, generator=generator, dtype=z.dtype)
        with torch.no_grad():
            rows.append(flow.inverse(resampled.to(device))[0].double().cpu().numpy())
    fig, axes = plt.subplots(1 + len(rows), max(len(parts) + 1, 6), figsize=(1.3 * max(len(parts) + 1, 6), 1.4 * (1 + len(rows))), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(_image(x[0].double().numpy()), cmap="gray")
    axes[0, 0].set_title("image", fontsize=7)
    for k, part in enumerate(parts):
        axes[0, k + 1].imshow(part[0].abs().mean(0).numpy(), cmap="magma")
        axes[0, k + 1].set_title(f"|latent| {'top' if k == len(parts) - 1 else f'scale {k + 1}'} {tuple(part.shape[1:])}", fontsize=6)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            axes[r + 1, c].imshow(_image(image), cmap="gray")
        axes[r + 1, 0].set_title("the image's own latent" if r == 0 else f"finest {r} scale(s) resampled, T={temperature}", fontsize=6, loc="left")
    return save_figure(fig, path)


def plot_marginals(explanation: Explanation, path: Path, columns: int = 4) -> Path:
    """Tables: histograms of the first ``columns`` features at the data, after evenly chosen
    layers, and at the latent (which should look standard normal)."""
    steps = [s for s in explanation.steps if s.output.shape == explanation.x.shape]
    chosen = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 4)).round().astype(int)) if steps else []
    stages = [("data", explanation.x)] + [(f"after {steps[i].kind}", steps[i].output) for i in chosen]
    stages.append(("latent", explanation.latent))
    shown = min(columns, explanation.x.shape[1])
    fig, axes = plt.subplots(len(stages), shown, figsize=(2.2 * shown, 1.5 * len(stages)), squeeze=False)
    for r, (label, values) in enumerate(stages):
        for c in range(shown):
            axes[r, c].hist(values[:, c].numpy(), bins=40, color="tab:blue")
            axes[r, c].set_yticks([])
            axes[r, c].set_title(f"{label}: column {c + 1}", fontsize=6)
    return save_figure(fig, path)


def _grid_lines(low: torch.Tensor, high: torch.Tensor, lines: int = 9, points: int = 50) -> torch.Tensor:
    """Horizontal and vertical lines over the box, ``points`` points each: ``(2 * lines * points, 2)``."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    out = []
    for value in torch.linspace(0, 1, lines, dtype=torch.float64):
        out.append(torch.stack([low[0] + t * (high[0] - low[0]), torch.full_like(t, low[1] + value * (high[1] - low[1]))], 1))
        out.append(torch.stack([torch.full_like(t, low[0] + value * (high[0] - low[0])), low[1] + t * (high[1] - low[1])], 1))
    return torch.cat(out)


def _image(chw: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` levels -> an array imshow draws (grey for one channel)."""
    image = chw.transpose(1, 2, 0)
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-9)
    return image[..., 0] if image.shape[2] == 1 else image

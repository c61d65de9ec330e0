"""A conditional density p(x | c) you can look at: moons rotated by an angle a, with
c = (cos a, sin a) as the context; one flow, trained on all angles, drawn at four.

    python benchmarks/conditional_toy.py [--model nsf] [--steps 3000] [--out benchmarks/results/conditional]

Training (seed 0, printed): each step draws 256 angles uniform in [0, 2 pi), one moons point
per angle (clayflow's ``moons`` toy: ``make_moons`` with noise 0.1, scaled by 2), rotated by
its angle. Adam (lr 2e-3, cosine decay), batch 256. Then, at four angles, the test NLL of
5,000 fresh rows at that angle (a rotation keeps the entropy, so the limit at every angle is
the moons' true entropy of ``benchmarks/toy_entropy.py``), and a figure: the model's density
p(x | c) at each angle, with fresh data on top.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from clayflow import models
from clayflow.data.toys import moons

SEED = 0


def rotated_moons(angles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One moons point per angle, rotated by it: ``(N, 2)``."""
    x = moons(len(angles), rng)
    cos, sin = np.cos(angles), np.sin(angles)
    return np.stack([cos * x[:, 0] - sin * x[:, 1], sin * x[:, 0] + cos * x[:, 1]], axis=1)


def context(angles: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1), dtype=torch.float32)


def train(model: str, steps: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    flow = getattr(models, model)(2, context_features=2)
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    for step in range(steps):
        angles = rng.uniform(0, 2 * math.pi, 256)
        x = torch.as_tensor(rotated_moons(angles, rng), dtype=torch.float32)
        loss = -flow.log_prob(x, context(angles)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    return flow.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nsf", choices=["nsf", "maf", "realnvp", "glow_vector"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="benchmarks/results/conditional")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# conditional rotated moons: model {args.model}, {args.steps} steps, batch 256, seed {SEED}, "
          f"torch {torch.__version__}")  # fmt: skip
    flow, seconds = train(args.model, args.steps)
    print(f"trained in {seconds:.0f} s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = np.array([0.0, 0.5, 2.0, 4.0])
    rng = np.random.default_rng(SEED + 1)
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4))
    grid = np.linspace(-4, 4, 200)
    xx, yy = np.meshgrid(grid, grid)
    points = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)
    print("| angle (rad) | test NLL of 5,000 rows at that angle (nats) |\n|---|---|")
    for axis, angle in zip(axes, shown):
        with torch.no_grad():
            density = flow.log_prob(points, context(np.array([angle]))).exp().view(200, 200).numpy()
            rows = rotated_moons(np.full(5000, angle), rng)
            nll = -flow.log_prob(torch.as_tensor(rows, dtype=torch.float32), context(np.array([angle]))).mean()
        print(f"| {angle:.1f} | {nll.item():.4f} |")
        axis.imshow(density, extent=(-4, 4, -4, 4), origin="lower", cmap="viridis")
        axis.scatter(rows[:300, 0], rows[:300, 1], s=2, c="white", alpha=0.6)
        axis.set_title(f"p(x | angle {angle:.1f} rad): test NLL {nll.item():.3f}", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"one {args.model} flow, context c = (cos a, sin a); data at that angle in white")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / f"rotated_moons_{args.model}.png", dpi=110, bbox_inches="tight")
    print(f"wrote {out / f'rotated_moons_{args.model}.png'}")


if __name__ == "__main__":
    main()

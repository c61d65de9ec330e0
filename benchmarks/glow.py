"""Glow training throughput on scikit-learn digits: LU-decomposed vs plain 1x1 convolutions.

    python benchmarks/glow.py [--blocks 7 --steps 20 --batch 64]

Both models are the default ``clayflow train --model glow --data digits`` model (levels 2,
8 steps per level, width 128, affine couplings), identical but for ``lu``. Each block times
``--steps`` optimisation steps (Adam, batch of dequantized digits) of one model; blocks
alternate between the two so that machine noise hits both alike. Prints the median
[min-max] images/s over blocks and the ratio LU / plain, with the sampling throughput
(eval mode, cached inverses) as well, then a sweep of one layer over channel counts: the
plain layer computes log|det W| as an O(C^3) determinant, the LU one as a sum of C terms
(building W = P L U is a C x C product either way).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clayflow.data import load_dataset
from clayflow.models.glow import glow_image


def _train_block(flow, optimizer, data, steps, batch, generator) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=generator)].float()
        loss = -flow.log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


@torch.no_grad()
def _sample_block(flow, n, repeats) -> float:
    flow.eval()
    start = time.perf_counter()
    for _ in range(repeats):
        flow.sample(n, 0.7)
    flow.train()
    return n * repeats / (time.perf_counter() - start)


def layer_sweep(channels=(4, 16, 64, 256), repeats=7) -> None:
    """Forward + backward of one 1x1 conv layer on a (32, C, 8, 8) batch, plain vs LU."""
    from clayflow.transforms import InvertibleConv1x1

    print(
        f"\none layer, forward + backward on (32, C, 8, 8); median of {repeats} blocks of 20 calls, ms per call"
    )
    print(f"{'C':>5s} {'plain':>9s} {'LU':>9s} {'LU / plain time':>16s}")
    for c in channels:
        times = {}
        for lu in (False, True):
            torch.manual_seed(0)
            layer = InvertibleConv1x1(c, lu=lu)
            x = torch.randn(32, c, 8, 8)
            blocks = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(20):
                    z, logabsdet = layer(x)
                    (z.square().mean() + logabsdet.mean()).backward()
                blocks.append((time.perf_counter() - start) / 20 * 1000)
            times[lu] = statistics.median(blocks)
        print(f"{c:>5d} {times[False]:>9.3f} {times[True]:>9.3f} {times[True] / times[False]:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    data = load_dataset("digits").train
    models = {}
    for lu in (True, False):
        torch.manual_seed(0)
        flow = glow_image((1, 8, 8), 17, lu=lu)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        _train_block(flow, optimizer, data, 3, args.batch, torch.Generator().manual_seed(0))  # init + warm-up
        models["LU" if lu else "plain"] = (flow, optimizer)
    train_rates = {name: [] for name in models}
    sample_rates = {name: [] for name in models}
    generator = torch.Generator().manual_seed(1)
    for _ in range(args.blocks):
        for name, (flow, optimizer) in models.items():
            train_rates[name].append(_train_block(flow, optimizer, data, args.steps, args.batch, generator))
            sample_rates[name].append(_sample_block(flow, 256, 4))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Glow on digits (1x8x8, 17 levels), "
        f"levels 2, K 8, width 128, batch {args.batch}; {args.blocks} blocks of {args.steps} steps"
    )
    print(
        f"{'1x1 conv':8s} {'train images/s, median [min-max]':>36s} {'sample images/s, median [min-max]':>36s}"
    )
    for name in models:
        t, s = train_rates[name], sample_rates[name]
        print(
            f"{name:8s} {statistics.median(t):>18.0f} [{min(t):.0f}-{max(t):.0f}]".ljust(46)
            + f"{statistics.median(s):>18.0f} [{min(s):.0f}-{max(s):.0f}]"
        )
    ratio = [lu / plain for lu, plain in zip(train_rates["LU"], train_rates["plain"])]
    sample_ratio = [lu / plain for lu, plain in zip(sample_rates["LU"], sample_rates["plain"])]
    print(
        f"LU / plain, per block: train median {statistics.median(ratio):.2f}, sample median {statistics.median(sample_ratio):.2f}"
    )
    layer_sweep()


if __name__ == "__main__":
    main()

"""Image-flow training throughput: clayflow's Glow against normflows' Glow at equal architecture.

    python benchmarks/compare/image_throughput.py [--blocks 5] [--block-seconds 2] [--batches 16 64]

Both are ``budget.py``'s Glow (2 scales of 8 steps, hidden width 128, sigmoid coupling scale,
affine couplings, LU 1x1 convolutions; parameter counts printed) on synthetic 256-level
batches of 1x28x28 and 3x32x32. One training step: -log p of the batch, backward, Adam
(clayflow's fused Adam as its trainer uses; normflows with torch's default Adam, as its
examples do). clayflow runs as ``clayflow train`` does (channels-last weights and batches),
as it did before (contiguous), and with its log-density under ``torch.compile``. Every
variant runs for ``--block-seconds`` in each of ``--blocks`` blocks, in an order that reverses
from block to block; reported: median images/s and the median over blocks of the ratio to
normflows, with min and max.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from budget import clayflow_glow, normflows_glow

from clayflow.train.schedule import make_optimizer


def training_step(contender, x: torch.Tensor, fused: bool, channels_last: bool, compiled: bool):
    if channels_last:
        contender.module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    parameters = contender.module.parameters()
    optimizer = make_optimizer(parameters, "adam", 1e-4) if fused else torch.optim.Adam(parameters, 1e-4)
    log_prob = torch.compile(contender.log_prob) if compiled else contender.log_prob

    def step() -> None:
        loss = -log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-seconds", type=float, default=2.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    print(f"# Glow training images/s: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.blocks} blocks of {args.block_seconds} s")  # fmt: skip
    print("| shape | batch | variant | images/s | ratio to normflows, median [min, max] |\n|---|---|---|---|---|")
    for shape in ((1, 28, 28), (3, 32, 32)):
        for batch in args.batches:
            torch.manual_seed(0)
            x = torch.randint(0, 256, (batch, *shape)).float()
            variants = {
                "normflows": training_step(normflows_glow(shape, 256), x, False, False, False),
                "clayflow, contiguous": training_step(clayflow_glow(shape, 256), x, True, False, False),
                "clayflow (channels-last, as trained)": training_step(clayflow_glow(shape, 256), x, True, True, False),
                "clayflow, channels-last, compiled": training_step(clayflow_glow(shape, 256), x, True, True, True),
            }
            for step in variants.values():  # warm-up (and compilation)
                step()
                step()
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for block in range(args.blocks):
                for name in list(variants) if block % 2 == 0 else list(variants)[::-1]:
                    count, started = 0, time.perf_counter()
                    while (elapsed := time.perf_counter() - started) < args.block_seconds or count < 2:
                        variants[name]()
                        count += 1
                    rates[name].append(batch * count / elapsed)
            for name, values in rates.items():
                ratios = [a / b for a, b in zip(values, rates["normflows"], strict=True)]
                print(f"| {'x'.join(map(str, shape))} | {batch} | {name} | {statistics.median(values):.0f} | "
                      f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

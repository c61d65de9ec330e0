"""``--precision bf16`` against float32: training speed and the NLL it reaches.

    python benchmarks/precision.py [--device cpu] [--blocks 7] [--out benchmarks/results/precision]

Speed: training steps/s of one model in float32 and with its conditioner networks in bfloat16
(``clayflow.nn.precision.autocast_conditioners``), the two taking turns in ``--blocks``
blocks (order alternating) of ``--block-seconds`` each, on the same batch; reported as the
median over blocks of images (or rows) per second and of the bf16 / fp32 ratio, with its min
and max. Models: realnvp on 2-D rows (batch 256 and 4096), realnvp and glow on 8x8 digits
(batch 64) and on synthetic 28x28 and 32x32 images (batch 16; clayflow's default options).

Quality: ``clayflow train`` as a user runs it, ``--precision fp32`` and ``bf16``, on moons
(2,000 steps, seeds 0 1 2) and the digits images with glow (1,000 steps, seed 0): the test NLL
of each, and the difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from clayflow.models import ModelSpec, build
from clayflow.nn.precision import autocast_conditioners
from clayflow.train.schedule import make_optimizer

SPEED = [  # (label, model, event shape, levels, batch)
    ("realnvp rows D=2", "realnvp", [2], None, 256),
    ("realnvp rows D=2", "realnvp", [2], None, 4096),
    ("realnvp 8x8", "realnvp", [1, 8, 8], 17, 64),
    ("glow 8x8", "glow", [1, 8, 8], 17, 64),
    ("realnvp 28x28", "realnvp", [1, 28, 28], 256, 16),
    ("glow 28x28", "glow", [1, 28, 28], 256, 16),
    ("realnvp 32x32x3", "realnvp", [3, 32, 32], 256, 16),
    ("glow 32x32x3", "glow", [3, 32, 32], 256, 16),
]
QUALITY = [("moons", "realnvp", 2000, (0, 1, 2)), ("digits", "glow", 1000, (0,))]


def train_step_call(flow: torch.nn.Module, x: torch.Tensor):
    optimizer = make_optimizer(flow.parameters(), "adam", 1e-4)

    def step() -> None:
        loss = -flow.log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def steps_per_second(call, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or count < 2:
        call()
        count += 1
    return count / elapsed


def speed(device: str, blocks: int, block_seconds: float) -> list[dict]:
    rows = []
    for label, model, shape, levels, batch in SPEED:
        torch.manual_seed(0)
        flow = build(ModelSpec(model, shape, {}, levels=levels)).to(device).train()
        for name, buffer in flow.named_buffers():
            if name.endswith("initialized"):
                buffer.fill_(True)
        mixed = copy.deepcopy(flow)
        autocast_conditioners(mixed, "bf16")
        x = (torch.randint(0, levels, (batch, *shape)).float() if levels else torch.randn(batch, *shape)).to(device)
        calls = {"fp32": train_step_call(flow, x), "bf16": train_step_call(mixed, x)}
        for call in calls.values():  # warm-up
            call()
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for block in range(blocks):
            for name in ("fp32", "bf16") if block % 2 == 0 else ("bf16", "fp32"):
                rates[name].append(batch * steps_per_second(calls[name], block_seconds))
        ratios = [b / f for b, f in zip(rates["bf16"], rates["fp32"], strict=True)]
        row = {"model": label, "batch": batch, "fp32_per_s": statistics.median(rates["fp32"]),
               "bf16_per_s": statistics.median(rates["bf16"]), "ratio": statistics.median(ratios),
               "ratio_low": min(ratios), "ratio_high": max(ratios)}  # fmt: skip
        print(f"| {label} | {batch} | {row['fp32_per_s']:.0f} | {row['bf16_per_s']:.0f} | "
              f"{row['ratio']:.2f} [{row['ratio_low']:.2f}, {row['ratio_high']:.2f}] |", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def quality(out: Path, device: str) -> list[dict]:
    rows = []
    for data, model, steps, seeds in QUALITY:
        for seed in seeds:
            nll = {}
            for precision in ("fp32", "bf16"):
                run = out / "runs" / f"{data}-{model}-{precision}-seed{seed}"
                command = [sys.executable, "-m", "clayflow", "train", "--data", data, "--model", model,
                           "--steps", str(steps), "--seed", str(seed), "--precision", precision, "--device", device,
                           "--no-plots", "--no-progress", "--out", str(run), "--force"]  # fmt: skip
                subprocess.run(command, check=True, capture_output=True)
                nll[precision] = json.loads((run / "results.json").read_text())["test_nll"]
            row = {"data": data, "model": model, "steps": steps, "seed": seed, **nll, "difference": nll["bf16"] - nll["fp32"]}
            print(f"| {data} | {model} | {steps} | {seed} | {nll['fp32']:.4f} | {nll['bf16']:.4f} | "
                  f"{row['difference']:+.4f} |", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--block-seconds", type=float, default=2.0)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/precision")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    header = (f"# bf16 conditioners against float32: torch {torch.__version__}, device {args.device}, "
              f"{threads} threads, {args.blocks} blocks of {args.block_seconds} s")  # fmt: skip
    print(header)
    print("| model | batch | fp32 per s | bf16 per s | bf16 / fp32, median [min, max] |\n|---|---|---|---|---|")
    speed_rows = speed(args.device, args.blocks, args.block_seconds)
    quality_rows = []
    if not args.skip_quality:
        print("| data | model | steps | seed | test NLL fp32 | test NLL bf16 | bf16 - fp32 |\n|---|---|---|---|---|---|---|")
        quality_rows = quality(out, args.device)
    (out / f"precision-{args.device.split(':')[0]}.json").write_text(
        json.dumps({"header": header, "speed": speed_rows, "quality": quality_rows}, indent=1)
    )


if __name__ == "__main__":
    main()

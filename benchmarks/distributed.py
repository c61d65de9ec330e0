"""1 process against N processes of this machine (torchrun, gloo on the CPU, nccl with
``--device cuda``) for ``clayflow train``: the same run, and how fast.

    python benchmarks/distributed.py [--nproc 2] [--repeats 3] [--device cpu] [--part all]

``equivalence``: for RealNVP on moons (the default model), Glow and RealNVP on digits images and FFJORD
(rk4 with fixed steps, Hutchinson's estimator) it trains 1 and 20 steps of a global batch of 64
on 1 process and on N, and prints the largest difference of any weight.

``speed``: for each workload (the default moons RealNVP, batch 512; the digits RealNVP and
Glow, batch 64) it runs 1 and N processes in interleaved blocks and prints the median
[min-max] training steps/s (``train_seconds`` of ``results.json``: the optimisation steps,
evaluations left out) and examples/s (the global batch times steps/s), with the ratio N / 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

WORKLOADS = {
    "moons realnvp, batch 512": ["--data", "moons", "--model", "realnvp", "--steps", "300", "--batch-size", "512"],
    "digits realnvp, batch 64": ["--data", "digits", "--steps", "40", "--batch-size", "64"],
    "digits glow, batch 64": ["--data", "digits", "--model", "glow", "--steps", "40", "--batch-size", "64"],
}
SAME_RUN = {
    "moons realnvp": ["--data", "moons", "--model", "realnvp"],
    "digits glow": ["--data", "digits", "--model", "glow"],
    "digits realnvp (batch norm in its conditioners)": ["--data", "digits"],
    "moons cnf (rk4, hutchinson)": ["--data", "moons", "--model", "cnf", "--solver", "rk4", "--step-size", "0.25"],
}


def train(processes: int, args: list[str], device: str, run: Path) -> dict:
    """``clayflow train ARGS`` on ``processes`` processes into ``run``: its ``results.json``."""
    launch = [sys.executable, "-m", "clayflow", "train"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={processes}", "-m", "clayflow", "train"]  # fmt: skip
    command = [*launch, *args, "--device", device, "--no-plots", "--out", str(run)]
    subprocess.run(command, check=True, capture_output=True)
    return json.loads((run / "results.json").read_text())


def steps_per_second(processes: int, args: list[str], device: str) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        result = train(processes, [*args, "--eval-every", "100000"], device, Path(scratch) / "run")
        return result["steps"] / result["train_seconds"]


def largest_difference(processes: int, args: list[str], device: str) -> float:
    """The largest absolute difference of any weight between the run on 1 process and on N."""
    with tempfile.TemporaryDirectory() as scratch:
        weights = []
        for n in (1, processes):
            train(n, args, device, Path(scratch) / str(n))
            weights.append(torch.load(Path(scratch) / str(n) / "checkpoints" / "last.pt", weights_only=True)["model"])
        return max((weights[0][k].double() - weights[1][k].double()).abs().max().item() for k in weights[0])


def equivalence(nproc: int, device: str) -> None:
    for name, workload in SAME_RUN.items():
        differences = [
            largest_difference(nproc, [*workload, "--batch-size", "64", "--steps", str(steps)], device)
            for steps in (1, 20)
        ]
        print(f"{name}: largest weight difference, 1 vs {nproc} processes: "
              f"{differences[0]:.1e} after 1 step, {differences[1]:.1e} after 20 steps")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--part", choices=["all", "equivalence", "speed"], default="all")
    args = parser.parse_args()
    print(f"# distributed: 1 vs {args.nproc} processes, device {args.device}, seed 0, {args.repeats} repeats")
    if args.part in ("all", "equivalence"):
        equivalence(args.nproc, args.device)
    if args.part == "equivalence":
        return
    for name, workload in WORKLOADS.items():
        batch = int(workload[workload.index("--batch-size") + 1])
        rates = {1: [], args.nproc: []}
        for _ in range(args.repeats):
            for processes, measured in rates.items():
                measured.append(steps_per_second(processes, workload, args.device))
        one, many = statistics.median(rates[1]), statistics.median(rates[args.nproc])
        print(
            f"{name}: 1 process {one:.1f} steps/s [{min(rates[1]):.1f}-{max(rates[1]):.1f}] "
            f"({one * batch:.0f} examples/s); {args.nproc} processes {many:.1f} steps/s "
            f"[{min(rates[args.nproc]):.1f}-{max(rates[args.nproc]):.1f}] ({many * batch:.0f} examples/s); "
            f"ratio {many / one:.2f}"
        )


if __name__ == "__main__":
    main()

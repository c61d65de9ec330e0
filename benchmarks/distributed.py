"""Training throughput on 1 process against N processes of this machine (torchrun, gloo on
the CPU, nccl with ``--device cuda``): steps/s and examples/s of ``clayflow train``.

    python benchmarks/distributed.py [--nproc 2] [--repeats 3] [--device cpu]

For each workload (the default moons RealNVP, batch 512; the digits image RealNVP, batch 64)
it runs 1 and N processes in interleaved blocks and prints the median [min-max] training
steps/s (``train_seconds`` of ``results.json``: the optimisation steps, evaluations left out)
and examples/s (the global batch times steps/s), with the ratio N / 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOADS = {
    "moons realnvp, batch 512": ["--data", "moons", "--steps", "300", "--batch-size", "512"],
    "digits realnvp, batch 64": ["--data", "digits", "--steps", "40", "--batch-size", "64"],
}


def steps_per_second(processes: int, args: list[str], device: str) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        launch = [sys.executable, "-m", "clayflow", "train"]
        if processes > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                      f"--nproc_per_node={processes}", "-m", "clayflow", "train"]  # fmt: skip
        command = [*launch, *args, "--device", device, "--eval-every", "100000", "--no-plots", "--out", str(run)]
        subprocess.run(command, check=True, capture_output=True)
        result = json.loads((run / "results.json").read_text())
        return result["steps"] / result["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"# distributed: 1 vs {args.nproc} processes, device {args.device}, seed 0, {args.repeats} repeats")
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

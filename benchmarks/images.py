"""Figures for the image issue.

    python benchmarks/images.py convention          # bits/dim convention checks
    python benchmarks/images.py memory [--steps 40] # MNIST-size training: peak RSS and steps/s

``memory`` writes random 28x28 MNIST IDX files to a temporary folder (the content does not
change memory or speed) and runs ``clayflow train --data mnist:DIR --batch-size 64`` in a
child process with the default image model, reporting the child's peak resident memory
(``getrusage``) and the steps/s logged in its ``metrics.csv``. Pass ``--device cuda`` on a
GPU machine.
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_image_data import write_idx
from test_image_transforms import bits_per_dim_against_closed_form, discrete_mass


def convention() -> None:
    bpd, expected = bits_per_dim_against_closed_form()
    print("bits/dim of a fresh 1x8x8 RealNVP (k = 17, alpha = 0.05) vs the closed form, 6 images:")
    print(f"  flow.bits_per_dim: {np.array2string(bpd, precision=6)}")
    print(f"  closed form:       {np.array2string(expected, precision=6)}")
    print(f"  max |difference|:  {np.abs(bpd - expected).max():.2e}")
    mass, exact = discrete_mass()
    print("total probability of all 3^2 images of a 1x1x2 model (k = 3), integral of p over [0, 3)^2:")
    print(f"  midpoint rule (300^2): {mass:.8f}   closed form (Phi(b) - Phi(-b))^2: {exact:.8f}")


def memory(steps: int, batch: int, device: str, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        write_idx(Path(folder) / "train-images-idx3-ubyte", rng.integers(0, 256, (6000, 28, 28)))
        write_idx(Path(folder) / "t10k-images-idx3-ubyte", rng.integers(0, 256, (1000, 28, 28)))
        run = Path(folder) / "run"
        every = max(1, steps // 4)
        cmd = [
            sys.executable,
            "-m",
            "clayflow.cli.main",
            "train",
            "--data",
            f"mnist:{folder}",
            "--steps",
            str(steps),
            "--batch-size",
            str(batch),
            "--eval-every",
            str(every),
            "--checkpoint-every",
            str(steps),
            "--no-plots",
            "--device",
            device,
            "--out",
            str(run),
            *extra,
        ]
        print("command:", " ".join(cmd[2:]))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        with (run / "metrics.csv").open() as file:
            rates = [float(row["steps_per_s"]) for row in csv.DictReader(file)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"peak resident memory of the training process: {peak_kib / 2**20:.2f} GiB")
    print(
        f"steps/s per logged interval: {[round(r, 2) for r in rates]}; median {statistics.median(rates):.2f}"
        f" ({statistics.median(rates) * batch:.0f} images/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["convention", "memory"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args, extra = parser.parse_known_args()
    if args.what == "convention":
        convention()
    else:
        memory(args.steps, args.batch, args.device, extra)


if __name__ == "__main__":
    main()

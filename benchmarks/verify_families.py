"""``clayflow verify`` on a trained model of every family, and on deliberately broken ones.

    python benchmarks/verify_families.py [--out runs/verify] [--steps-scale 1.0]

Trains (CPU, seed 0) RealNVP, NICE and Glow on moons and on wine, RealNVP and Glow on digits
images, and FFJORD (plain and augmented) on moons, each for a short budget, then prints
``clayflow verify`` of each run. Then it breaks one layer of the moons RealNVP (log-det off by
0.1 nats), one of the digits Glow (inverse off by 0.1%) and the scaling term of the digits
RealNVP's bits/dim, and prints the failing rows, which name the broken layer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

import clayflow
from clayflow.data import load_dataset
from clayflow.diagnostics.faults import break_layer
from clayflow.transforms import AffineCoupling, ScalarAffine

RUNS = {
    "realnvp-moons": ["--data", "moons", "--model", "realnvp", "--steps", "2000"],
    "nice-moons": ["--data", "moons", "--model", "nice", "--steps", "2000"],
    "glow-moons": ["--data", "moons", "--model", "glow", "--steps", "2000"],
    "realnvp-wine": ["--data", "wine", "--steps", "1000"],
    "cnf-moons": ["--data", "moons", "--model", "cnf", "--steps", "300"],
    "cnf-augmented-moons": ["--data", "moons", "--model", "cnf", "--augment", "1", "--steps", "300"],
    "realnvp-digits": ["--data", "digits", "--steps", "300"],
    "glow-digits": ["--data", "digits", "--model", "glow", "--steps", "300"],
}


def train(name: str, args: list[str], out: Path, scale: float) -> Path:
    run = out / name
    if not (run / "results.json").exists():
        steps = args.index("--steps") + 1
        args = [*args[:steps], str(max(1, int(int(args[steps]) * scale))), *args[steps + 1 :]]
        command = [sys.executable, "-m", "clayflow", "train", *args, "--no-plots", "--out", str(run), "--force"]
        subprocess.run(command, check=True, capture_output=True)
    return run


def broken(run: Path, layer_type: type, index: int, forward=None, inverse=None):
    """The run's flow with its ``index``-th ``layer_type`` layer made faulty."""
    flow = clayflow.load(run)
    name, layer = [(n, m) for n, m in flow.named_modules() if isinstance(m, layer_type)][index]
    break_layer(layer, forward, inverse)
    return flow, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/verify")
    parser.add_argument("--steps-scale", type=float, default=1.0)
    args = parser.parse_args()
    out = Path(args.out)
    print(f"# verify on every family: torch {torch.__version__}, seed 0, steps x {args.steps_scale}")
    runs = {name: train(name, options, out, args.steps_scale) for name, options in RUNS.items()}
    for name, run in runs.items():
        report = subprocess.run([sys.executable, "-m", "clayflow", "verify", str(run)], capture_output=True, text=True, check=False)
        print(f"\n## {name} ({' '.join(RUNS[name])}): exit {report.returncode}\n{report.stdout}{report.stderr}")
    faults = {
        "realnvp-moons: an AffineCoupling's log-det + 0.1": ("realnvp-moons", AffineCoupling, 2,
                                                             {"forward": lambda z, ld: (z, ld + 0.1)}),
        "glow-digits: an AffineCoupling's inverse x 1.001": ("glow-digits", AffineCoupling, 1,
                                                            {"inverse": lambda x, ld: (x * 1.001, ld)}),
        "realnvp-digits: bits/dim without the 1/levels scaling term": ("realnvp-digits", ScalarAffine, 0,
                                                                      {"forward": lambda v, ld: (v, ld * 0)}),
    }  # fmt: skip
    for title, (name, layer_type, index, fault) in faults.items():
        flow, layer = broken(runs[name], layer_type, index, **fault)
        data = load_dataset(name.split("-")[-1]).test
        report = clayflow.verify(flow, data)
        print(f"\n## broken {title} (layer {layer}): passed {report.passed}")
        for check in report.failed:
            print(f"FAIL  {check.name}: {check.figure:.3g} (tolerance {check.tolerance:.3g}) {check.detail}")


if __name__ == "__main__":
    main()

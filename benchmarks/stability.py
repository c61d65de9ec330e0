"""Long runs of every model family on its default data: does any loss, gradient or
validation NLL become NaN/inf?

    python benchmarks/stability.py [--scale 1.0] [--only realnvp-moons ...] [--out DIR]

Each run is ``clayflow train`` with default options and ``--nonfinite stop`` (the default),
so a non-finite loss or gradient would end it with exit code 1. Reported per run: whether
it finished, steps, training time, non-finite cells in ``metrics.csv`` (0 expected), the
largest gradient norm logged, and the test NLL. ``--scale`` multiplies every step count.
The table is printed and written to ``DIR/stability.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
from pathlib import Path

import torch

from clayflow.cli.main import main as clayflow

# name -> (model, data, steps): vector families on the default toy, image families on digits.
RUNS = {
    "realnvp-moons": ("realnvp", "moons", 20000),
    "nice-moons": ("nice", "moons", 20000),
    "glow-moons": ("glow", "moons", 20000),
    "cnf-moons": ("cnf", "moons", 5000),
    "realnvp-digits": ("realnvp", "digits", 4000),
    "glow-digits": ("glow", "digits", 4000),
    "cnf-digits": ("cnf", "digits", 1000),
}


def run(name: str, scale: float, out: Path) -> int:
    model, data, steps = RUNS[name]
    steps = max(1, round(steps * scale))
    run_dir = out / name
    argv = ["train", "--model", model, "--data", data, "--steps", str(steps), "--eval-every", str(max(1, steps // 20)),
            "--out", str(run_dir), "--force", "--no-progress", "--no-plots"]  # fmt: skip
    return clayflow(argv)


def collect(name: str, code: int | None, out: Path) -> dict:
    """The figures of one run from its directory; ``code`` is its exit code (None: unknown,
    for ``--report-only``, where a run without ``results.json`` counts as unfinished)."""
    run_dir = out / name
    if code is None:
        code = 0 if (run_dir / "results.json").exists() else 1
    with (run_dir / "metrics.csv").open() as file:
        metrics = list(csv.DictReader(file))
    numbers = [float(v) for row in metrics for v in row.values() if v not in ("", None)]
    results = json.loads((run_dir / "results.json").read_text()) if code == 0 else {}
    return {
        "run": name,
        "finished": code == 0,
        "steps": int(metrics[-1]["step"]) if metrics else 0,
        "train_seconds": float(metrics[-1]["elapsed_s"]) if metrics else 0.0,
        "non_finite": sum(not math.isfinite(v) for v in numbers),
        "max_grad_norm": max((float(r["grad_norm"]) for r in metrics), default=math.nan),
        "test_nll": results.get("test_nll", math.nan),
        "test_bpd": results.get("test_bpd", math.nan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stability"))
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the table from the runs in --out"
    )
    args = parser.parse_args()
    codes = {name: None if args.report_only else run(name, args.scale, args.out) for name in args.only}
    rows = [collect(name, code, args.out) for name, code in codes.items()]
    machine = platform.processor() or platform.machine()
    lines = [
        f"Long runs, default options; torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}",
        "",
        "| run | finished | steps | train time (s) | non-finite metrics | max grad norm | test NLL | test bpd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {'yes' if r['finished'] else 'NO'} | {r['steps']} | {r['train_seconds']:.0f} | "
            f"{r['non_finite']} | {r['max_grad_norm']:.3g} | {r['test_nll']:.4f} | {r['test_bpd']:.4f} |"
        )
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

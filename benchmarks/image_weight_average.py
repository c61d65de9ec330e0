"""Should image runs evaluate and keep a moving average of the weights? The default image
command with and without ``--ema``, side by side.

    python benchmarks/image_weight_average.py --seeds 0 1 2 [--models realnvp glow] [--decays 0 0.99]

For every model, seed and decay (in that order, so the decays of one model and seed run
back to back and meet the same machine load) it runs
``python -m clayflow train --data digits --model M --seed S --ema D --threads T --no-plots
--no-progress`` in a child process with every other option at its default, and reads the
run's ``results.json``: test NLL and bits/dim of the weights it selected (best validation),
the selected step and the training seconds. Rows are appended to ``--csv`` as they finish,
so two processes (for example ``--seeds 0 2`` and ``--seeds 1``, one per core) can share
one file (a rerun's row replaces the earlier one in the table); ``--report`` prints the table
of means over seeds from that file.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FIELDS = ("model", "seed", "ema", "test_bpd", "test_nll", "selected_step", "steps", "train_seconds")


def run_one(model: str, seed: int, decay: float, threads: int, folder: Path) -> dict:
    """One default digits run; returns its row."""
    run_dir = folder / f"{model}-s{seed}-ema{decay:g}"
    command = [sys.executable, "-m", "clayflow", "train", "--data", "digits", "--model", model,
               "--seed", str(seed), "--ema", str(decay), "--threads", str(threads),
               "--no-plots", "--no-progress", "--out", str(run_dir)]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((run_dir / "results.json").read_text())
    return {"model": model, "seed": seed, "ema": decay, "test_bpd": result["test_bpd"],
            "test_nll": result["test_nll"], "selected_step": result["selected_step"],
            "steps": result["steps"], "train_seconds": round(result["train_seconds"], 1)}  # fmt: skip


def report(path: Path) -> None:
    """Mean [min-max] test bits/dim per model and decay, and the per-seed differences."""
    rows = list({(r["model"], r["seed"], r["ema"]): r for r in csv.DictReader(path.open())}.values())  # a rerun's row wins
    print("| model | --ema | seeds | test bits/dim, mean [min-max] | selected step, median | train s, median |")
    print("|---|---|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in rows):
        for decay in sorted({float(r["ema"]) for r in rows if r["model"] == model}):
            chosen = [r for r in rows if r["model"] == model and float(r["ema"]) == decay]
            bpd = [float(r["test_bpd"]) for r in chosen]
            step = statistics.median(int(r["selected_step"]) for r in chosen)
            seconds = statistics.median(float(r["train_seconds"]) for r in chosen)
            print(f"| {model} | {decay:g} | {len(chosen)} | {statistics.fmean(bpd):.4f} "
                  f"[{min(bpd):.4f}-{max(bpd):.4f}] | {step:.0f} | {seconds:.0f} |")  # fmt: skip
    print("\nPer seed, bits/dim with the average minus without (negative: the average is better):")
    by_key = {(r["model"], r["seed"], float(r["ema"])): float(r["test_bpd"]) for r in rows}
    for (model, seed, decay), bpd in sorted(by_key.items()):
        if decay and (model, seed, 0.0) in by_key:
            print(f"  {model} seed {seed} --ema {decay:g}: {bpd - by_key[(model, seed, 0.0)]:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["realnvp", "glow"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.99])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", type=Path, default=Path("image_weight_average.csv"))
    parser.add_argument("--runs", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--report", action="store_true", help="only print the table of --csv")
    args = parser.parse_args()
    if args.report:
        report(args.csv)
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.runs or Path(scratch)
        for model in args.models:
            for seed in args.seeds:
                for decay in args.decays:
                    row = run_one(model, seed, decay, args.threads, folder)
                    print(row, flush=True)
                    new = not args.csv.exists()
                    with args.csv.open("a", newline="") as f:
                        writer = csv.DictWriter(f, FIELDS)
                        if new:
                            writer.writeheader()
                        writer.writerow(row)
    report(args.csv)


if __name__ == "__main__":
    main()

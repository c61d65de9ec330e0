"""Should image runs evaluate and keep a moving average of the weights, and stop early? The
default image command with and without ``--ema`` (and ``--patience``), side by side.

    python benchmarks/image_weight_average.py --seeds 0 1 2 [--models realnvp glow] [--decays 0 0.99] [--patience 0]

For every model, seed and decay (in that order, so the decays of one model and seed run
back to back and meet the same machine load) it runs
``python -m clayflow train --data digits --model M --seed S --ema D --threads T --no-plots
--no-progress`` in a child process with every other option at its default, and reads the
run's ``results.json``: test NLL and bits/dim of the weights it selected (best validation),
the selected step, the steps trained and the training seconds. ``--patience P`` passes
``--patience P`` (0: no early stopping) instead of the data's default. Rows are appended to
``--csv`` as they finish, so two processes (for example ``--seeds 0 2`` and ``--seeds 1``,
one per core) can share one file (a rerun's row replaces the earlier one in the table; a
file with other columns is refused). ``--report --csv FILE...`` prints the table of means
over seeds from the files, and, for every model, seed and decay run both with and without
early stopping, what early stopping changed (rows of files without a ``patience`` column
were trained without early stopping).
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

FIELDS = ("model", "seed", "ema", "test_bpd", "test_nll", "selected_step", "steps", "train_seconds", "patience")


def run_one(model: str, seed: int, decay: float, threads: int, folder: Path, patience: int | None) -> dict:
    """One default digits run; returns its row."""
    name = f"{model}-s{seed}-ema{decay:g}" + ("" if patience is None else f"-patience{patience}")
    run_dir = folder / name
    command = [sys.executable, "-m", "clayflow", "train", "--data", "digits", "--model", model,
               "--seed", str(seed), "--ema", str(decay), "--threads", str(threads),
               "--no-plots", "--no-progress", "--out", str(run_dir)]  # fmt: skip
    if patience is not None:
        command += ["--patience", str(patience)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((run_dir / "results.json").read_text())
    return {"model": model, "seed": seed, "ema": decay, "test_bpd": result["test_bpd"],
            "test_nll": result["test_nll"], "selected_step": result["selected_step"],
            "steps": result["steps"], "train_seconds": round(result["train_seconds"], 1),
            "patience": result["patience"]}  # fmt: skip


Key = tuple[str, int, float, int]  # model, seed, decay, patience


def read_rows(paths: list[Path]) -> dict[Key, dict]:
    """The rows of ``paths`` by model, seed, decay and patience (a rerun's row wins); rows of
    files written before the patience column were trained without early stopping."""
    rows = {}
    for path in paths:
        for row in csv.DictReader(path.open()):
            rows[(row["model"], int(row["seed"]), float(row["ema"]), int(row.get("patience") or 0))] = row
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV ``path``, writing the header first to a new file; a file with
    other columns (one written before the patience column) is refused, not mislabelled."""
    new = not path.exists()
    if not new:
        with path.open() as f:
            header = next(csv.reader(f), None)
        if header != list(FIELDS):
            raise SystemExit(f"{path} has the columns {header}, not {list(FIELDS)}: write to a new --csv")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def report(paths: list[Path]) -> None:
    """Mean [min-max] test bits/dim per model, decay and patience over the rows of ``paths``,
    the per-seed differences the average makes, and what early stopping changed."""
    rows = read_rows(paths)
    groups: dict[tuple[str, float, int], list[dict]] = {}
    for (model, _, decay, patience), row in rows.items():
        groups.setdefault((model, decay, patience), []).append(row)
    print("| model | --ema | --patience | seeds | test bits/dim, mean [min-max] | selected step, median "
          "| steps trained, median | train s, median |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for model in dict.fromkeys(key[0] for key in rows):
        for _, decay, patience in sorted(key for key in groups if key[0] == model):
            chosen = groups[(model, decay, patience)]
            bpd = [float(r["test_bpd"]) for r in chosen]
            step = statistics.median(int(r["selected_step"]) for r in chosen)
            trained = statistics.median(int(r["steps"]) for r in chosen)
            seconds = statistics.median(float(r["train_seconds"]) for r in chosen)
            print(f"| {model} | {decay:g} | {patience} | {len(chosen)} | {statistics.fmean(bpd):.4f} "
                  f"[{min(bpd):.4f}-{max(bpd):.4f}] | {step:.0f} | {trained:.0f} | {seconds:.0f} |")  # fmt: skip
    print("\nPer seed, bits/dim with the average minus without (negative: the average is better):")
    for (model, seed, decay, patience), row in sorted(rows.items()):
        raw = rows.get((model, seed, 0.0, patience))
        if decay and raw:
            difference = float(row["test_bpd"]) - float(raw["test_bpd"])
            print(f"  {model} seed {seed} --ema {decay:g} --patience {patience}: {difference:+.4f}")
    print("\nPer seed, early stopping against none (same model, seed and decay):")
    for (model, seed, decay, patience), row in sorted(rows.items()):
        full = rows.get((model, seed, decay, 0))
        if patience and full:
            print(f"  {model} seed {seed} --ema {decay:g} --patience {patience}: bits/dim "
                  f"{float(row['test_bpd']) - float(full['test_bpd']):+.4f}, selected step {row['selected_step']} "
                  f"(without: {full['selected_step']}), {row['steps']} of {full['steps']} steps, "
                  f"{float(row['train_seconds']):.0f} s (without: {float(full['train_seconds']):.0f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["realnvp", "glow"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.99])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patience", type=int, help="--patience of the runs (default: the data's default)")
    parser.add_argument("--csv", type=Path, nargs="+", default=[Path("image_weight_average.csv")],
                        help="the file rows are appended to; with --report, the files to read")  # fmt: skip
    parser.add_argument("--runs", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--report", action="store_true", help="only print the table of --csv")
    args = parser.parse_args()
    if args.report:
        report(args.csv)
        return
    if len(args.csv) != 1:
        parser.error("--csv takes one file to write to (several only with --report)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.runs or Path(scratch)
        for model in args.models:
            for seed in args.seeds:
                for decay in args.decays:
                    row = run_one(model, seed, decay, args.threads, folder, args.patience)
                    print(row, flush=True)
                    append_row(args.csv[0], row)
    report(args.csv)


if __name__ == "__main__":
    main()

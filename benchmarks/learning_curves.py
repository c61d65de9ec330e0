"""Issue 15: one table's learning curve (train and validation NLL against steps) with the
default command of an earlier clayflow and of this one, side by side in one picture.

    python benchmarks/learning_curves.py --before 3db4afb --data wine --seed 0

The earlier revision is checked out into a temporary git worktree and run with its own
sources (``PYTHONPATH``), the current one from this checkout; both run
``python -m clayflow train --data DATA --seed S --no-plots --no-progress`` with no other flag.
Writes ``benchmarks/results/tabular/learning_curve_DATA.png`` and prints what each run reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]


def run_default(sources: Path, data: str, seed: int, out: Path) -> dict:
    """Train with the default command of the clayflow in ``sources``; its results.json."""
    env = {**os.environ, "PYTHONPATH": str(sources / "src")}
    command = [sys.executable, "-m", "clayflow", "train", "--data", data, "--seed", str(seed),
               "--no-plots", "--no-progress", "--out", str(out)]  # fmt: skip
    subprocess.run(command, env=env, check=True, cwd=sources, stderr=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def read_curve(run: Path) -> dict[str, list[float]]:
    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    curve: dict[str, list[float]] = {"step": [], "train": [], "val": []}
    for row in rows:
        curve["step"].append(int(row["step"]))
        curve["train"].append(float(row["train_nll"]) if row["train_nll"] else float("nan"))
        curve["val"].append(float(row["val_nll"]))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the earlier clayflow")
    parser.add_argument("--data", default="wine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tabular")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "before"), args.before],
                       cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        try:
            runs = {
                f"before ({args.before})": (run_default(tmp / "before", args.data, args.seed, tmp / "a"), tmp / "a"),
                "after (this checkout)": (run_default(ROOT, args.data, args.seed, tmp / "b"), tmp / "b"),
            }
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))  # own y scales: the curves differ by 10^4
            for ax, (label, (result, run)) in zip(axes, runs.items()):
                curve = read_curve(run)
                ax.plot(curve["step"], curve["train"], label="train NLL")
                ax.plot(curve["step"], curve["val"], label="validation NLL")
                ax.axvline(result["selected_step"], color="0.5", ls="--", label=f"selected step {result['selected_step']}")
                values = [abs(v) for v in curve["train"] + curve["val"] if math.isfinite(v) and v != 0]
                scale = "symlog" if values and max(values) > 100 * min(values) else "linear"
                ax.set_yscale(scale)
                ax.set(xlabel="step", ylabel=f"NLL (nats / row, {scale})",
                       title=f"{label}: test NLL {result['test_nll']:.2f}")  # fmt: skip
                ax.legend()
                ax.grid(alpha=0.3)
                print(f"{label}: {json.dumps(result)}")
            fig.suptitle(f"clayflow train --data {args.data} --seed {args.seed} (defaults)")
            fig.tight_layout()
            path = args.out / f"learning_curve_{args.data}.png"
            fig.savefig(path, dpi=120)
            print(f"wrote {path}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "before")], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()

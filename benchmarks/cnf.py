"""Continuous flows on 2D toys: MLE with the exact trace, with Hutchinson, with kinetic +
Jacobian regularisation (RNODE), and flow matching, in one table.

    python benchmarks/cnf.py [--steps 2000] [--lr 5e-3] [--toys moons 8gaussians checkerboard 2spirals]
                             [--out DIR]

Every run is ``clayflow train --model cnf`` with the same vector field (concatsquash MLP,
width 64, 3 hidden layers), batch 512, Adam at ``--lr`` with warm-up and cosine, the same seed and data,
and dopri5 at 1e-5 tolerances. Flow matching trains for the same number of steps (no solves).
Reported per run: test NLL (exact trace, best-validation weights), training wall time, and
the mean function evaluations per step (forward solve; backward solve with the adjoint,
0 otherwise) over the last logged interval. Density heat-maps and trajectories are in each
run's ``plots/`` and gathered in ``DIR/density.png`` and ``DIR/trajectories.png``; the table
is printed and written to ``DIR/cnf.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path

import torch

from clayflow.cli.main import main as clayflow

METHODS = {
    "MLE, exact trace": ["--trace", "exact"],
    "MLE, Hutchinson": ["--trace", "hutchinson"],
    "MLE, Hutchinson + kinetic + Jacobian (0.01 each)": [
        "--trace",
        "hutchinson",
        "--kinetic",
        "0.01",
        "--jacobian",
        "0.01",
    ],
    "flow matching (minibatch OT)": ["--objective", "fm", "--ot"],
}


def run(toy: str, method: str, flags: list[str], steps: int, lr: float, out: Path) -> dict:
    run_dir = out / f"{toy}-{list(METHODS).index(method)}"
    argv = ["train", "--model", "cnf", "--data", toy, "--steps", str(steps), "--lr", str(lr), "--eval-every", str(max(1, steps // 5)),
            "--out", str(run_dir), "--force", "--no-progress", *flags]  # fmt: skip
    assert clayflow(argv) == 0, argv
    results = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "metrics.csv").open() as file:
        last = list(csv.DictReader(file))[-1]
    return {
        "toy": toy,
        "method": method,
        "test_nll": results["test_nll"],
        "train_seconds": results["train_seconds"],
        "nfe_forward": float(last["nfe_forward"]),
        "nfe_backward": float(last["nfe_backward"]),
        "run": str(run_dir),
    }


def montage(out: Path, toys: list[str]) -> list[Path]:
    """Two figures from the runs' plots: ``density.png`` (toys x trainings, heat-maps) and
    ``trajectories.png`` (one strip per run, samples from t = T to t = 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    methods = list(METHODS)
    written = []
    for name, rows, cols, size in (
        ("density", len(toys), len(methods), (3.2, 3.2)),
        ("trajectories", len(toys) * len(methods), 1, (14, 2.6)),
    ):
        fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
        for ax, (toy, i) in zip(axes.flat, [(t, i) for t in toys for i in range(len(methods))]):
            ax.imshow(mpimg.imread(out / f"{toy}-{i}" / "plots" / f"{name}.png"))
            ax.set_title(f"{toy}: {methods[i]}", fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--toys", nargs="+", default=["moons", "8gaussians", "checkerboard", "2spirals"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cnf"))
    parser.add_argument(
        "--montage-only", action="store_true", help="only rebuild the two figures from existing runs in --out"
    )
    args = parser.parse_args()
    if args.montage_only:
        print(*montage(args.out, args.toys), sep="\n")
        return
    rows = [
        run(toy, method, flags, args.steps, args.lr, args.out)
        for toy in args.toys
        for method, flags in METHODS.items()
    ]
    header = f"CNF on 2D toys, {args.steps} steps each at lr {args.lr}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    lines = [
        header,
        "",
        "| toy | training | test NLL (nats) | train time (s) | NFE/step forward | NFE/step backward |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['toy']} | {r['method']} | {r['test_nll']:.4f} | {r['train_seconds']:.0f} | "
            f"{r['nfe_forward']:.1f} | {r['nfe_backward']:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cnf.md").write_text(text + "\n")
    print(*montage(args.out, args.toys), sep="\n")


if __name__ == "__main__":
    main()

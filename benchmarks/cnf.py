"""Continuous flows on 2D toys: MLE with the exact trace, with Hutchinson, with kinetic +
Jacobian regularisation (RNODE), and flow matching, in one table.

    python benchmarks/cnf.py [--steps 2000] [--lr 5e-3] [--toys moons 8gaussians checkerboard 2spirals]
                             [--out DIR]

Every run is ``clayflow train --model cnf`` with the same vector field (concatsquash MLP,
width 64, 3 hidden layers), batch 512, Adam at ``--lr`` with warm-up and cosine, the same seed and data,
and dopri5 at 1e-5 tolerances. Flow matching trains for the same number of steps (no solves).
Reported per run: test NLL (exact trace, best-validation weights), training wall time, and
the mean function evaluations per step (forward solve; backward solve with the adjoint,
0 otherwise) over the last logged interval, and the function evaluations of one dopri5
solve that draws 2000 samples from the trained model (straighter paths need fewer). Density heat-maps and trajectories are in each
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

from clayflow import load as clayflow_load
from clayflow.cli.main import main as clayflow
from clayflow.transforms import CNF

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


def train_run(toy: str, method: str, steps: int, lr: float, out: Path) -> Path:
    run_dir = out / f"{toy}-{list(METHODS).index(method)}"
    argv = ["train", "--model", "cnf", "--data", toy, "--steps", str(steps), "--lr", str(lr), "--eval-every", str(max(1, steps // 5)),
            "--out", str(run_dir), "--force", "--no-progress", *METHODS[method]]  # fmt: skip
    assert clayflow(argv) == 0, argv
    return run_dir


def sampling_nfe(run_dir: Path, n: int = 2000) -> int:
    """Function evaluations of one dopri5 solve that draws ``n`` samples from the trained CNF
    (straighter paths need fewer): the calls of the vector field, counted by a hook."""
    flow = clayflow_load(run_dir)
    cnf = next(t for t in flow.transform if isinstance(t, CNF))
    calls = []
    handle = cnf.dynamics.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(0)
    flow.sample(n)
    handle.remove()
    return len(calls)


def collect(toy: str, method: str, out: Path) -> dict:
    """The figures of one finished run, read from its directory."""
    run_dir = out / f"{toy}-{list(METHODS).index(method)}"
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
        "nfe_sample": sampling_nfe(run_dir),
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
        "--report-only", action="store_true", help="only rebuild the table and figures from the runs in --out"
    )
    args = parser.parse_args()
    if not args.report_only:
        for toy in args.toys:
            for method in METHODS:
                train_run(toy, method, args.steps, args.lr, args.out)
    rows = [collect(toy, method, args.out) for toy in args.toys for method in METHODS]
    header = f"CNF on 2D toys, {args.steps} steps each at lr {args.lr}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    columns = ("toy", "training", "test NLL (nats)", "train time (s)", "NFE/step forward", "NFE/step backward",
               "NFE to sample")  # fmt: skip
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append(
            f"| {r['toy']} | {r['method']} | {r['test_nll']:.4f} | {r['train_seconds']:.0f} | "
            f"{r['nfe_forward']:.1f} | {r['nfe_backward']:.1f} | {r['nfe_sample']} |"
        )
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cnf.md").write_text(text + "\n")
    print(*montage(args.out, args.toys), sep="\n")


if __name__ == "__main__":
    main()

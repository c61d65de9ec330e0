"""Variational inference: ``clayflow fit`` on every built-in target, against the truth.

    python benchmarks/variational.py [--seeds 0 1 2] [--targets T or T:MODEL ...] [--steps N] [--out DIR]

Each fit is the command a user runs, ``clayflow fit --target T --seed S --threads 1`` (defaults unless
``--steps``/``--model`` or a ``T:MODEL`` target say otherwise; funnel and the posterior with
``--steps 10000`` by default, see ``STEPS``; the Gaussian mixture also with ``--model nsf``, the
model ``clayflow fit`` suggests when its weights are heavy-tailed). Reported per target
(median and spread over seeds), from ``EVAL_DRAWS`` fresh draws of the final flow in float64
(seed 10,000 + seed; at 8,192 draws, fit's own evaluation, log Ẑ's standard error at an ESS of
60% is 0.009, too close to the 0.01 target to tell models apart): ESS, log Ẑ - log Z (the
truth: closed form for banana, the Gaussian mixture and the funnel; a 2001² grid quadrature
over the target's box for U1-U4, checked against a 1001² one) with its standard error,
Pareto k̂, the training wall time.

The logistic-regression posterior is compared with the HMC reference of
``benchmarks/variational_reference.py`` (its JSON must exist): posterior means and standard
deviations from 200,000 importance-weighted draws of the fitted flow, as differences in units
of the reference's posterior standard deviations (target: every |difference| < 0.1).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import clayflow
from clayflow.variational import ImportanceWeights, Target, load_target
from clayflow.variational.objective import draw_weights

ROOT = Path(__file__).resolve().parent
TARGETS = ("u1", "u2", "u3", "u4", "banana", "gaussian_mixture", "gaussian_mixture:nsf", "funnel", "logistic_regression")
STEPS = {"funnel": 10000, "logistic_regression": 10000}  # the rest: clayflow fit's default (5000)
REFERENCE = ROOT / "results" / "variational_reference" / "logistic_regression.json"
POSTERIOR_DRAWS = 200_000
EVAL_DRAWS = 65_536


def grid_log_z(target: Target, points: int) -> float:
    """log ∫ p̃ over the target's box by the midpoint rule on ``points``² cells."""
    (x0, y0), (x1, y1) = target.box
    xs = x0 + (torch.arange(points, dtype=torch.float64) + 0.5) * (x1 - x0) / points
    ys = y0 + (torch.arange(points, dtype=torch.float64) + 0.5) * (y1 - y0) / points
    total = []
    for row in ys.split(256):  # rows of cells, so that memory stays small
        yy, xx = torch.meshgrid(row, xs, indexing="ij")
        total.append(torch.logsumexp(target(torch.stack([xx.flatten(), yy.flatten()], 1)), 0))
    return float(torch.logsumexp(torch.stack(total), 0) + math.log((x1 - x0) * (y1 - y0) / points**2))


def true_log_z(target: Target) -> tuple[float | None, str]:
    """The target's log Z and how it is known."""
    if target.log_z is not None:
        return target.log_z, "closed form"
    if target.box is None:
        return None, "unknown"
    fine, coarse = grid_log_z(target, 2001), grid_log_z(target, 1001)
    return fine, f"grid 2001² (1001²: {coarse - fine:+.1e})"


def fit(target: str, seed: int, out: Path, steps: int | None, model: str) -> dict:
    run = out / "runs" / f"{target}-{model}-seed{seed}"
    if not (run / "results.json").exists():
        command = [sys.executable, "-m", "clayflow", "fit", "--target", target, "--model", model, "--seed", str(seed),
                   "--no-plots", "--no-progress", "--threads", "1", "--out", str(run), "--force"]  # fmt: skip
        if steps:
            command += ["--steps", str(steps)]
        subprocess.run(command, check=True, capture_output=True, text=True)
    return {**json.loads((run / "results.json").read_text()), "run": str(run)}


def importance_weights(run: str, target: Target, seed: int, draws: int, chunk: int = 16_384) -> ImportanceWeights:
    """The weights of ``draws`` fresh draws of the run's flow (float64) against ``target``."""
    flow = clayflow.load(run).double()
    torch.manual_seed(10_000 + seed)
    with torch.no_grad():
        return draw_weights(flow, target, draws, chunk)


def posterior_moments(run: str, target: Target, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Self-normalised importance-weighted mean and sd of the fitted flow's draws, and their ESS."""
    flow = clayflow.load(run).double()
    torch.manual_seed(seed)
    xs, log_qs = [], []
    with torch.no_grad():
        for _ in range(POSTERIOR_DRAWS // 20_000):
            x, log_q = flow.sample_and_log_prob(20_000)
            xs.append(x)
            log_qs.append(log_q)
    x = torch.cat(xs)
    weights = ImportanceWeights(target(x), torch.cat(log_qs))
    w = torch.softmax(weights.log_w, 0)[:, None]
    mean = (w * x).sum(0)
    sd = ((w * (x - mean) ** 2).sum(0)).sqrt()
    return mean.numpy(), sd.numpy(), weights.ess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="steps for every target (default: STEPS, else clayflow's default)")
    parser.add_argument("--model", default="realnvp", help="the model of targets given without :MODEL")
    parser.add_argument("--out", default="benchmarks/results/variational")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# clayflow fit on built-in targets: model {args.model}, seeds {args.seeds}, torch {torch.__version__}")
    rows, lines = [], []
    for entry in args.targets:
        name, _, model = entry.partition(":")
        model = model or args.model
        target = load_target(name)
        truth, how = true_log_z(target)
        steps = args.steps or STEPS.get(name)
        fits = [fit(name, seed, out, steps, model) for seed in args.seeds]
        for result, seed in zip(fits, args.seeds, strict=True):
            weights = importance_weights(result["run"], target, seed, EVAL_DRAWS)
            rows.append({"target": name, "model": model, "seed": seed, "steps": result["steps"], **weights.summary(),
                         "draws": EVAL_DRAWS, "log_z_true": truth, "seconds": result["train_seconds"],
                         "log_z_error": None if truth is None else weights.log_z - truth})  # fmt: skip
        mine = rows[-len(fits) :]
        errors = [r["log_z_error"] for r in mine if r["log_z_error"] is not None]
        error, worst = (_spread(errors, "+.4f"), f"{max(map(abs, errors)):.4f}") if errors else ("-", "-")
        line = (f"| {name} | {model} | {target.dims} | {mine[0]['steps']} | "
                f"{_spread([100 * r['ess'] for r in mine], '.1f')} | {error} | {worst} | "
                f"{_spread([r['log_z_se'] for r in mine], '.4f')} | {_spread([r['pareto_k'] for r in mine], '.2f')} | "
                f"{_spread([r['seconds'] for r in mine], '.0f')} | {how} |")  # fmt: skip
        lines.append(line)
        print(line, flush=True)
    table = ["| target | model | D | steps | ESS % | log Ẑ − log Z | max abs | s.e. | Pareto k̂ | train s | log Z from |",
             "|---|---|---|---|---|---|---|---|---|---|---|", *lines]  # fmt: skip
    report = [f"# clayflow fit on its built-in targets (seeds {' '.join(map(str, args.seeds))})", "",
              (f"Median [min, max] over seeds; ESS, log Ẑ (with its standard error) and Pareto k̂ from {EVAL_DRAWS:,} "
               "fresh draws of each final flow in float64."), "", *table]  # fmt: skip
    posterior = [e for e in args.targets if e.partition(":")[0] == "logistic_regression"]
    if posterior and REFERENCE.exists():
        model = posterior[0].partition(":")[2] or args.model
        mine = [r for r in rows if r["target"] == "logistic_regression" and r["model"] == model]
        report += ["", *posterior_report(mine, out, model)]
    if picture := u_picture(rows, out, args.seeds[0]):
        report += ["", f"U1-U4 beside the densities fitted with seed {args.seeds[0]}, ESS from the table's draws: `{picture.name}`."]
    (out / "variational.md").write_text("\n".join(report) + "\n")
    (out / "variational.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(report))


def u_picture(rows: list[dict], out: Path, seed: int, resolution: int = 300) -> Path | None:
    """U1-U4 (those fitted) beside the fitted densities of ``seed``'s runs, each panel titled
    with its ESS from the table's draws: ``u_targets.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clayflow.plotting.variational import density_grids

    fitted = [r for r in rows if r["target"] in ("u1", "u2", "u3", "u4") and r["seed"] == seed]
    if not fitted:
        return None
    fig, axes = plt.subplots(len(fitted), 2, figsize=(6, 3 * len(fitted)), squeeze=False)
    for (left, right), row in zip(axes, fitted, strict=True):
        flow = clayflow.load(out / "runs" / f"{row['target']}-{row['model']}-seed{seed}").double()
        extent, _, _, log_p, log_q = density_grids(flow, load_target(row["target"]), resolution)
        for ax, values, title in ((left, log_p, f"{row['target']}: target"),
                                  (right, log_q, f"{row['model']}, ESS {100 * row['ess']:.1f}%")):  # fmt: skip
            ax.imshow(values.exp().numpy(), origin="lower", extent=extent, aspect="auto")
            ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    path = out / "u_targets.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def posterior_report(rows: list[dict], out: Path, model: str) -> list[str]:
    """Means and sds of the fitted posterior against the HMC reference, per seed."""
    reference = json.loads(REFERENCE.read_text())
    ref_mean, ref_sd = np.array(reference["parameters"]["mean"]), np.array(reference["parameters"]["sd"])
    target = load_target("logistic_regression")
    lines = ["## Logistic-regression posterior against the HMC reference", "",
             (f"Reference: `{REFERENCE.relative_to(ROOT.parent)}`. Moments of the flow: {POSTERIOR_DRAWS:,} draws, "
             "self-normalised importance weights; differences in reference posterior sds."), "",
             "| seed | ESS % | max abs Δmean / sd | max abs Δsd / sd | within 0.1 |", "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        run = out / "runs" / f"logistic_regression-{model}-seed{row['seed']}"
        mean, sd, ess = posterior_moments(str(run), target, row["seed"])
        d_mean, d_sd = np.abs(mean - ref_mean) / ref_sd, np.abs(sd - ref_sd) / ref_sd
        ok = "yes" if max(d_mean.max(), d_sd.max()) < 0.1 else "no"
        lines.append(f"| {row['seed']} | {100 * ess:.1f} | {d_mean.max():.3f} | {d_sd.max():.3f} | {ok} |")
    return lines


def _spread(values: list[float], fmt: str) -> str:
    return f"{np.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


if __name__ == "__main__":
    main()

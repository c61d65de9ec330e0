"""Clayflow's models on the 2D FFJORD toys against the physical limit: the true entropy.

    python benchmarks/toy_entropy.py [--toys moons,rings] [--models realnvp,nsf] [--steps 4000]

For each toy, ``log_density`` is the exact log-density of its generator (``clayflow.data.toys``)
in the limit of many rows (the linspace angles of moons/circles/rings become uniform): closed
forms (8gaussians, checkerboard; circles and rings by the Rice density, a Bessel I0), 1-D
Gauss-Legendre quadrature over the curve parameter (moons, swissroll, 2spirals), or a root
search over the pre-image (pinwheel). Each is checked: its mass on a fine 2D grid, a chi-square
of binned samples against it, and the change of the entropy when its grid is doubled.
H = -E[log p] is a Monte Carlo mean over fresh samples. Each model is trained with the CLI
(``python -m clayflow train``) and compared on clayflow's own test rows, paired with the true
-log p of the same rows: gap = model NLL - true NLL, whose standard error is small.
A GaussianMixture (full covariance, 1..30 components by BIC, fit on the same training rows)
is the baseline. Runs go to /tmp/toy_entropy_runs and are reused when results.json exists;
the truth of each toy is cached in benchmarks/results/toy_entropy/truth_TOY.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import i0e, logsumexp, ndtr
from sklearn.mixture import GaussianMixture

import clayflow
from clayflow.data import DATA_SEED, load_dataset
from clayflow.data.toys import TOYS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "toy_entropy"
RUNS = Path("/tmp/toy_entropy_runs")
MC_SAMPLES, MC_SEED, GMM_SEED = 200_000, 2024, 0
HALF_WIDTH = {"moons": 5, "swissroll": 4, "circles": 5, "rings": 4, "8gaussians": 5,
              "pinwheel": 6, "2spirals": 5, "checkerboard": 5}  # fmt: skip  # box of the mass check
GRID_CELLS, BIN_CELLS = 400, 10  # mass-check cells per axis; cells per chi-square bin per axis
# Quadrature panels (8 Gauss-Legendre nodes each) or root-search step; doubled in the check.
RESOLUTION = {"moons": 32, "swissroll": 128, "2spirals": 64, "pinwheel": 0.05}
CIRCLES = {
    "circles": ([3.0, 1.5], 0.24),
    "rings": ([0.75, 1.5, 2.25, 3.0], 0.08),
}  # equal-weight radii, noise


def gauss_legendre(lo: float, hi: float, panels: int, order: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of composite Gauss-Legendre quadrature on [lo, hi]."""
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = np.diff(edges)[:, None] / 2
    return ((edges[:-1, None] + half) + half * x).ravel(), (half * w).ravel()


def chunked(points: np.ndarray, fn, nodes: int) -> np.ndarray:
    """``fn`` applied to blocks of ``points`` so that a block times ``nodes`` stays ~4M values."""
    size = max(1, 4_000_000 // max(nodes, 1))
    return np.concatenate([fn(points[i : i + size]) for i in range(0, len(points), size)])


def gaussian_curve(points, centres, log_weights, sigma):
    """log sum_j w_j N(x; c_j, sigma^2 I): a curve's quadrature convolved with isotropic noise."""

    def block(x):
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        return logsumexp(log_weights - d2 / (2 * sigma**2), axis=1) - np.log(2 * np.pi * sigma**2)

    return chunked(points, block, len(centres))


def rice_circles(points, radii, sigma):
    """Exact log-density of uniform angles on equally likely circles of ``radii`` plus N(0, sigma^2 I)."""
    r, radii = np.linalg.norm(points, axis=1)[:, None], np.asarray(radii)[None]
    log_terms = -((r - radii) ** 2) / (2 * sigma**2) + np.log(i0e(r * radii / sigma**2))
    return logsumexp(log_terms, axis=1) - np.log(radii.size * 2 * np.pi * sigma**2)


def moons_density(points, panels):
    """Half circles 2(cos, sin)(th) - (1, 0.2), (1, 0.8) - 2(cos, sin)(th), th ~ U[0, pi]; + N(0, 0.2^2 I)."""
    theta, w = gauss_legendre(0, np.pi, panels)
    upper = np.stack([2 * np.cos(theta) - 1, 2 * np.sin(theta) - 0.2], 1)
    lower = np.stack([1 - 2 * np.cos(theta), 0.8 - 2 * np.sin(theta)], 1)
    log_w = np.log(np.concatenate([w, w]) / (2 * np.pi))
    return gaussian_curve(points, np.vstack([upper, lower]), log_w, 0.2)


def swissroll_density(points, panels):
    """(t cos t, t sin t)/5 with t ~ U[1.5 pi, 4.5 pi], + N(0, 0.2^2 I)."""
    t, w = gauss_legendre(1.5 * np.pi, 4.5 * np.pi, panels)  # t = 1.5 pi (1 + 2U)
    centres = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5
    return gaussian_curve(points, centres, np.log(w / (3 * np.pi)), 0.2)


def two_spirals_density(points, panels):
    """Arm (-t cos t + U1/2, t sin t + U2/2)/3 + N(0, 0.1^2), t = 3 pi sqrt(U); the other arm
    is its negation. Per axis, U[0, 1/6) convolved with N(0, 0.1^2) is a difference of CDFs."""
    t, w = gauss_legendre(0, 3 * np.pi, panels)
    w = w * 2 * t / (3 * np.pi) ** 2
    centres = np.stack([-t * np.cos(t), t * np.sin(t)], 1) / 3

    def kernel(d):  # density of U[0, 1/6) + N(0, 0.1^2) at d
        return 6 * (ndtr(d / 0.1) - ndtr((d - 1 / 6) / 0.1))

    def arm(x):
        d = x[:, None, :] - centres[None]
        return (kernel(d[..., 0]) * kernel(d[..., 1])) @ w

    with np.errstate(divide="ignore"):  # 0 far from the spirals (mass-check grid only)
        return np.log(chunked(points, lambda x: (arm(x) + arm(-x)) / 2, 2 * len(t)))


def eight_gaussians_density(points):
    """Equal mixture of N(4 (cos, sin)(k pi/4) / 1.414, (0.5/1.414)^2 I), k = 0..7."""
    angles = np.arange(8) * np.pi / 4
    centres = 4 * np.stack([np.cos(angles), np.sin(angles)], 1) / 1.414
    return gaussian_curve(points, centres, np.full(8, -np.log(8)), 0.5 / 1.414)


def checkerboard_density(points):
    """1/32 on the 8 squares of side 2 where floor(x/2) + floor(y/2) is even, in [-4, 4)^2."""
    cells = np.floor(points / 2)
    inside = (np.abs(cells + 0.5) < 2).all(1) & ((cells.sum(1) % 2) == 0)
    return np.where(inside, -np.log(32.0), -np.inf)


def pinwheel_residual(f0, arm, u0, u1):
    """First coordinate of R(a(f0)) u, minus f0: zero where f0 gives a pre-image of x = 2u."""
    a = arm + np.exp(f0) / 4
    return np.cos(a) * u0 - np.sin(a) * u1 - f0


def pinwheel_density(points, step):
    """x = 2 R(-a) f, f ~ N((1, 0), diag(0.3^2, 0.1^2)), a = 2 pi k/5 + exp(f0)/4, k uniform.
    p(x) sums N(f) / (4 |1 + f1 exp(f0)/4|) over the pre-images f = R(a) x/2, found on a grid
    of f0 (its 7-sigma range) by sign changes then bisection."""
    grid = np.arange(1 - 7 * 0.3, 1 + 7 * 0.3 + step, step)

    def block(x):
        u, total = x / 2, np.zeros(len(x))
        for arm in 2 * np.pi * np.arange(5) / 5:
            values = pinwheel_residual(grid[None], arm, u[:, :1], u[:, 1:])
            row, col = np.nonzero(values[:, :-1] * values[:, 1:] < 0)
            lo, hi, h_lo, u0, u1 = grid[col], grid[col + 1], values[row, col], u[row, 0], u[row, 1]
            for _ in range(45):
                mid = (lo + hi) / 2
                h_mid = pinwheel_residual(mid, arm, u0, u1)
                same = h_mid * h_lo > 0
                lo, hi, h_lo = np.where(same, mid, lo), np.where(same, hi, mid), np.where(same, h_mid, h_lo)
            f0 = (lo + hi) / 2
            a = arm + np.exp(f0) / 4
            f1 = np.sin(a) * u0 + np.cos(a) * u1
            dens = np.exp(-((f0 - 1) ** 2) / 0.18 - f1**2 / 0.02) / (2 * np.pi * 0.03)
            np.add.at(total, row, dens / (5 * 4 * np.abs(1 + f1 * np.exp(f0) / 4)))
        with np.errstate(divide="ignore"):  # 0 far from the arms (mass-check grid only)
            return np.log(total)

    return chunked(points, block, 5 * len(grid))


def log_density(toy: str, points: np.ndarray, resolution=None) -> np.ndarray:
    """Exact log-density (nats) of ``toy`` at ``points`` (N, 2); ``resolution`` overrides the grid."""
    res = RESOLUTION.get(toy) if resolution is None else resolution
    if toy in CIRCLES:
        return rice_circles(points, *CIRCLES[toy])
    if toy in ("8gaussians", "checkerboard"):
        return eight_gaussians_density(points) if toy == "8gaussians" else checkerboard_density(points)
    fn = {"moons": moons_density, "swissroll": swissroll_density,
          "2spirals": two_spirals_density, "pinwheel": pinwheel_density}[toy]  # fmt: skip
    return fn(points, res)


def truth(toy: str) -> dict:
    """Entropy by Monte Carlo with its checks: grid mass, chi-square of samples, grid doubling."""
    cache = OUT / f"truth_{toy}.json"
    config = {"mc_samples": MC_SAMPLES, "mc_seed": MC_SEED, "resolution": RESOLUTION.get(toy)}
    if cache.exists() and (cached := json.loads(cache.read_text()))["config"] == config:
        return cached
    start = time.perf_counter()
    samples = TOYS[toy](MC_SAMPLES, np.random.default_rng(MC_SEED))
    nll = -log_density(toy, samples)
    doubling = None
    if toy in RESOLUTION:  # the same entropy with twice the panels (half the root-search step)
        finer = RESOLUTION[toy] * (0.5 if toy == "pinwheel" else 2)
        doubling = float(np.mean(-log_density(toy, samples, finer)) - nll.mean())
    cross_check = None
    if toy in CIRCLES:  # the Rice closed form against a trapezoid sum over 2048 angles per circle
        (radii, sigma), angle = CIRCLES[toy], np.linspace(0, 2 * np.pi, 2048, endpoint=False)
        centres = np.vstack([r * np.stack([np.cos(angle), np.sin(angle)], 1) for r in radii])
        quad = gaussian_curve(samples[:20_000], centres, np.full(len(centres), -np.log(len(centres))), sigma)
        cross_check = float(np.abs(quad + nll[:20_000]).max())
    half = HALF_WIDTH[toy]
    edges = np.linspace(-half, half, GRID_CELLS + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    gx, gy = np.meshgrid(mid, mid, indexing="ij")
    cell_mass = np.exp(log_density(toy, np.stack([gx.ravel(), gy.ravel()], 1))) * (edges[1] - edges[0]) ** 2
    cell_mass = cell_mass.reshape(GRID_CELLS, GRID_CELLS)
    bins = GRID_CELLS // BIN_CELLS
    expected = cell_mass.reshape(bins, BIN_CELLS, bins, BIN_CELLS).sum((1, 3)) * MC_SAMPLES
    counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=[edges[::BIN_CELLS]] * 2)
    used = expected >= 5
    chi2 = float((((counts - expected) ** 2)[used] / expected[used]).sum())
    result = {"config": config, "entropy": float(nll.mean()),
              "entropy_se": float(nll.std(ddof=1) / np.sqrt(MC_SAMPLES)),
              "doubling_change": doubling, "rice_vs_quadrature_max": cross_check,
              "grid_mass": float(cell_mass.sum()), "chi2_per_dof": chi2 / max(int(used.sum()) - 1, 1),
              "chi2_bins": int(used.sum()), "outside_box": float(1 - counts.sum() / MC_SAMPLES),
              "seconds": time.perf_counter() - start}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


def train(toy: str, model: str, seed: int, steps: int) -> Path | None:
    """A finished run directory of the CLI's default command (reused when it has results.json);
    None when the run failed (its log is next to it)."""
    run_dir = RUNS / f"{toy}-{model}-seed{seed}-steps{steps}"
    if not (run_dir / "results.json").exists():
        RUNS.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "clayflow", "train", "--data", toy, "--model", model,
                   "--seed", str(seed), "--steps", str(steps), "--no-plots", "--no-progress",
                   "--out", str(run_dir), "--force"]  # fmt: skip
        print("  $", " ".join(command[1:]), flush=True)
        with open(RUNS / f"{run_dir.name}.log", "w") as log:
            run = subprocess.run(command, check=False, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if run.returncode:
            print(f"  FAILED (exit {run.returncode}), see {RUNS / run_dir.name}.log", flush=True)
            return None
    return run_dir


def paired(nll_model: np.ndarray, nll_true: np.ndarray) -> dict:
    """Mean NLL and its se, and the gap to the truth on the same rows with its paired se."""
    n, diff = len(nll_model), nll_model - nll_true
    return {"nll": nll_model.mean(), "nll_se": nll_model.std(ddof=1) / np.sqrt(n),
            "gap": diff.mean(), "gap_se": diff.std(ddof=1) / np.sqrt(n)}  # fmt: skip


def gmm_baseline(toy: str, train_rows: np.ndarray, test_rows: np.ndarray) -> tuple[int, np.ndarray]:
    """Components chosen by BIC (cached) and the per-row NLL of that mixture on ``test_rows``."""
    cache = OUT / f"gmm_{toy}.json"
    if cache.exists():
        best = json.loads(cache.read_text())["components"]
    else:
        mixtures = (GaussianMixture(k, covariance_type="full", random_state=GMM_SEED) for k in range(1, 31))
        bic = [gmm.fit(train_rows).bic(train_rows) for gmm in mixtures]
        best = int(np.argmin(bic)) + 1
        cache.write_text(json.dumps({"components": best, "bic": bic}))
    gmm = GaussianMixture(best, covariance_type="full", random_state=GMM_SEED).fit(train_rows)
    return best, -gmm.score_samples(test_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toys", default=",".join(TOYS))
    parser.add_argument("--models", default="realnvp,nsf,maf,glow")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    toys, models = args.toys.split(","), args.models.split(",")
    print(f"config: toys={toys} models={models} steps={args.steps} train seed={args.seed} "
          f"clayflow data seed={DATA_SEED} (test rows)\n  MC samples={MC_SAMPLES} MC seed={MC_SEED} "
          f"GMM seed={GMM_SEED} (1..30, BIC) grids={RESOLUTION}\n  "
          f"runs={RUNS} out={OUT}", flush=True)  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows, checks, started = [], [], time.perf_counter()
    for toy in toys:
        print(f"{toy}: truth", flush=True)
        check = truth(toy)
        checks.append({"toy": toy, **{k: v for k, v in check.items() if k != "config"}})
        print("  " + json.dumps(checks[-1]), flush=True)
        data = load_dataset(toy)
        test = data.test.double().numpy()
        nll_true = -log_density(toy, test)
        base = {"toy": toy, "entropy": check["entropy"], "entropy_se": check["entropy_se"],
                "true_test_nll": nll_true.mean()}  # fmt: skip
        for model in models:
            run_dir = train(toy, model, args.seed, args.steps)
            if run_dir is None:
                continue
            result = json.loads((run_dir / "results.json").read_text())
            with torch.no_grad():
                nll_model = -clayflow.load(run_dir).log_prob(data.test).double().numpy()
            times = {"cli_test_nll": result["test_nll"], "train_seconds": result["train_seconds"]}
            rows.append({**base, "model": model, **times, **paired(nll_model, nll_true)})
            print(f"  {model}: gap {rows[-1]['gap']:.4f} ± {rows[-1]['gap_se']:.4f}", flush=True)
        components, nll_gmm = gmm_baseline(toy, data.train.double().numpy(), test)
        rows.append({**base, "model": f"gmm{components}", "cli_test_nll": np.nan, "train_seconds": np.nan,
                     **paired(nll_gmm, nll_true)})  # fmt: skip
        print(f"  {rows[-1]['model']}: gap {rows[-1]['gap']:.4f} ± {rows[-1]['gap_se']:.4f}", flush=True)
    write_outputs(rows, checks, toys, models, time.perf_counter() - started)


def write_outputs(rows: list[dict], checks: list[dict], toys, models, seconds: float) -> None:
    """Markdown tables (printed and saved) and CSVs of results and checks."""
    by = {(r["toy"], r["model"]): r for r in rows}
    missing = dict.fromkeys(("nll", "nll_se", "gap", "gap_se", "train_seconds"), np.nan)  # a failed run
    per_model = [f"{m} {column}" for m in models for column in ("NLL", "gap", "s")]
    head = ["toy", "H true (nats)", "true NLL test", *per_model, "GMM gap (k)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for toy in toys:
        first = next(r for r in rows if r["toy"] == toy)
        cells = [toy, f"{first['entropy']:.4f} ± {first['entropy_se']:.4f}", f"{first['true_test_nll']:.4f}"]
        for r in (by.get((toy, m), missing) for m in models):
            cells += [f"{r['nll']:.4f} ± {r['nll_se']:.4f}", f"{r['gap']:.4f} ± {r['gap_se']:.4f}",
                      f"{r['train_seconds']:.0f}"]  # fmt: skip
        g = next(r for r in rows if r["toy"] == toy and r["model"].startswith("gmm"))
        cells.append(f"{g['gap']:.4f} ± {g['gap_se']:.4f} ({g['model'][3:]})")
        lines.append("| " + " | ".join(cells) + " |")
    keys = ["grid_mass", "doubling_change", "rice_vs_quadrature_max", "chi2_per_dof", "chi2_bins",
            "outside_box", "seconds"]  # fmt: skip
    check_lines = ["| toy | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for c in checks:
        cells = [f"{c[k]:.10f}" if k == "grid_mass" else "-" if c[k] is None else f"{c[k]:.3g}" for k in keys]
        check_lines.append("| " + " | ".join([c["toy"], *cells]) + " |")
    text = "\n".join(["## Test NLL and paired gap to the true density (nats per row)", "", *lines, "",
                      "## Checks of the true densities", "", *check_lines, "",
                      f"total {seconds:.0f} s (this call; finished runs and caches are reused)"])  # fmt: skip
    print(text)
    (OUT / "toy_entropy.md").write_text(text + "\n")
    for name, table in (("toy_entropy.csv", rows), ("checks.csv", checks)):
        with open(OUT / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)


if __name__ == "__main__":
    main()

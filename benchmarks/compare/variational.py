"""Variational inference (reverse KL) on Rezende & Mohamed's 2-D energies U1-U4: clayflow's
``fit_target`` beside normflows' ``NormalizingFlow.reverse_kld``, at equal wall-clock.

    python benchmarks/compare/variational.py                        # about 25 minutes, 1 thread
    python benchmarks/compare/variational.py --budget 5 --seeds 0 --targets u1   # a smoke test
    python benchmarks/compare/variational.py --flush-denormal --out <folder>   # see the last paragraph

Writes ``benchmarks/results/compare_variational/{variational.csv,variational.md,u_targets.png}``.
Two seeds by default: three would take 36 minutes of training alone at the 60-second budget.

Both libraries fit the same unnormalised density: clayflow's ``load_target(name)``, wrapped as
an ``nf.distributions.Target`` for normflows. Contenders (float32, batch 512, no torch.compile):

* ``clayflow``: ``models.realnvp(2)`` as shipped (8 affine couplings, MLP 2 x 128 ReLU, tanh-bounded
  log-scale, alternating masks, fixed N(0, I) base), trained by ``fit_target`` with its defaults
  (fused Adam lr 1e-3, cosine decay to 0, gradient-norm clip 10), ``anneal_steps=1000`` (``clayflow fit``'s
  default at its 5000 steps) and ``seed`` the run's (``fit_target`` seeds every step's draws). The
  cosine needs a step count: a 2-second pilot run measures steps/s and ``steps = 1.1 x rate x budget``
  (the budget stops training first, the rate then at 2 % of its peak; a shortfall would stop it early).
* ``normflows RealNVP``: normflows' Real NVP example (``real_nvp_colab.ipynb``), 8 layers instead of
  32 and width 128 instead of 64 to match clayflow: ``AffineCouplingBlock(MLP([1, 128, 128, 2],
  init_zeros=True))`` (exp scale) then ``Permute(2, "swap")``, trainable ``DiagGaussian(2)`` base.
* ``normflows Planar``: ``Planar((2,))`` x 32 (tanh) on a ``DiagGaussian(2)``, as in normflows'
  ``comparison_plan_rad_aff.ipynb`` (K = 32).

Both normflows models train as in that notebook, normflows' own reverse-KL example on 2-D targets:
``torch.optim.Adam(lr=1e-3, weight_decay=1e-3)``, a constant rate, ``reverse_kld(512, beta)``
with ``beta = min(1, 0.01 + it / anneal)``, non-finite losses skipped. The notebook draws batches
of 1024 and anneals over 10,000 of its 20,000 iterations (none on the sinusoidal targets); here
every contender gets batch 512 and 1,000 annealing steps, clayflow's setting.

Each run trains for ``--budget`` seconds (evaluation and pilot excluded, checked after every
step); the libraries take turns within a (target, seed), the order rotating with the seed.
Scoring is the same for all: 20,000 draws in eval mode from the library's own sample call with
log q (clayflow ``sample_and_log_prob``, normflows ``sample``), ESS fraction and ELBO from
``ImportanceWeights``, KL(q || p) = log Z - ELBO with log Z from a 2001^2 grid over the targets'
box (checked against 1001^2 and a larger box). The sample log q is checked against the flow's own
``log_prob`` of those samples (for normflows' Planar, which has no inverse, against log q0(z) -
log |det df/dz| with the Jacobian by autograd, in float64).

On the CPU, normflows' RealNVP slows down about 3.5-fold after some 1,500 steps: the example's
weight decay drives the weights of dead ReLU units towards zero until they are subnormal floats
(9,000 of its 136,000 parameters after 24 s), and matrix products over subnormals are slow.
``--flush-denormal`` (``torch.set_flush_denormal(True)``, for every contender) removes that.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import matplotlib
import normflows as nf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

import clayflow
from clayflow import models
from clayflow.variational import ImportanceWeights, Target, fit_target, load_target

matplotlib.use("Agg")
from matplotlib import pyplot as plt

CLAYFLOW, NF_REALNVP, NF_PLANAR = "clayflow", "normflows RealNVP", "normflows Planar"
LIBRARIES = (CLAYFLOW, NF_REALNVP, NF_PLANAR)
BATCH, LR, ANNEAL = 512, 1e-3, 1000
NF_WEIGHT_DECAY, NF_LAYERS, NF_HIDDEN, PLANAR_K = 1e-3, 8, 128, 32
EVAL_SAMPLES, PILOT_SECONDS, PILOT_MARGIN = 20_000, 2.0, 1.1
GRID, COARSE_GRID, PLOT_GRID, PLOT_SAMPLES = 2001, 1001, 200, 1_000_000
RESULTS = Path(__file__).resolve().parents[1] / "results" / "compare_variational"


class NormflowsTarget(nf.distributions.Target):
    """clayflow's target as normflows sees it: ``log_prob`` is clayflow's log p~, unchanged."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.target(z)


def grid_log_z(target: Target, box, points: int, chunk: int = 1_000_000) -> float:
    """log Z by a Riemann sum of p~ on a ``points`` x ``points`` grid over ``box``, float64."""
    (low1, low2), (high1, high2) = box
    x1 = torch.linspace(low1, high1, points, dtype=torch.float64)
    x2 = torch.linspace(low2, high2, points, dtype=torch.float64)
    grid = torch.cartesian_prod(x1, x2)
    log_p = torch.cat([target(part) for part in grid.split(chunk)])
    cell = (x1[1] - x1[0]) * (x2[1] - x2[0])
    return float(torch.logsumexp(log_p, 0) + torch.log(cell))


def build(library: str, target: Target) -> torch.nn.Module:
    """A fresh model of ``library`` (seeded by the caller)."""
    if library == CLAYFLOW:
        return models.realnvp(2)
    if library == NF_REALNVP:
        flows = []
        for _ in range(NF_LAYERS):
            flows += [nf.flows.AffineCouplingBlock(nf.nets.MLP([1, NF_HIDDEN, NF_HIDDEN, 2], init_zeros=True)),
                      nf.flows.Permute(2, mode="swap")]  # fmt: skip
    else:
        flows = [nf.flows.Planar((2,)) for _ in range(PLANAR_K)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2), flows, NormflowsTarget(target))


def train_clayflow(flow, target: Target, budget: float, seed: int) -> tuple[int, float]:
    """``fit_target`` for ``budget`` s, its cosine schedule sized by a pilot run's steps/s."""
    pilot = fit_target(models.realnvp(2), target, steps=10**9, anneal_steps=ANNEAL, seed=seed,
                       max_seconds=PILOT_SECONDS, eval_every=10**9, eval_samples=256)  # fmt: skip
    steps = int(PILOT_MARGIN * pilot.history[-1]["step"] / pilot.seconds * budget)
    result = fit_target(flow, target, steps=steps, batch_size=BATCH, lr=LR, anneal_steps=ANNEAL, seed=seed,
                        max_seconds=budget, eval_every=10**9, eval_samples=256)  # fmt: skip
    return int(result.history[-1]["step"]), result.seconds


def train_normflows(model: nf.NormalizingFlow, budget: float) -> tuple[int, float]:
    """normflows' reverse-KL loop (comparison_plan_rad_aff.ipynb) until ``budget`` s of training."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=NF_WEIGHT_DECAY)
    steps, trained = 0, 0.0
    model.train()
    while trained < budget:
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = model.reverse_kld(BATCH, beta=min(1.0, 0.01 + steps / ANNEAL))
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        steps += 1
        trained += time.perf_counter() - start
    return steps, trained


def log_q_gap(library: str, model, x: torch.Tensor, log_q: torch.Tensor, seed: int) -> float:
    """max |sample log q - an independent log q| over the draws (see the module docstring)."""
    if library != NF_PLANAR:
        with torch.no_grad():
            other = model.log_prob(x)
    else:  # float64: a float32 2 x 2 determinant loses digits where the Jacobian is near singular
        torch.manual_seed(seed)
        z = model.q0(len(x))[0].detach().double().requires_grad_()  # the z that model.sample(n) drew
        double = copy.deepcopy(model).double()
        out = double.forward(z)
        rows = [torch.autograd.grad(out[:, i].sum(), z, retain_graph=True)[0] for i in range(2)]
        det = rows[0][:, 0] * rows[1][:, 1] - rows[0][:, 1] * rows[1][:, 0]
        other = (double.q0.log_prob(z) - det.abs().log()).detach()
    return float((other - log_q).abs().max())


def evaluate(library: str, model, target: Target, log_z: float, seed: int) -> dict:
    """ESS, KL and log-q agreement of ``EVAL_SAMPLES`` fresh draws in eval mode."""
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        if library == CLAYFLOW:
            x, log_q = model.sample_and_log_prob(EVAL_SAMPLES)
        else:
            x, log_q = model.sample(EVAL_SAMPLES)
        weights = ImportanceWeights(target(x), log_q)
    return {"ess": weights.ess, "kl": log_z - weights.elbo, "elbo": weights.elbo, "log_z_is": weights.log_z,
            "pareto_k": weights.pareto_k, "logq_gap": log_q_gap(library, model, x, log_q, seed)}  # fmt: skip


def plot_cells(box) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The picture's grid over ``box``: cell edges along x1 and x2, and the cell centres ``(G², 2)``."""
    (low1, low2), (high1, high2) = box
    edges1, edges2 = np.linspace(low1, high1, PLOT_GRID + 1), np.linspace(low2, high2, PLOT_GRID + 1)
    centres = torch.cartesian_prod(torch.from_numpy((edges1[1:] + edges1[:-1]) / 2),
                                   torch.from_numpy((edges2[1:] + edges2[:-1]) / 2))  # fmt: skip
    return edges1, edges2, centres


def plot_density(library: str, model, box, seed: int) -> np.ndarray:
    """A model's density on the picture's cells (Planar, without an inverse: a histogram of samples)."""
    edges1, edges2, centres = plot_cells(box)
    model.eval()
    with torch.no_grad():
        if library == NF_PLANAR:
            torch.manual_seed(seed)
            x = model.sample(PLOT_SAMPLES)[0].numpy()
            counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], [edges1, edges2])
            return counts / (PLOT_SAMPLES * (edges1[1] - edges1[0]) * (edges2[1] - edges2[0]))
        return model.log_prob(centres.float()).exp().reshape(PLOT_GRID, PLOT_GRID).numpy()


def target_density(target: Target, log_z: float) -> np.ndarray:
    """p = p~ / Z on the picture's cells."""
    return (target(plot_cells(target.box)[2]) - log_z).exp().reshape(PLOT_GRID, PLOT_GRID).numpy()


def cell(rows: list[dict], name: str, library: str) -> list[dict]:
    """The rows of one target and library, one per seed."""
    return [r for r in rows if (r["target"], r["library"]) == (name, library)]


def best(rows: list[dict], name: str, libraries, key: str) -> str:
    """The library with the lowest mean KL (``key="kl"``) or the highest mean ESS (``"ess"``)."""
    sign = 1 if key == "kl" else -1
    score = {lib: sign * statistics.fmean(r[key] for r in cell(rows, name, lib)) for lib in libraries}
    return min(score, key=lambda lib: score[lib] if np.isfinite(score[lib]) else np.inf)


def summarise(rows: list[dict], targets: list[str]) -> list[str]:
    """The results table: per target and library, the mean (min-max over seeds), and who wins."""
    lines = ["| target | library | ESS fraction | KL(q‖p) nats | steps | train s | Pareto k | wins on |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in targets:
        winners = {"KL": best(rows, name, LIBRARIES, "kl"), "ESS": best(rows, name, LIBRARIES, "ess")}
        for lib in LIBRARIES:
            group = cell(rows, name, lib)
            ess, kl = [r["ess"] for r in group], [r["kl"] for r in group]
            lines.append(f"| {name} | {lib} | {statistics.fmean(ess):.3f} ({min(ess):.3f}-{max(ess):.3f}) | "
                         f"{statistics.fmean(kl):.4f} ({min(kl):.4f}-{max(kl):.4f}) | "
                         f"{statistics.fmean(r['steps'] for r in group):,.0f} | "
                         f"{statistics.fmean(r['train_seconds'] for r in group):.1f} | "
                         f"{statistics.fmean(r['pareto_k'] for r in group):.2f} | "
                         f"{', '.join(k for k, winner in winners.items() if winner == lib)} |")  # fmt: skip
    return lines


def write_markdown(path: Path, rows: list[dict], log_z: dict, args, seconds: float, load: tuple) -> None:
    """variational.md: command, machine, versions, config, results, log Z checks, log-q checks."""
    machine = report.machine()
    command = (f"python benchmarks/compare/variational.py --budget {args.budget:g} --seeds "
               f"{' '.join(map(str, args.seeds))} --targets {' '.join(args.targets)}"
               f"{' --flush-denormal' if args.flush_denormal else ''}"
               f"{'' if args.out == RESULTS else f' --out {args.out}'}")  # fmt: skip
    gaps = []
    for name in args.targets:
        worst = [max(r["logq_gap"] for r in cell(rows, name, lib)) for lib in LIBRARIES]
        gaps.append(f"| {name} | {' | '.join(f'{gap:.2e}' for gap in worst)} |")
    text = f"""# Variational inference on U1-U4: clayflow beside normflows at equal wall-clock

Command: `{command}`; took {seconds / 60:.1f} min.

Machine: {machine["cpu"]}, {machine["cores"]} cores, {machine["platform"]}, Python {machine["python"]}, \
{machine["threads"]} torch thread; 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end \
(the cores were shared with other work; the contenders took turns under it); versions: clayflow \
{clayflow.__version__}, normflows {nf.__version__}, torch {torch.__version__}.

Config: {args.budget:g} s of training per run (evaluation excluded), subnormal floats \
{"flushed to zero" if args.flush_denormal else "kept (torch's default)"}, batch {BATCH}, lr {LR:g}, \
β annealed from 0.01 to 1 over {ANNEAL} steps, seeds {args.seeds}, {EVAL_SAMPLES:,} evaluation draws. \
clayflow: `models.realnvp(2)` + `fit_target` defaults (fused Adam, cosine sized by a pilot run, clip 10). \
normflows (its reverse-KL example): RealNVP = {NF_LAYERS} x (AffineCouplingBlock(MLP[1, {NF_HIDDEN}, \
{NF_HIDDEN}, 2], init_zeros) + swap), Planar = {PLANAR_K} x Planar(tanh), both on a trainable DiagGaussian, \
torch Adam lr {LR:g}, weight decay {NF_WEIGHT_DECAY:g}, constant rate. Details: the docstring of \
`benchmarks/compare/variational.py`.

## Results

Mean over seeds (min-max). KL(q‖p) = log Z - ELBO, log Z by grid quadrature; ESS = (Σw)² / (n Σw²). \
Lower KL and higher ESS are better; *wins on*: the lowest mean KL / the highest mean ESS of the target. \
Without `--flush-denormal`, normflows RealNVP's step rate falls about 3.5-fold once weight decay has made \
some of its weights subnormal floats (see the script's docstring).

{chr(10).join(summarise(rows, args.targets))}

## log Z of the targets (grid quadrature, float64)

| target | 2001² on the box | 1001² on the box | 2001² on a box 1.5x as wide |
|---|---|---|---|
{chr(10).join(f"| {name} | {v[0]:.6f} | {v[1]:.6f} | {v[2]:.6f} |" for name, v in log_z.items())}

## Does the sample log q agree with the flow's own density?

Max over the draws of |log q from sampling - log q recomputed|, worst seed. clayflow and normflows \
RealNVP: `log_prob` of the samples; normflows Planar (no inverse): log q0(z) - log|det ∂x/∂z| by autograd \
in float64.

| target | {" | ".join(LIBRARIES)} |
|{"---|" * (len(LIBRARIES) + 1)}
{chr(10).join(gaps)}

Picture: `u_targets.png`, per row the target p, clayflow's q and the better normflows model's q (by mean \
KL), seed {args.seeds[0]}; Planar's q as a histogram of {PLOT_SAMPLES:,} samples; white where a model's \
`log_prob` is not finite.
"""
    path.write_text(text)


def plot(path: Path, targets: dict, log_z: dict, fitted: dict, rows: list[dict], seed: int) -> None:
    """u_targets.png: per target the density, clayflow's and the better normflows model's."""
    fig, axes = plt.subplots(len(targets), 3, figsize=(9, 3 * len(targets)), squeeze=False)
    for row, (name, target) in enumerate(targets.items()):
        rival = best(rows, name, (NF_REALNVP, NF_PLANAR), "kl")
        panels = {f"{name}: target": target_density(target, log_z[name][0]),
                  CLAYFLOW: plot_density(CLAYFLOW, fitted[name, CLAYFLOW], target.box, seed),
                  rival: plot_density(rival, fitted[name, rival], target.box, seed)}  # fmt: skip
        top = max(float(np.nanmax(p)) for p in panels.values())
        (low1, low2), (high1, high2) = target.box
        for ax, (title, density) in zip(axes[row], panels.items()):
            ax.imshow(density.T, origin="lower", extent=(low1, high1, low2, high2), vmin=0, vmax=top)
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--targets", nargs="+", default=["u1", "u2", "u3", "u4"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(args.flush_denormal)
    args.out.mkdir(parents=True, exist_ok=True)
    started, load = time.perf_counter(), os.getloadavg()[0]
    targets = {name: load_target(name) for name in args.targets}
    log_z = {}
    for name, target in targets.items():
        (low1, low2), (high1, high2) = target.box
        wide = ((1.5 * low1, 1.5 * low2), (1.5 * high1, 1.5 * high2))
        log_z[name] = (grid_log_z(target, target.box, GRID), grid_log_z(target, target.box, COARSE_GRID),
                       grid_log_z(target, wide, GRID))  # fmt: skip
        print(f"{name}: log Z {log_z[name][0]:.6f} (1001²: {log_z[name][1]:.6f}, wide: {log_z[name][2]:.6f})")
    rows, fitted = [], {}
    for name, target in targets.items():
        for turn, seed in enumerate(args.seeds):
            for library in LIBRARIES[turn % 3 :] + LIBRARIES[: turn % 3]:
                torch.manual_seed(seed)
                model = build(library, target)
                steps, seconds = (train_clayflow(model, target, args.budget, seed) if library == CLAYFLOW
                                  else train_normflows(model, args.budget))  # fmt: skip
                scores = evaluate(library, model, target, log_z[name][0], 10_000 + seed)
                row = {"target": name, "library": library, "seed": seed, "steps": steps,
                       "train_seconds": seconds, "log_z_grid": log_z[name][0], **scores}  # fmt: skip
                rows.append(row)
                print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
                if seed == args.seeds[0]:
                    fitted[name, library] = model
    with (args.out / "variational.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(args.out / "u_targets.png", targets, log_z, fitted, rows, args.seeds[0])
    seconds = time.perf_counter() - started
    write_markdown(args.out / "variational.md", rows, log_z, args, seconds, (load, os.getloadavg()[0]))
    print(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()

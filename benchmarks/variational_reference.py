r"""A long MCMC reference of the logistic-regression posterior, for judging variational flows.

    python benchmarks/variational_reference.py [--chains 4] [--warmup 5000] [--draws 300000]
        [--seed 0] [--out benchmarks/results/variational_reference] [--save-draws FILE.npy]

Target: ``load_target("logistic_regression")``, log p̃(θ) = Σₙ [yₙ xₙᵀθ - log(1 + exp(xₙᵀθ))]
- |θ|²/2 + const on breast_cancer (intercept and 30 standardised features: θ ∈ R³¹), float64.

Laplace start: the mode θ̂ = argmax log p̃ (torch LBFGS) and Σ = (-∇² log p̃(θ̂))⁻¹ (autograd
Hessian). HMC with the dense mass matrix M = Σ⁻¹ is identity-mass HMC in the whitened
coordinates z = C⁻¹(θ - θ̂), Σ = CCᵀ, where the posterior is close to N(0, I); the sampler
runs there, every chain a row of one batch, with autograd gradients of
log p̃(θ̂ + Cz). One transition: p ~ N(0, I); leapfrog with step ε for n = ⌈τ/ε⌉ steps,
τ ~ U(π/4, 3π/4) drawn afresh each transition (the jitter: on N(0, I) the lag-one
autocorrelation after time τ is cos τ, whose mean over that range is 0); accept with
probability α = min(1, exp(-ΔH)), H = -log p̃ + |p|²/2. A transition is divergent where
ΔH > 1000 or H is not finite. Chains start at θ̂ + 2Cξ, ξ ~ N(0, I) (twice the Laplace spread).
Warm-up tunes ε by dual averaging (Hoffman & Gelman 2014, algorithm 5) of the chains'
mean α to δ = 0.8; sampling keeps ε fixed at the averaged value.

Diagnostics (numpy, after Vehtari et al. 2021): rank-normalised split R̂ (the larger of the
bulk and folded-tail R̂), bulk ESS (rank-normalised split chains) and the ESS of the mean
(raw split chains), both by Geyer's initial monotone sequence; MCSE of each mean over its
posterior sd = 1/√ESS_mean. Writes ``DIR/logistic_regression.json`` and ``.md`` (with the
Laplace approximation beside the HMC moments).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import rankdata
from sklearn.datasets import load_breast_cancer

from clayflow.variational import load_target

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "variational_reference"
TARGET_ACCEPT, DIVERGENCE = 0.8, 1000.0
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75  # dual-averaging constants of Hoffman & Gelman (2014)
TIME_RANGE = (math.pi / 4, 3 * math.pi / 4)  # integration time τ in whitened units


def laplace(target) -> tuple[torch.Tensor, torch.Tensor]:
    """The mode θ̂ of log p̃ and the Laplace covariance Σ = (-∇² log p̃(θ̂))⁻¹."""
    theta = torch.zeros(1, target.dims, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theta], lr=1, max_iter=1000, tolerance_grad=1e-12, tolerance_change=0,
                                  history_size=50, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimiser.zero_grad()
        loss = -target(theta).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    mode = theta.detach()[0]
    hessian = torch.autograd.functional.hessian(lambda t: -target(t[None])[0], mode)
    covariance = torch.linalg.inv(hessian)
    return mode, (covariance + covariance.T) / 2


class WhitenedHMC:
    """HMC on log p̃(θ̂ + Cz) over a batch of chains z ``(chains, D)``, identity mass."""

    def __init__(self, log_density, mode: torch.Tensor, covariance: torch.Tensor, generator: torch.Generator):
        self.log_density, self.mode, self.generator = log_density, mode, generator
        self.chol = torch.linalg.cholesky(covariance)

    def to_theta(self, z: torch.Tensor) -> torch.Tensor:
        return self.mode + z @ self.chol.T

    def value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p̃(θ̂ + Cz) ``(chains,)`` and its gradient in z, Cᵀ∇θ log p̃ ``(chains, D)``."""
        with torch.enable_grad():
            z = z.detach().requires_grad_()
            value = self.log_density(self.to_theta(z))
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    def transition(self, z, value, grad, step: float):
        """One jittered-length HMC transition of every chain: the new (z, value, grad), the
        acceptance probability and divergence flag per chain, and the leapfrog steps taken."""
        low, high = TIME_RANGE
        tau = low + (high - low) * torch.rand((), generator=self.generator).item()
        n_steps = max(1, math.ceil(tau / step))
        momentum = torch.randn(z.shape, generator=self.generator, dtype=z.dtype)
        energy = -value + 0.5 * (momentum**2).sum(1)
        z_new, p_new, value_new, grad_new = z, momentum + 0.5 * step * grad, value, grad
        for i in range(n_steps):
            z_new = z_new + step * p_new
            value_new, grad_new = self.value_and_grad(z_new)
            p_new = p_new + (step if i < n_steps - 1 else 0.5 * step) * grad_new
        delta = -value_new + 0.5 * (p_new**2).sum(1) - energy
        divergent = ~torch.isfinite(delta) | (delta > DIVERGENCE)
        accept_prob = torch.where(divergent, 0.0, torch.exp(-delta.clamp(min=0)))
        accept = torch.rand(accept_prob.shape, generator=self.generator, dtype=z.dtype) < accept_prob
        keep = accept[:, None]
        z, grad = torch.where(keep, z_new, z), torch.where(keep, grad_new, grad)
        return (z, torch.where(accept, value_new, value), grad), accept_prob, divergent, n_steps


def run_chains(hmc: WhitenedHMC, chains: int, warmup: int, draws: int) -> dict:
    """Warm-up with dual averaging of ε (log ε̄ₘ = m^-κ log εₘ + (1 - m^-κ) log ε̄ₘ₋₁,
    log εₘ = μ - √m/γ · H̄ₘ, H̄ₘ = running mean of δ - αₘ with offset t₀), then ``draws`` at ε̄."""
    dims = hmc.mode.numel()
    z = 2 * torch.randn(chains, dims, generator=hmc.generator, dtype=torch.float64)
    state = (z, *hmc.value_and_grad(z))
    step, mu, h_bar, log_step_bar = 0.5, math.log(5.0), 0.0, 0.0
    warmup_divergent = 0
    for m in range(1, warmup + 1):
        state, accept_prob, divergent, _ = hmc.transition(*state, step)
        warmup_divergent += int(divergent.sum())
        h_bar += (TARGET_ACCEPT - accept_prob.mean().item() - h_bar) / (m + T0)
        log_step = mu - math.sqrt(m) / GAMMA * h_bar
        log_step_bar += m**-KAPPA * (log_step - log_step_bar)
        step = math.exp(log_step)
    step = math.exp(log_step_bar) if warmup else step
    samples = np.empty((chains, draws, dims))
    accept_sum, divergent_total, leapfrog_total = np.zeros(chains), 0, 0
    for i in range(draws):
        state, accept_prob, divergent, n_steps = hmc.transition(*state, step)
        samples[:, i] = hmc.to_theta(state[0]).numpy()
        accept_sum += accept_prob.numpy()
        divergent_total += int(divergent.sum())
        leapfrog_total += n_steps
    return {"samples": samples, "step_size": step, "mean_leapfrog_steps": leapfrog_total / max(draws, 1),
            "accept_per_chain": (accept_sum / max(draws, 1)).tolist(),
            "divergent": divergent_total, "warmup_divergent": warmup_divergent}  # fmt: skip


def split_chains(x: np.ndarray) -> np.ndarray:
    """``(chains, draws)`` -> ``(2·chains, ⌊draws/2⌋)``: first and last halves of each chain."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, -half:]])


def rank_normal(x: np.ndarray) -> np.ndarray:
    """Φ⁻¹((r - 3/8) / (S + 1/4)) of the pooled ranks r of all S draws."""
    return ndtri((rankdata(x, method="average").reshape(x.shape) - 0.375) / (x.size + 0.25))


def rhat(x: np.ndarray) -> float:
    """R̂ = √(((n - 1)/n · W + B/n) / W) of the chains ``(M, n)`` as given (W: mean within-chain
    variance, B/n: variance of the chain means)."""
    n = x.shape[1]
    between, within = n * x.mean(1).var(ddof=1), x.var(1, ddof=1).mean()
    return float(math.sqrt(((n - 1) / n * within + between / n) / within))


def rank_rhat(x: np.ndarray) -> float:
    """Rank-normalised split R̂: max of the bulk R̂ and the R̂ of the folded draws |x - median|."""
    return max(rhat(rank_normal(split_chains(x))), rhat(rank_normal(split_chains(np.abs(x - np.median(x))))))


def ess(x: np.ndarray) -> float:
    """ESS = M·n / τ̂ of chains ``(M, n)``, τ̂ = -1 + 2 Σₜ ρ̂ₜ with ρ̂ₜ = 1 - (W - mean autocovₜ) / var⁺,
    summed over Geyer's initial positive pairs ρ̂₂ₖ + ρ̂₂ₖ₊₁ > 0, made monotone non-increasing
    (plus, as in Stan, the first non-positive pair's ρ̂₂ₖ where it is positive)."""
    chains, n = x.shape
    centred = x - x.mean(1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=2 * n)
    acov = np.fft.irfft(spectrum * spectrum.conj(), n=2 * n)[:, :n].mean(0) / n  # biased autocov, chain mean
    within = acov[0] * n / (n - 1)
    var_plus = acov[0] + (x.mean(1).var(ddof=1) if chains > 1 else 0.0)
    rho = 1 - (within - acov) / var_plus
    rho[0] = 1.0
    pairs = rho[: n - n % 2].reshape(-1, 2).sum(1)
    positive = np.argmax(pairs <= 0) if (pairs <= 0).any() else len(pairs)
    monotone = np.minimum.accumulate(pairs[:positive])
    tail = rho[2 * positive] if positive < len(pairs) and rho[2 * positive] > 0 else 0.0
    tau = -1 + 2 * monotone.sum() + tail
    return float(chains * n / max(tau, 1 / math.log10(chains * n)))


def diagnose(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Per parameter of ``samples`` ``(chains, draws, D)``: mean, sd, R̂, bulk ESS, MCSE of the mean."""
    columns = [samples[..., d] for d in range(samples.shape[-1])]
    ess_mean = np.array([ess(split_chains(c)) for c in columns])
    sd = samples.reshape(-1, samples.shape[-1]).std(0, ddof=1)
    return {"mean": samples.mean((0, 1)), "sd": sd, "mcse_mean": sd / np.sqrt(ess_mean), "ess_mean": ess_mean,
            "ess_bulk": np.array([ess(rank_normal(split_chains(c))) for c in columns]),
            "rhat": np.array([rank_rhat(c) for c in columns])}  # fmt: skip


def write_markdown(path: Path, record: dict, shown: int = 6) -> None:
    """The summary: worst diagnostics, and HMC against Laplace for the first ``shown`` parameters."""
    config, s, p = record["config"], record["summary"], record["parameters"]
    low, high = s["laplace_sd_ratio_range"]
    lines = [
        f"# Logistic-regression posterior: HMC reference (seed {config['seed']})", "",
        "| chains | warm-up | draws | step size | mean leapfrog steps | acceptance | divergent | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
        (f"| {config['chains']} | {config['warmup']} | {config['draws']} | {config['step_size']:.4f} "
         f"| {config['mean_leapfrog_steps']:.2f} | {s['acceptance']:.3f} | {s['divergent']} "
         f"| {record['wall_seconds']:.0f} |"), "",
        (f"Worst R̂ {s['max_rhat']:.5f}; smallest bulk ESS {s['min_ess_bulk']:.0f}; "
         f"largest MCSE/sd {s['max_mcse_over_sd']:.4f}."), "",
        (f"HMC against Laplace N(θ̂, Σ): largest |mean difference| {s['max_laplace_mean_diff_sd']:.3f} sd "
         f"({s['max_laplace_mean_diff_parameter']}); Laplace sd / HMC sd in [{low:.3f}, {high:.3f}]."), "",
        "| parameter | HMC mean | HMC sd | Laplace mean | Laplace sd | (mean diff)/sd | R̂ | bulk ESS |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for d in range(shown):
        diff = (p["mean"][d] - p["laplace_mean"][d]) / p["sd"][d]
        cells = [p["name"][d], *(f"{p[k][d]:.4f}" for k in ("mean", "sd", "laplace_mean", "laplace_sd")),
                 f"{diff:+.3f}", f"{p['rhat'][d]:.4f}", f"{p['ess_bulk'][d]:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def summarise(stats: dict[str, np.ndarray], run: dict, laplace_mean: np.ndarray, laplace_sd: np.ndarray,
              names: list[str]) -> dict:  # fmt: skip
    """The worst diagnostics, and the largest gaps between the Laplace approximation and HMC."""
    mean_diff, sd_ratio = np.abs(stats["mean"] - laplace_mean) / stats["sd"], laplace_sd / stats["sd"]
    return {"max_rhat": float(stats["rhat"].max()), "min_ess_bulk": float(stats["ess_bulk"].min()),
            "max_mcse_over_sd": float((stats["mcse_mean"] / stats["sd"]).max()),
            "acceptance": float(np.mean(run["accept_per_chain"])), "divergent": run["divergent"],
            "max_laplace_mean_diff_sd": float(mean_diff.max()),
            "max_laplace_mean_diff_parameter": names[int(mean_diff.argmax())],
            "laplace_sd_ratio_range": [float(sd_ratio.min()), float(sd_ratio.max())]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5000)
    parser.add_argument("--draws", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--save-draws", type=Path, help="also save the draws (chains, draws, 31) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    target = load_target("logistic_regression")
    names = ["intercept", *load_breast_cancer().feature_names]
    mode, covariance = laplace(target)
    hmc = WhitenedHMC(target, mode, covariance, torch.Generator().manual_seed(args.seed))
    run = run_chains(hmc, args.chains, args.warmup, args.draws)
    samples = run.pop("samples")
    stats = diagnose(samples)
    wall = time.perf_counter() - start
    laplace_sd = covariance.diagonal().sqrt().numpy()
    summary = summarise(stats, run, mode.numpy(), laplace_sd, names)
    config = {"target": "logistic_regression", "chains": args.chains, "warmup": args.warmup,
              "draws": args.draws, "seed": args.seed,
              "mass_matrix": "dense: Laplace covariance (inverse Hessian at the LBFGS mode)",
              "init": "mode + 2 x Laplace (dense) noise", "target_accept": TARGET_ACCEPT,
              "integration_time": "U(pi/4, 3pi/4), steps = ceil(time / step_size)", "torch_threads": 1,
              "step_size": run["step_size"], "mean_leapfrog_steps": run["mean_leapfrog_steps"]}  # fmt: skip
    parameters = {"name": names, **{k: v.tolist() for k, v in stats.items()},
                  "laplace_mean": mode.tolist(), "laplace_sd": laplace_sd.tolist()}  # fmt: skip
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    record = {"config": config, "summary": summary, "run": run, "parameters": parameters,
              "wall_seconds": wall, "versions": versions}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logistic_regression.json").write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(args.out / "logistic_regression.md", record)
    if args.save_draws:
        np.save(args.save_draws, samples)
    printed = {"config": config, "summary": summary, "run": run, "wall_seconds": round(wall, 1)}
    print(json.dumps(printed, indent=1))
    print((args.out / "logistic_regression.md").read_text())


if __name__ == "__main__":
    main()

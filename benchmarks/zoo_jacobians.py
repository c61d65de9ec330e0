"""Every transform of the test zoo (``tests/zoo.py``): its log|det| against the brute-force
autograd Jacobian in float64, and its round trip, as figures rather than PASS/FAIL.

    python benchmarks/zoo_jacobians.py [--out benchmarks/results/zoo/jacobians.md]

For each entry (randomised parameters, eval mode, float64, 3 inputs drawn from its domain
with torch seed 0): max |log|det dz/dx| - log|det J_autograd(x)||, the same for the inverse
direction at z = f(x), and max |f^-1(f(x)) - x|. Entries that are not deterministic
bijections (dequantization) are left out; CNFs solve an ODE, so theirs hold to the solver's
tolerance (marked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from test_transforms import brute_force_logabsdet
from zoo import APPROXIMATE, STOCHASTIC, ZOO, inputs, make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo/jacobians.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# The transform zoo against brute-force Jacobians (float64)",
        "",
        ("`python benchmarks/zoo_jacobians.py`: every entry of `tests/zoo.py` (randomised, eval mode), "
        "3 inputs from its domain (torch seed 0)."),
        "",
        "| transform | event shape | forward log-det error | inverse log-det error | round-trip error |",
        "|---|---|---|---|---|",
    ]
    worst = 0.0
    for name in sorted(ZOO):
        if name in STOCHASTIC:
            continue
        torch.manual_seed(0)
        transform, shape = make(name)
        x = inputs(name, shape)
        with torch.no_grad():
            z, logabsdet = transform(x)
            back, inverse_logabsdet = transform.inverse(z)
        forward = (logabsdet - brute_force_logabsdet(transform, x)).abs().max().item()
        inverse = (inverse_logabsdet - brute_force_logabsdet(transform.inverse, z)).abs().max().item()
        round_trip = (back - x).abs().max().item()
        note = " (ODE: solver tolerance)" if name in APPROXIMATE else ""
        if name not in APPROXIMATE:
            worst = max(worst, forward, inverse)
        lines.append(f"| {name}{note} | {tuple(shape)} | {forward:.1e} | {inverse:.1e} | {round_trip:.1e} |")
        print(lines[-1], flush=True)
    lines += ["", f"Largest log-det error of an exact transform: {worst:.1e} nats."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()

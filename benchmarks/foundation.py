"""Figures for the foundation issue: per-transform inverse and log-det errors, and the
integral of a trained 2D run's density.

    python benchmarks/foundation.py [--run runs/realnvp-moons-...]

Transforms come from the test registry ``tests/zoo.py`` (randomised parameters, eval mode).
Errors are max |x - inverse(forward(x))| and max |logabsdet - log|det J|| with J from
``torch.autograd.functional.jacobian`` in float64, over 64 random inputs, in float64 and float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import clayflow
from clayflow.diagnostics import integrated_mass
from test_transforms import brute_force_logabsdet
from zoo import ZOO, inputs, make


def transform_errors(batch: int = 64) -> None:
    print(
        f"{'transform':36s} {'inverse err f64':>16s} {'logdet err f64':>16s} {'inverse err f32':>16s} {'logdet err f32':>16s}"
    )
    for name in sorted(ZOO):
        row = []
        for dtype in (torch.float64, torch.float32):
            torch.manual_seed(0)
            transform, shape = make(name, dtype)
            x = inputs(name, shape, batch, dtype)
            z, logabsdet = transform(x)
            inverse_error = (transform.inverse(z)[0] - x).abs().max().item()
            reference = brute_force_logabsdet(transform.double(), x.double())
            row += [inverse_error, (logabsdet.double() - reference).abs().max().item()]
        print(f"{name:36s} " + " ".join(f"{v:16.2e}" for v in row))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="a trained 2D run whose density to integrate")
    parser.add_argument("--box", type=float, nargs=4, default=(-8.0, 8.0, -6.0, 6.0), help="x0 x1 y0 y1")
    parser.add_argument("--resolution", type=int, default=800)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    transform_errors()
    if args.run:
        mass = integrated_mass(clayflow.load(args.run), tuple(args.box), args.resolution)
        print(
            f"\n{args.run}: integral of p(x) over {tuple(args.box)} on a {args.resolution}^2 midpoint grid = {mass:.6f}"
        )


if __name__ == "__main__":
    main()

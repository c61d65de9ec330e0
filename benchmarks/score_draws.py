"""How much ``clayflow score --draws K`` changes a dequantizing model's per-example scores.

    python benchmarks/score_draws.py RUN [RUN ...] [--draws 8] [--repeats 20] [--threads 2]

For each run (a ``clayflow train`` run directory of a model that dequantizes: images, or a
table with integer columns), its test split is scored ``--repeats`` times with one noise
draw and ``--repeats`` times with the importance-weighted bound over ``--draws`` draws,
log mean_k p(x + u_k). Printed: the mean of each (nats per example), their difference (how
much tighter the bound is), and the noise of one example's score, the standard deviation over
repeats of the same example (root mean square over examples). Seeds 0 .. repeats - 1.
"""

from __future__ import annotations

import argparse
import math

import torch

import clayflow
from clayflow.cli.inputs import run_dataset
from clayflow.train.checkpoint import read_checkpoint
from clayflow.train.evaluate import effective_draws, log_prob_in_chunks


@torch.no_grad()
def repeated_scores(flow: clayflow.Flow, x: torch.Tensor, draws: int, repeats: int) -> torch.Tensor:
    """Scores ``(repeats, N)`` of ``x`` ``(N, *)``, each the bound over ``draws`` noise draws
    as ``clayflow score`` computes it (``log_prob_in_chunks``, which fixes its own seeds), but
    with the noise of repeat r from seed r."""
    inputs = flow.split_rows(x.float())
    rows = []
    for seed in range(repeats):
        torch.manual_seed(seed)
        each = torch.stack([flow.log_prob(*inputs).double() for _ in range(draws)])
        rows.append(torch.logsumexp(each, 0) - math.log(draws))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# score draws: torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats (seeds 0..{args.repeats - 1})")
    print(f"| run | test examples | mean log p, 1 draw | mean log p, {args.draws} draws | difference | "
          f"noise sd, 1 draw | noise sd, {args.draws} draws | clayflow score's mean, {args.draws} draws |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        flow = clayflow.load(run)
        test = run_dataset(run, read_checkpoint(run, prefer_best=True)).test
        if effective_draws(flow, args.draws) == 1:
            print(f"| {run} | does not dequantize (or its log-det is a random estimate): every draw is the same |")
            continue
        one, many = (repeated_scores(flow, test, k, args.repeats) for k in (1, args.draws))
        check = log_prob_in_chunks(flow, test, draws=args.draws).mean()  # clayflow score's own figure, its seeds
        noise = [float(s.std(0).pow(2).mean().sqrt()) for s in (one, many)]
        print(f"| {run} | {len(test)} | {one.mean():.2f} | {many.mean():.2f} | {many.mean() - one.mean():.2f} | "
              f"{noise[0]:.2f} | {noise[1]:.2f} | {check:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

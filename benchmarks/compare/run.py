"""clayflow beside nflows, normflows, zuko and FrEIA, and a plain-PyTorch RealNVP, in one run.

    pip install -e ".[bench]"
    python benchmarks/compare/run.py                  # everything, about 2 hours on 2 cores (cnf: 1)
    python benchmarks/compare/run.py --only speed     # one workload; the report merges what is there
    python benchmarks/compare/run.py --quick          # a smoke test of every workload, 3 minutes
    python benchmarks/compare/run.py --only autoregressive   # MAF / NSF beside zuko's and nflows'

Writes ``benchmarks/results/<date>.md`` (config, machine, versions, every table with ratios to
clayflow, and the targets), and beside it ``<date>/{speed,quality,curves,budget,cnf_curves}.csv`` and
``<date>/{speed,quality}.png``. A workload's CSV is replaced when it runs again; the report
is rebuilt from whatever CSVs the folder holds (``--report-only`` rebuilds it alone).

Workloads (see each module): ``speed`` (train steps/s, log_prob and sample throughput at dim
2 and 64, batch 256 and 4096; parameters; round-trip error), ``quality`` (test NLL on four 2D
toys after 3000 steps of batch 512, Adam 1e-3, 3 seeds, with learning curves; and the time
clayflow's default command takes to reach the best peer's NLL, ``time_to_quality.py``), ``glow`` (Glow on digits at an
equal wall-clock budget, against normflows' Glow; ``--glow-average 0.99`` adds both Glows evaluated and kept as a
moving average of their weights, as ``clayflow train --ema 0.99`` keeps it) and ``cnf`` (a CNF on the toys at an equal
budget, against zuko's CNF, 3 seeds, with clayflow's learning curve for its time to zuko's final
NLL; on seed 0 also clayflow's former softplus field, unless ``--no-cnf-former-default``).
``--toys`` with ``cnf`` replaces those toys' rows alone. Speed runs alone: nothing else should
run on the machine.

Not in the default run: ``autoregressive`` (``autoregressive.py``: MAF, NSF-AR and NSF-C beside
zuko's and nflows' at equal architecture, dim 8 and 64; ``--threads``, ``--blocks``,
``--block-seconds`` and ``--quick`` pass through), written to ``<out>/compare_autoregressive/``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import autoregressive
import budget
import quality
import report
import speed
import time_to_quality
from contenders import BUILDERS, PEERS, compiled, with_fused_adam

WORKLOADS = ("speed", "glow", "cnf", "quality")
EXTRA_WORKLOADS = ("autoregressive",)  # run only when named in --only
AS_SHIPPED = ("clayflow", "plain PyTorch", *PEERS)  # each library as it comes, not compiled
RESULTS = Path(__file__).resolve().parents[1] / "results"


def write_csv(path: Path, rows: list) -> None:
    """``rows`` (dataclasses) to ``path``; with no rows, no file (an old one is removed)."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(rows[0])])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def run_speed(args, log) -> list:
    rows = []
    for features in args.dims:
        for batch in args.batches:
            torch.manual_seed(0)
            contenders = [BUILDERS[name](features) for name in AS_SHIPPED]
            contenders += [compiled(BUILDERS[name](features)) for name in ("clayflow", "plain PyTorch")]
            contenders.append(with_fused_adam(compiled(BUILDERS["plain PyTorch"](features))))
            log(f"speed: dim {features}, batch {batch}")
            cell = speed.measure(contenders, features, batch, args.blocks, args.block_seconds)
            extras = {c.name: (speed.parameters(c), speed.round_trip_error(c, features)) for c in contenders}
            rows += cell
            rows += [
                speed.SpeedRow(name, features, batch, workload, value, value, value)
                for name, (params, error) in extras.items()
                for workload, value in (("parameters", params), ("round-trip error", error))
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=WORKLOADS + EXTRA_WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="name of the report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--blocks", type=int, default=15, help="speed: timed blocks per figure")
    parser.add_argument(
        "--block-seconds", type=float, default=0.25, help="speed: seconds per contender per block"
    )
    parser.add_argument("--steps", type=int, default=3000, help="quality: training steps")
    parser.add_argument("--seeds", type=int, default=3, help="quality: seeds per toy")
    parser.add_argument("--toys", nargs="+", default=list(quality.QUALITY_TOYS), help="quality and cnf: toys")
    parser.add_argument("--batch", type=int, default=512, help="quality and cnf: batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-size", type=int, default=20000, help="quality and cnf: test points per toy")
    parser.add_argument("--glow-budget", type=float, default=240.0, help="glow: training seconds per model")
    parser.add_argument("--glow-batch", type=int, default=64)
    parser.add_argument("--glow-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="glow: the seeds (a list; before 2026-12-03 a count N meaning 0 .. N-1)")  # fmt: skip
    parser.add_argument("--glow-average", type=float, default=0.0, metavar="DECAY",
                        help="glow: also each Glow evaluated and kept as a moving average of its weights")  # fmt: skip
    parser.add_argument("--glow-only", nargs="+", metavar="NAME",
                        help='glow: run these contenders alone (e.g. "normflows + average 0.99"), to complete a run')  # fmt: skip
    parser.add_argument("--cnf-budget", type=float, default=120.0, help="cnf: training seconds per model")
    parser.add_argument("--cnf-seeds", type=int, default=3, help="cnf: seeds 0 .. N-1")
    parser.add_argument("--cnf-former-default", action=argparse.BooleanOptionalAction, default=True,
                        help="cnf: also clayflow's former softplus field on seed 0")  # fmt: skip
    parser.add_argument("--default-command-only", action="store_true",
                        help="quality: rerun clayflow's default command alone and replace its learning curves on "
                             "--toys in curves.csv, keeping the peers' (after a change of clayflow's defaults)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks that everything runs")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.block_seconds, args.steps, args.seeds = 2, 0.05, 30, 1
        args.glow_budget, args.cnf_budget, args.test_size, args.dims = 5.0, 5.0, 2000, [2, 8]
        args.glow_seeds, args.cnf_seeds = [0], 1
        args.batches = [64, 256]
    torch.set_num_threads(args.threads)
    folder = args.out / args.date
    log = functools.partial(print, flush=True)
    config = {key: value for key, value in vars(args).items() if key not in ("out", "report_only")}
    if not args.report_only:
        if "speed" in args.only:
            write_csv(folder / "speed.csv", run_speed(args, log))
        if "glow" in args.only or "cnf" in args.only:
            rows = []
            if "glow" in args.only:
                for seed in args.glow_seeds:
                    rows += budget.glow_digits(args.glow_budget, args.glow_batch, args.lr, seed, log=log,
                                               weight_average=args.glow_average, only=args.glow_only)  # fmt: skip
            if "cnf" in args.only:
                cnf_rows, cnf_curves = budget.cnf_toys(args.toys, args.cnf_budget, args.batch, args.lr, args.test_size,
                                                       args.cnf_seeds, log=log, former_default=args.cnf_former_default)  # fmt: skip
                rows += cnf_rows
                keep_curves = [r for r in report.read_rows(folder / "cnf_curves.csv") if r["toy"] not in args.toys]
                write_csv(folder / "cnf_curves.csv",
                          [quality.CurvePoint(**report.typed(r, quality.CurvePoint)) for r in keep_curves] + cnf_curves)  # fmt: skip

            def rerun(row: dict) -> bool:  # workloads "glow digits seed S", "cnf TOY seed S"
                kind, task = row["workload"].split()[:2]
                former = row["contender"] == "clayflow softplus" and not args.cnf_former_default  # not rerun: kept
                return kind in args.only and (kind != "cnf" or (task in args.toys and not former))

            keep = [r for r in report.read_rows(folder / "budget.csv") if not rerun(r)]
            write_csv(
                folder / "budget.csv",
                [budget.BudgetRow(**report.typed(r, budget.BudgetRow)) for r in keep] + rows,
            )
        if "quality" in args.only:
            curves = []
            if args.default_command_only:  # the peers' curves stay; clayflow's on these toys are replaced
                curves = [
                    quality.CurvePoint(**report.typed(r, quality.CurvePoint))
                    for r in report.read_rows(folder / "curves.csv")
                    if r["contender"] != time_to_quality.DEFAULT_COMMAND
                    or r["toy"] not in args.toys or int(r["seed"]) >= args.seeds
                ]
            else:
                builders = {name: BUILDERS[name] for name in AS_SHIPPED}
                rows, curves = quality.run(
                    builders, args.toys, args.seeds, args.steps, args.batch, args.lr, args.test_size, log,
                    curve_every=min(time_to_quality.CURVE_EVERY, max(1, args.steps // 10)),
                )  # fmt: skip
                write_csv(folder / "quality.csv", rows)
            curves += time_to_quality.run_default_command(
                args.toys, args.seeds,
                lambda toy, seed: quality.test_set(toy, seed, args.test_size), log,
                steps=args.steps if args.quick else None,
            )  # fmt: skip
            write_csv(folder / "curves.csv", curves)
        if "autoregressive" in args.only:
            autoregressive.main(
                ["--out", str(args.out / "compare_autoregressive"), "--threads", str(args.threads),
                 "--blocks", str(args.blocks), "--block-seconds", str(args.block_seconds)]
                + (["--quick"] if args.quick else [])
            )  # fmt: skip
        if set(args.only) & set(WORKLOADS):
            report.save_config(folder, config)
    if args.report_only or set(args.only) & set(WORKLOADS):
        path = report.write(folder, args.out / f"{args.date}.md")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

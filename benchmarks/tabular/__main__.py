"""Issue 15, "Tables as users have them": clayflow's default command on small real tables and
on the 2D toys, against what a user would fit instead. Run from the repository root:

    python -m benchmarks.tabular                      # everything, seeds 0 1 2 (hours; see below)
    python -m benchmarks.tabular --datasets iris wine --models realnvp --seeds 0
    python -m benchmarks.tabular --quick              # smoke test: iris, seed 0, baselines + realnvp --steps 200
    python -m benchmarks.tabular --report-only        # rebuild tabular.md and tabular.png from fits.csv

Measured, per dataset, estimator and seed: the mean test log-likelihood per row (nats, in the
data's own units, higher is better) and the wall time of the fit. Reported: the mean ± standard
error over seeds 0, 1, 2. Estimators: a full-covariance Gaussian (MLE), scikit-learn's
GaussianMixture (k = 1..10, full/diag; ``gmm`` chosen by validation log-likelihood, ``gmm_bic``
by the training rows' BIC) and
KernelDensity (bandwidth by cross-validation on the training rows), see ``baselines.py``; and
clayflow's default ``python -m clayflow train --data DATA --model M --seed S --no-plots
--no-progress --out RUN`` for M in realnvp, nice, glow, maf, nsf, cnf, see ``flows.py``. Datasets: iris,
wine, breast_cancer, diabetes, digits64 (scikit-learn's 8x8 digits as 64-column vectors) and
every 2D toy of ``clayflow.data.toys.TOYS``. The seed is clayflow's ``--seed``, the mixture's
and the KDE's ``random_state``, and the baselines' dequantization noise.

Fairness rules (what makes the numbers comparable):

1. Same rows. Every estimator uses ``clayflow.data.load_dataset(name)``'s train/validation/test
   split (float32, converted to float64), never a split of its own. digits64 is written once as a
   CSV of the integer levels 0..16 with a header; clayflow gets the file (``--data FILE``), the
   baselines ``load_dataset(FILE)`` (``datasets.py``).
2. Same units for discrete columns. clayflow dequantizes the columns of
   ``clayflow.data.discrete.discrete_columns(data, "auto")`` itself (diabetes' sex, every digit
   column, iris' widths recorded to 0.1 cm) and scores E_u log p(x + h u), u ~ U[0, 1), for grid
   step h: a lower bound on the discrete probability over h times the density of the rest. It is
   given the raw data, never pre-dequantized rows. The baselines fit the training rows plus one
   U[0, h) draw on those columns (numpy Generator seeded by the seed)
   and score the validation and test rows with fresh noise, averaging log q over 8 draws a row.
3. Units check, twice, at run time: the Gaussian's validation and test log-likelihoods computed in
   raw units and in standardised units plus the standardisation's log-det (−Σ log std) agree to
   1e-9 (relative), or the run stops with ``UnitsMismatch``. The mixture and the KDE are fitted to
   standardised rows and use the same log-det.
4. clayflow's figure is ``-results.json["test_nll"]`` of its run directory; ``selected_step``,
   ``steps`` and ``train_seconds`` are recorded too, and the path of the run's metrics.csv.
   No tuning flags: the point is to measure the defaults (``--steps`` only in smoke runs, which
   the report flags).
5. Resumable. A fit already in ``fits.csv`` is skipped; a run directory with results.json is read,
   not rerun; a stopped one is resumed. ``--datasets``, ``--models`` and ``--seeds`` select subsets;
   ``--report-only`` rebuilds the report. By default cnf is left out on the toys (4000 dopri5 steps
   on 50,000 rows take too long on 2 cores); ``--models cnf`` runs it there.
6. The report (``report.py``) states the command, seeds, clayflow version (and git HEAD and a hash
   of its sources at each flow fit), the machine, and for each dataset the best estimator and
   "default realnvp − best sklearn".

Written to ``benchmarks/results/tabular/`` (``--quick``: its ``quick/``): ``tabular.md``,
``tabular.png``, ``fits.csv`` (every fit), ``selection.csv`` (every selection candidate),
``metrics/<run>.csv`` (each flow run's metrics.csv), ``test_rows/<fit>.csv`` (each fit's
per-row test log-likelihoods, for the tables) and ``config.json``; flow run directories,
their logs and the digits CSV go under ``--work`` (default ``<results>/runs/``, git-ignored).

Time on 2 CPU cores (measured 2026-12-01 with the defaults of then, cores shared with other
work): the baselines about 25 minutes in all (mostly the toys' 50,000 rows); a coupling-flow run
about a minute on a small table (early stopping) and a few minutes on a toy; a cnf run minutes
per hundred steps (iris 0.5 s a step, digits64 2 s). The whole default run: some 4 hours of
coupling flows and baselines, plus 5 to 10 hours of cnf on the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from .baselines import BASELINES
from .datasets import DATASETS, TOYS, load_rows
from .flows import FLOWS, fit_flow
from .records import (
    FIT_FIELDS,
    REPO,
    SELECTION_FIELDS,
    Fit,
    fit_key,
    provenance,
    read_csv,
    write_csv,
    write_test_rows,
)
from .report import ESTIMATORS, report

RESULTS = REPO / "benchmarks" / "results" / "tabular"
SEEDS = (0, 1, 2)
# Per-row test log-likelihoods are kept (for the paired comparison) for test splits up to this
# size: the tables. A toy's 10,000 rows would add 200 KB a fit to the repository, and its
# seeds' standard error is already small.
MAX_KEPT_TEST_ROWS = 1_000
QUICK = {"datasets": ["iris"], "models": ["gaussian", "gmm", "kde", "realnvp"], "seeds": [0], "steps": 200}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tabular",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        metavar="NAME",
        help=f"default: all of {' '.join(DATASETS)}",
    )
    parser.add_argument("--models", nargs="+", choices=ESTIMATORS, help="default: all (cnf not on the toys)")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"default: {' '.join(map(str, SEEDS))}")
    parser.add_argument("--steps", type=int, help="smoke runs only: pass --steps to clayflow")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: iris, seed 0, baselines + realnvp, --steps 200"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from fits.csv")
    parser.add_argument("--retry-failed", action="store_true", help="refit the fits whose status is failed")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--work", type=Path, help="flow run directories and data (default OUT/runs)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    args.out = (args.out or (RESULTS / "quick" if args.quick else RESULTS)).resolve()
    args.work = (args.work or args.out / "runs").resolve()
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(dataset, estimator, seed) in order: the baselines, then the flows seed by seed (so a
    stopped run already has every dataset for seed 0), cnf last."""
    datasets, seeds = args.datasets or DATASETS, args.seeds or SEEDS
    models = args.models or ESTIMATORS
    fits = [(d, e, s) for e in models if e in BASELINES for s in seeds for d in datasets]
    for group in ([e for e in models if e in FLOWS and e != "cnf"], [e for e in models if e == "cnf"]):
        fits += [(d, e, s) for s in seeds for e in group for d in datasets]
    if args.models is None:  # the default list: no cnf on the toys
        fits = [(d, e, s) for d, e, s in fits if not (e == "cnf" and d in TOYS)]
    return fits


def fit_row(dataset: str, estimator: str, seed: int, args: argparse.Namespace) -> tuple[dict, Fit]:
    """Run one fit; its ``fits.csv`` row and the ``Fit``."""
    rows = load_rows(dataset, args.work)
    steps = args.steps if estimator in FLOWS else None
    started = time.perf_counter()
    if estimator in BASELINES:
        fit = BASELINES[estimator](rows, seed)
    else:
        fit = fit_flow(rows, estimator, seed, steps, args.work, args.out)
    row = {
        "dataset": dataset, "estimator": estimator, "seed": seed, "steps_flag": steps or "",
        "status": fit.status, "test_ll": fit.test_ll, "val_ll": fit.val_ll,
        "wall_s": time.perf_counter() - started, "choice": fit.choice, "detail": fit.detail,
        "check": fit.check, "rows": rows.shape_text, "discrete": len(rows.discrete),
        **fit.extra,  # a flow read from an earlier run sets wall_s to "" (not measured)
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    return row, fit


def still_to_fit(args: argparse.Namespace, rows: list[dict]) -> list[tuple[str, str, int]]:
    """The plan less the fits already in ``rows`` (with ``--retry-failed``, less the ok ones)."""
    done = {fit_key(r): r["status"] for r in rows}
    todo = []
    for d, e, s in plan(args):
        key = fit_key(
            {"dataset": d, "estimator": e, "seed": s, "steps_flag": args.steps if e in FLOWS else ""}
        )
        if key not in done or (args.retry_failed and done[key] != "ok"):
            todo.append((d, e, s))
    return todo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        path = report(args.out)
        print(f"wrote {path}" if path else f"no fits in {args.out / 'fits.csv'}")
        return
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    command = shlex.join(["python", "-m", "benchmarks.tabular", *(sys.argv[1:] if argv is None else argv)])
    info = {"command": command, "options": options, "provenance": provenance()}
    args.work.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    fits_csv, selection_csv = args.out / "fits.csv", args.out / "selection.csv"
    rows, selection = read_csv(fits_csv), read_csv(selection_csv)
    todo = still_to_fit(args, rows)
    print(
        f"{len(todo)} fits to run ({len(plan(args)) - len(todo)} of the plan already in {fits_csv})",
        flush=True,
    )
    walls: dict[str, list[float]] = {}
    for i, (d, e, s) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {e} on {d}, seed {s} ...", flush=True)
        row, fit = fit_row(d, e, s, args)
        rows = [r for r in rows if fit_key(r) != fit_key(row)] + [row]
        same = (d, e, str(s))
        selection = [r for r in selection if (r["dataset"], r["estimator"], str(r["seed"])) != same]
        selection += [{"dataset": d, "estimator": e, "seed": s, **c} for c in fit.candidates]
        if fit.test_rows is not None and len(fit.test_rows) <= MAX_KEPT_TEST_ROWS:
            write_test_rows(args.out, row, fit.test_rows)
        write_csv(fits_csv, rows, FIT_FIELDS)
        write_csv(selection_csv, selection, SELECTION_FIELDS)
        if e in FLOWS:
            report(args.out)
        if row["wall_s"] != "":
            walls.setdefault(e, []).append(row["wall_s"])
        rest = [x for _, x, _ in todo[i:]]
        left = sum(statistics.fmean(walls[x]) for x in rest if x in walls) / 60
        untimed = sorted({x for x in rest if x not in walls})
        outcome = f"test LL {fit.test_ll:.4f}" if fit.status == "ok" else f"FAILED: {fit.detail}"
        wall = f"{row['wall_s']:.1f} s" if row["wall_s"] != "" else "read"
        eta = f"about {left:.0f} min left" + (f" + {', '.join(untimed)} (not timed yet)" if untimed else "")
        print(f"    {outcome}  {fit.choice}  ({wall}; {eta})", flush=True)
    path = report(args.out)
    print(f"wrote {path}, {args.out / 'tabular.png'}, {fits_csv} and {selection_csv}" if path else "no fits")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nstopped; the same command continues where it was (finished fits are in fits.csv)")
        sys.exit(130)

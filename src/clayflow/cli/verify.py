"""``clayflow verify RUN``: the checks of ``clayflow.verify`` on a trained run, as a table
(or JSON), exiting 0 only when every check passes, so that it can gate a pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clayflow.errors import ClayflowError, UsageError


def add_arguments(p: argparse.ArgumentParser, device_type) -> None:
    """The options of ``clayflow verify``."""
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint file")
    p.add_argument("--data", metavar="DATA",
                   help="held-out examples: .csv/.npy file, images:DIR, or a dataset (its test split); "
                        "default: the run's own test split (a run of clayflow fit: its own draws)")  # fmt: skip
    p.add_argument("--rows", type=int, default=256, metavar="N",
                   help="examples used for round trips and samples drawn (default 256)")  # fmt: skip
    p.add_argument("--points", type=int, metavar="K",
                   help="rows whose full Jacobian is computed (default 4 up to 256 dimensions, 2 up to 1024, else 1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--device", type=device_type, default="cpu", help="device (default: cpu)")


def own_draws(flow, rows: int, seed: int):
    """``rows`` draws of ``flow`` from ``seed`` (torch's random stream left as it was): the
    examples of a run fitted to a target, which has no data."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return flow.sample(rows).cpu()


def run(args: argparse.Namespace, load_run) -> int:
    """Verify a run: print the report; 0 if every check passed, else 1."""
    from clayflow.cli.inputs import examples_to_score, run_dataset
    from clayflow.diagnostics import checks, verify
    from clayflow.train.config import check_seed
    from clayflow.train.run import read_json

    if args.rows < 2 or (args.points is not None and args.points < 1):
        raise UsageError("--rows must be >= 2 and --points >= 1")
    check_seed(args.seed)
    flow, payload = load_run(args.run, args.device)
    run_dir = Path(args.run) if Path(args.run).is_dir() else None
    results, test = None, None
    fitted = bool(payload.get("target"))  # a run of clayflow fit: no data, its own draws instead
    if args.data:
        x = examples_to_score(args.data, payload)[0]
    elif fitted:
        x = own_draws(flow, args.rows, args.seed)
    else:
        test = run_dataset(args.run, payload).test
        x = test
        if run_dir is not None and (run_dir / "results.json").exists():
            results = read_json(run_dir / "results.json")
    if len(x) < 2:
        raise ClayflowError(f"verify needs at least 2 held-out examples, got {len(x)}")
    x, context = flow.split_rows(x)  # a conditional run's rows: checked at their own contexts
    report = verify(flow, x, context=context, rows=args.rows, points=args.points, seed=args.seed,
                    two_sample=not (fitted and not args.data))  # fmt: skip
    if results is not None and isinstance(results.get("test_nll"), float):
        report.add(checks.reported(flow, test, results))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.passed else 1

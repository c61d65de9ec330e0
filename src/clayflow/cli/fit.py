"""``clayflow fit --target NAME``: fit a flow to a density known up to its normaliser (reverse
KL, variational inference) into a run directory, with the ESS and log Z as it goes."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

from clayflow.errors import UsageError

# The model options ``clayflow fit`` passes on to the builder when given (see ``clayflow train``).
MODEL_OPTIONS = {
    "layers": int, "hidden": int, "depth": int, "bins": int, "tail_bound": float, "base": str,
    "activation": str, "scale_bound": str, "conditioner": str, "mask": str, "blocks": int, "solver": str,
}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser, device_type) -> None:
    """The options of ``clayflow fit``."""
    from clayflow.train.variational import FitConfig
    from clayflow.variational import TARGETS

    defaults = FitConfig()
    p.usage = "clayflow fit --target TARGET [--model MODEL] [--steps STEPS] [--out DIR] [options]"
    p.add_argument("--target", metavar="TARGET",
                   help=f"built in ({', '.join(TARGETS)}), or module:function / file.py:function returning "
                        "log p~(x) for a batch (B, D) -> (B,)")  # fmt: skip
    p.add_argument("--dims", type=int, metavar="D", help="dimensions of a function target without a dims attribute")
    p.add_argument("--samples", metavar="FILE",
                   help="a .csv/.npy of draws from the target, where some exist: their NLL (forward KL) is "
                        "mixed into the loss")  # fmt: skip
    p.add_argument("--forward-weight", type=float, metavar="A",
                   help=f"with --samples: loss = (1 - A) reverse KL + A NLL of the samples (default: {defaults.forward_weight})")  # fmt: skip
    p.add_argument("--model", metavar="MODEL",
                   help="realnvp (default), nice, glow, maf, iaf, nsf, cnf, planar or radial")  # fmt: skip
    group = p.add_argument_group("model options (as clayflow train's; each model takes its own)")
    for name, kind in MODEL_OPTIONS.items():
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, default=argparse.SUPPRESS, metavar=name.upper())
    training = p.add_argument_group("optimisation")
    for name, help_text in (
        ("steps", "optimisation steps"), ("batch_size", "draws per step"), ("lr", "Adam's learning rate"),
        ("schedule", "cosine or constant"), ("warmup", "linear warm-up steps"),
        ("anneal", "steps over which the target's power beta rises from 0.01 to 1 (0: none; default: a fifth of --steps)"),
        ("clip", "gradient norm clip (0: none)"), ("seed", "seed of the initial weights and of every draw"),
        ("eval_every", "steps between evaluations (ESS, log Z)"), ("eval_samples", "draws per evaluation"),
        ("checkpoint_every", "steps between checkpoints"),
    ):  # fmt: skip
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default: {default})"
        training.add_argument(f"--{name.replace('_', '-')}", type=type(default) if default is not None else int,
                              metavar=name.upper(), help=help_text + shown)  # fmt: skip
    run = p.add_argument_group("run, output and machine")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>-<target>-<time>)")
    run.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    run.add_argument("--force", action="store_true", help="replace an existing run directory given by --out")
    run.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's)")
    run.add_argument("--device", type=device_type, help="device (default: cpu)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: on a terminal; else a log line every 250 steps or 30 seconds)")  # fmt: skip
    run.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write plots (default: on)")


def run(args: argparse.Namespace, load_run) -> int:
    """Fit, print the ESS and log Z, write the plots."""
    from clayflow.train.signals import StopRequest
    from clayflow.train.variational import FitConfig, fit
    from clayflow.variational.weights import RELIABLE_K

    if args.resume and args.force:
        raise UsageError("--force and --resume contradict: --resume continues a run, --force replaces one")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise UsageError("--out and --resume name different directories; --resume continues in place")
    if not args.resume and not args.target:
        raise UsageError("give --target (a built-in target or module:function), or --resume RUN")
    if args.forward_weight is not None and not args.samples and not args.resume:
        raise UsageError("--forward-weight weighs the NLL of draws from the target in the loss; give them as --samples FILE")
    # The options given (None: not given), so that a resumed run can tell a change from a default.
    given = {f.name: getattr(args, f.name) for f in fields(FitConfig) if getattr(args, f.name, None) is not None}
    if options := {name: getattr(args, name) for name in MODEL_OPTIONS if hasattr(args, name)}:
        given["options"] = options
    if args.target:
        given["target"] = _absolute_file(args.target)
    if args.samples:
        given["samples"] = str(Path(args.samples).resolve())  # recorded so that --resume works from anywhere
    out = Path(args.resume or args.out) if (args.resume or args.out) else None
    stop = StopRequest()
    with stop.catching():
        results = fit(given, out, resume=bool(args.resume), force=args.force, progress=args.progress, stop=stop)
    truth = "" if results["log_z_true"] is None else f" (true {results['log_z_true']:.4f}, error {results['log_z_error']:+.4f})"
    print(f"fitted {results['model']} to {results['target']} for {results['steps']} steps in "
          f"{results['train_seconds']:.0f} s: ESS {100 * results['ess']:.1f}% of {results['eval_samples']} draws, "
          f"log Z {results['log_z']:.4f} ± {results['log_z_se']:.4f}{truth}, Pareto k {results['pareto_k']:.2f}")  # fmt: skip
    if math.isnan(results["pareto_k"]):  # under 25 draws, or the largest weights all equal
        print(f"clayflow: note: Pareto k could not be estimated from {results['eval_samples']} draws; give more "
              "--eval-samples to check the weights' tail", file=sys.stderr)  # fmt: skip
    elif results["pareto_k"] > RELIABLE_K:
        print(f"clayflow: warning: the importance weights are heavy-tailed (Pareto k {results['pareto_k']:.2f}, "
              f"reliable below {RELIABLE_K}): the ESS and log Z above are unreliable; fit for more --steps, or "
              "with a more flexible --model (nsf)", file=sys.stderr)  # fmt: skip
    print(f"run directory: {results['run_dir']}")
    if args.plots:
        print("plots: " + ", ".join(str(p) for p in plot(Path(results["run_dir"]), load_run)))
    return 0


def _absolute_file(target: str) -> str:
    """``path/file.py:function`` with the file's absolute path (the run records it, and
    ``sample --weights`` or ``--resume`` may run elsewhere); other targets as given."""
    module, _, function = target.rpartition(":")
    return f"{Path(module).resolve()}:{function}" if module.endswith(".py") else target


def plot(run_dir: Path, load_run) -> list[Path]:
    """The plots of a fitted run (see ``clayflow.plotting.variational``)."""
    from clayflow.errors import ClayflowError
    from clayflow.plotting.variational import plot_fitted_run
    from clayflow.train.run import read_json
    from clayflow.variational import load_target

    config = read_json(run_dir / "config.json")
    flow, _ = load_run(str(run_dir), "cpu")
    try:
        return plot_fitted_run(run_dir, flow, load_target(config["target"], config.get("dims")), config.get("seed", 0))
    except OSError as exc:
        raise ClayflowError(f"cannot write the plots of {run_dir}: {exc.strerror or exc}") from None

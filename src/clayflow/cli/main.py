"""``clayflow <verb>``: train (or fit to a target), sample, score, verify, explain and plot flows
from the command line.

Errors a user can fix print one line, ``clayflow: error: ...``, and exit 1 (2 for bad
usage); tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path

import torch

from clayflow import __version__
from clayflow.errors import ClayflowError, UsageError

EXAMPLES = {
    "train": "examples:\n  clayflow train                          # a spline flow (NSF) on moons (1-2 minutes)\n"
    "  clayflow train --data wine --model nice --steps 2000\n"
    "  clayflow train --data my_table.csv --out runs/mine\n"
    "  clayflow train --data digits --model glow     # images: realnvp or glow\n"
    "  clayflow train --data wine --model nsf --context alcohol,hue   # p(other columns | alcohol, hue)\n"
    "  clayflow train --resume runs/mine --steps 8000  # continue (or extend) a run",
    "sample": "examples:\n  clayflow sample runs/mine --n 1000 --out samples.csv --temperature 0.8\n"
    "  clayflow sample runs/digits --n 64 --out grid.png --temperature 0.7   # image models: .png or .npy\n"
    "  clayflow sample runs/wine-given-hue --context contexts.csv --n 10 --out draws.csv   # 10 per row",
    "score": "examples:\n  clayflow score runs/mine --data new_rows.csv --out scores.csv\n"
    "  clayflow score runs/digits --data images:my_scans --out scores.csv\n"
    "  clayflow score runs/mine --data rows.csv --fpr 0.01 --method typicality --out flagged.csv\n"
    "  clayflow score runs/mine --data rows.csv --label-column is_fraud --roc roc.png --out scores.csv",
    "plot": "examples:\n  clayflow plot runs/mine\n  clayflow plot runs/wine --columns alcohol,proline,7",
    "explain": "examples:\n  clayflow explain runs/mine                 # table, and pictures in runs/mine/explain\n"
    "  clayflow explain runs/digits --rows 64 --out pictures/",
    "fit": "examples:\n  clayflow fit --target u1                       # a flow fitted to Rezende & Mohamed's U1\n"
    "  clayflow fit --target funnel --steps 10000 --out runs/funnel\n"
    "  clayflow fit --target my_model.py:log_posterior --dims 12   # your own log p~(x), batched\n"
    "  clayflow sample runs/funnel --n 1000 --weights --out draws.csv   # with importance weights",
    "verify": "examples:\n  clayflow verify runs/mine                      # on the run's test split\n"
    "  clayflow verify runs/mine --data held_out.csv --json > report.json\n"
    "  clayflow verify runs/mine && deploy runs/mine   # exit 0 only if every check passes",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the usage block."""

    def error(self, message):
        """Print ``clayflow: error: <message> (see <verb's prog> --help)`` and exit 2; a
        subcommand's parser has prog ``clayflow <verb>``, and every error line starts alike."""
        self.exit(2, f"clayflow: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but unrecognised arguments are reported by the verb's parser, so the
        line points at ``clayflow <verb> --help``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            verbs = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
            parser = verbs.choices.get(getattr(parsed, "verb", None), self) if verbs else self
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    """The ``clayflow`` parser with one subcommand per verb."""
    parser = _Parser(
        prog="clayflow",
        description="Normalizing flows: train (or fit to a density), sample, score, verify, explain and plot from one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'clayflow <command> --help' for a command's options.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"clayflow {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="<command>", required=True)
    _add_train(verbs)
    _add_verb_module(verbs, "fit")
    _add_verb_module(verbs, "sample")
    _add_verb_module(verbs, "score")
    _add_plot(verbs)
    _add_verb_module(verbs, "verify")
    _add_verb_module(verbs, "explain")
    return parser


def _verb(verbs, name: str, help: str):
    return verbs.add_parser(
        name,
        help=help,
        description=help,
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ``clayflow train --help`` in groups: every ``TrainConfig`` field is in one (checked by a test).
TRAIN_GROUPS = {
    "data": ("data", "context", "conditional", "standardize", "power_transform", "whiten", "discrete", "input_noise"),
    "model": (
        "model", "layers", "hidden", "depth", "conditioner", "mask", "scale_bound", "batch_norm", "base",
        "dropout", "activation", "scales", "norm", "alpha", "lu", "coupling", "bins", "tail_bound", "autoregressive",
    ),
    "optimisation": (
        "steps", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "warmup", "clip", "ema",
        "select_best", "patience", "eval_every", "nonfinite", "seed",
    ),
    "continuous flows (--model cnf)": (
        "blocks", "augment", "actnorm", "t1", "learn_t1", "solver", "atol", "rtol", "step_size", "trace",
        "eval_trace", "adjoint", "objective", "kinetic", "jacobian", "ot",
    ),
    "run, output and machine": ("checkpoint_every", "tensorboard", "device", "threads", "compile", "precision"),
}  # fmt: skip


def _train_help() -> dict[str, str]:
    """``TrainConfig``'s field comments, with the lists of models and built-in data sets."""
    from clayflow.data.tabular import SKLEARN_TABLES
    from clayflow.data.toys import TOYS
    from clayflow.models import MODELS
    from clayflow.train.config import field_help

    helps = field_help()
    helps["model"] = (
        f"model: {', '.join(MODELS)} (nice, maf, iaf, nsf, planar, radial: vectors only; cnf: FFJORD) "
        "(default: nsf for vectors of at least 5,000 training rows, else realnvp)"
    )
    helps["data"] = (
        f"2D toys ({' '.join(TOYS)}), tables ({' '.join(SKLEARN_TABLES)}), images (digits, "
        "patches[:SIZE][:rgb], mnist:DIR, cifar10:DIR, images:DIR), or a .csv/.npy file"
    )
    return helps


def _add_train(verbs) -> None:
    from clayflow.train.config import TrainConfig, field_type, flag

    p = _verb(verbs, "train", "Train a flow by maximum likelihood into a run directory.")
    p.usage = "clayflow train [--data DATA] [--model MODEL] [--steps STEPS] [--out DIR] [options]"
    helps, hints, defaults = _train_help(), typing.get_type_hints(TrainConfig), TrainConfig()
    groups = {title: p.add_argument_group(title) for title in TRAIN_GROUPS}
    group_of = {name: groups[title] for title, names in TRAIN_GROUPS.items() for name in names}
    for f in fields(TrainConfig):
        group, option = group_of[f.name], flag(f.name)
        kind, _ = field_type(hints[f.name])
        default = getattr(defaults, f.name)
        text = helps.get(f.name, "") + ("" if default is None else f" (default: {default})")
        if kind is bool:
            group.add_argument(option, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(option, type=kind, default=argparse.SUPPRESS, help=text, metavar=f.name.upper())
    run = groups["run, output and machine"]
    run.add_argument("--config", metavar="FILE", help="JSON or TOML file of options (flags override it)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>-<data>-<time>)")
    run.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    run.add_argument("--force", action="store_true", help="replace an existing run directory given by --out")
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train on N processes of this machine (torchrun --standalone --nproc_per_node N -m clayflow train ...)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal; else a log line every 250 steps or 30 seconds)",
    )
    run.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write plots at the end (default: on)",
    )
    p.set_defaults(handler=cmd_train)


def _device(name: str) -> str:
    """argparse ``type`` of ``--device``: auto, cpu, cuda or cuda:N that exists here."""
    from clayflow.train.config import check_device

    try:
        return check_device(name)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Verbs whose options and handler live in their own module (``add_arguments``, ``run``).
VERB_MODULES = {
    "fit": "Fit a flow to a density known up to its normaliser (reverse KL): ESS, log Z, samples.",
    "sample": "Draw samples from a trained flow.",
    "score": "Log-likelihood of each row of a file under a trained flow, and anomaly scores.",
    "verify": "Check a trained flow: round trips, log-dets layer by layer, mass, samples.",
    "explain": "Show what each layer of a trained flow does: its share of log p, and pictures.",
}


def _add_verb_module(verbs, name: str) -> None:
    """The verb ``name`` of ``clayflow.cli.<name>``: its options, and its handler given ``_load_run``."""
    import importlib

    module = importlib.import_module(f"clayflow.cli.{name}")
    p = _verb(verbs, name, VERB_MODULES[name])
    module.add_arguments(p, _device)
    p.set_defaults(handler=lambda args: module.run(args, _load_run))


def _add_plot(verbs) -> None:
    p = _verb(verbs, "plot", "Redraw a run's plots (loss curves, samples, density).")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument(
        "--columns",
        metavar="COLS",
        help="table columns to draw: comma-separated names or numbers from 1 "
        "(default: the first 16 in marginals.png, the first 4 in pairs.png)",
    )
    p.set_defaults(handler=cmd_plot)


# -- verbs ----------------------------------------------------------------------------------


def resolve_train_config(args: argparse.Namespace):
    """The run's config and its directory (``None``: the default name). A new run's config is
    defaults < ``--config`` < flags; a resumed run's is its own ``config.json``, where
    ``--config`` and flags may repeat its values but change only the resumable options."""
    from clayflow.train.config import TrainConfig, check_keys_and_types, config_from_dict, read_config_file
    from clayflow.train.resume import resumed_config

    names = {f.name for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    values = {}
    if args.config:  # its keys and types now (naming the file); its values once flags override them
        values = check_keys_and_types(read_config_file(args.config), source=args.config)
    if args.resume:
        run_dir = Path(args.resume)
        if args.force:
            raise UsageError("--force and --resume contradict: --resume continues a run, --force replaces one")
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise UsageError("--out and --resume name different directories; --resume continues in place")
        return resumed_config(run_dir, {**values, **flags}), run_dir
    if values:  # the file's own values (those no flag overrides), naming the file in errors
        config_from_dict({k: v for k, v in values.items() if k not in flags}, source=args.config, saved=True)
    config = config_from_dict({**values, **flags}, source="options")
    return config, Path(args.out) if args.out else None


def cmd_train(args: argparse.Namespace) -> int:
    """Train into a run directory, print the test NLL and write the plots."""
    from clayflow.cli.processes import launch_processes, restarted_by_torchrun
    from clayflow.train import load, train
    from clayflow.train.distributed import end_processes, processes_from_environment
    from clayflow.train.resume import read_run_config
    from clayflow.train.tracking import log_pictures

    if args.nproc is not None:
        launch_processes(args.nproc, args.argv)
    processes = processes_from_environment()  # under torchrun: rank 0 alone prints and plots
    if not processes.main and not os.environ.get("CLAYFLOW_ALL_RANKS"):  # set it to see every process
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    restarted = restarted_by_torchrun() and args.out and not args.resume and not args.force
    if restarted and (Path(args.out) / "checkpoints" / "last.pt").is_file():  # continue the failed attempt's run
        args.resume = args.out
    config, run_dir = resolve_train_config(args)
    result = train(config, run_dir, resume=bool(args.resume), force=args.force, progress=args.progress)
    end_processes()  # all together; rank 0 then reports and plots alone
    if not processes.main:
        return 0
    tested = ("no test rows" if result.test_nll is None else
              f"test NLL {result.test_nll:.4f} nats ({result.test_bpd:.4f} bits/dim)")  # fmt: skip
    print(f"trained {result.model} on {config.data} for {result.steps} steps in {result.train_seconds:.0f} s: "
          f"{tested} with the weights of step {result.selected_step}")  # fmt: skip
    print(f"run directory: {result.run_dir}")
    if result.selected_step == 0 and result.steps > 0:  # the best validation NLL was the untrained flow's
        print("clayflow: warning: no step improved on the untrained flow's validation NLL, so its weights of "
              "step 0 are kept; try more --steps, a lower --lr or another --model", file=sys.stderr)  # fmt: skip
    if args.plots:
        paths = _plot(result.run_dir, load(result.run_dir))
        print("plots: " + ", ".join(str(p) for p in paths))
        if read_run_config(result.run_dir).tensorboard:
            log_pictures(result.run_dir, paths, result.steps)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw the plots of a run from its checkpoint, metrics and data."""
    from clayflow.train.variational import is_fitted_run

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise ClayflowError(f"{run_dir} is not a run directory")
    if is_fitted_run(run_dir):
        from clayflow.cli.fit import plot
        from clayflow.plotting.variational import MARGINALS

        if args.columns is not None:
            raise UsageError("--columns chooses the columns of a table run's marginals and pairs; a run of clayflow "
                             f"fit draws its target's density (2 dimensions) or its first {MARGINALS} dimensions' "
                             "marginals")  # fmt: skip
        paths = plot(run_dir, _load_run)
    else:
        from clayflow.cli.inputs import run_dataset
        from clayflow.train.checkpoint import flow_from_checkpoint, read_checkpoint
        from clayflow.train.resume import read_run_config

        read_run_config(run_dir)  # a missing or malformed config.json is named first, before the checkpoints
        payload = read_checkpoint(run_dir, prefer_best=True)
        # the run's own data, found and checked by their fingerprint (this folder may hold other data of that name)
        data = run_dataset(str(run_dir), payload, "plot draws them beside its samples")
        paths = _plot(run_dir, flow_from_checkpoint(payload).eval(), args.columns, data)
    print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def _plot(run_dir: Path, flow, columns: str | None = None, data=None) -> list[Path]:
    """The run's plots of ``flow`` against ``data`` (a ``Dataset``; None: the run config's, as
    just trained)."""
    from clayflow.plotting import plot_run
    from clayflow.train.resume import read_run_config

    data = data if data is not None else read_run_config(run_dir).dataset()
    show = None
    if columns is not None:
        if data.levels is not None or (data.event_shape == (2,) and not data.context_features):
            raise UsageError("--columns chooses the columns of a table's marginals and pairs; this run draws all its data")
        show = data.file_columns(columns, "--columns")
    if data.levels is None:  # tables and toys: every row, so that a small table's histograms have shape
        rows, label = torch.cat([data.train, data.val, data.test]), "rows (all splits)"
    else:
        rows, label = data.test, "test images"
    try:
        names = data.columns
        if names is None and data.column_order:  # a header-less conditional table: named as the file numbers them
            names = [f"x{j + 1}" for j in data.column_order]
        return plot_run(run_dir, flow, rows, names, data.levels, show_columns=show, data_label=label)
    except OSError as exc:
        raise ClayflowError(f"cannot write the plots of {run_dir}: {exc.strerror or exc}") from None


def _load_run(run: str, device: str):
    """The trained flow (eval mode, on ``device``) and the checkpoint it came from."""
    from clayflow.train.checkpoint import flow_from_checkpoint, read_checkpoint
    from clayflow.train.setup import resolve_device

    payload = read_checkpoint(run, prefer_best=True)
    return flow_from_checkpoint(payload).to(resolve_device(device)).eval(), payload


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the verb; returns the exit code. Every failure is one line on
    stderr starting ``clayflow: error:`` (a traceback only with ``--debug``)."""
    debug = False
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]  # as given (--nproc runs it again)
        debug = args.debug
        return args.handler(args)
    except ClayflowError as exc:  # UsageError: 2; training stopped by a signal: 128 + its number
        if debug and exc.exit_code in (1, 2):
            raise
        if not exc.printed_elsewhere:
            print(f"clayflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clayflow: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's fault: still one line unless --debug
        if debug:
            raise
        print(
            f"clayflow: error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    from clayflow.cli.output import guard_output_streams

    guard_output_streams()
    sys.exit(main())

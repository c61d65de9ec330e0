"""``clayflow sample RUN --out FILE``: draw from a trained flow, as table rows (.csv/.npy) or
images (.npy levels, or a .png grid); a conditional run draws ``--n`` per row of ``--context``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from clayflow.errors import ClayflowError, UsageError

CHUNK = {"rows": 65536, "images": 256}  # samples drawn at once
TARGET_CHUNK = 4096  # draws whose target density is evaluated at once (a posterior's costs data x draws)
OUTSIDE_WARNING = 0.01  # share of a discrete column's draws outside its training values that sample warns of


def add_arguments(p: argparse.ArgumentParser, device_type) -> None:
    """The options of ``clayflow sample``."""
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint file")
    p.add_argument("--n", type=int,
                   help="number of samples (default: 1000); with --context per context row (default: 1); "
                        "class-conditional image runs: per class (default: 8)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="FILE", help="output .csv or .npy (image models: .npy or .png grid)")
    p.add_argument("--context", metavar="FILE",
                   help="conditional runs (train --context): a .csv/.npy of context rows, matched to the "
                        "training context columns by name (or position); writes each draw beside its context, "
                        "in the training file's column order")  # fmt: skip
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the base draws, > 0 (default: 1.0)")
    p.add_argument("--weights", action="store_true",
                   help="runs of clayflow fit: add each draw's log importance weight, log p~(x) - log q(x)")  # fmt: skip
    p.add_argument("--resample", action="store_true",
                   help="runs of clayflow fit: draw 10 times as many (at least 10,000) and resample --n of them "
                        "in proportion to their importance weights")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", type=device_type, default="cpu", help="device (default: cpu)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace, load_run) -> int:
    """Write ``--n`` samples at ``--temperature``: rows to .csv/.npy, or images to .npy/.png."""
    from clayflow.cli.inputs import warn_contexts_outside_training
    from clayflow.data.tabular import check_output_path, write_table
    from clayflow.train.config import check_seed

    n = args.n if args.n is not None else (1 if args.context else 1000)
    per_class = False
    if n <= 0:
        raise UsageError(f"--n must be a positive number of samples, got {n}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise UsageError(f"--temperature must be > 0 and finite, got {args.temperature}")
    check_seed(args.seed)
    flow, payload = load_run(args.run, args.device)
    if args.weights or args.resample or payload.get("target"):
        return _fitted(args, flow, payload, n)
    spec = payload["model_spec"]
    images = spec.get("levels") is not None
    check_output_path(args.out, (".npy", ".png") if images else (".csv", ".npy"), args.force)  # before the work
    columns = payload.get("data_columns")
    if images and flow.context_features:  # class-conditional: n of each class, the classes in order
        if args.context:
            raise UsageError("a class-conditional image run draws --n images of each class; it takes no --context")
        n = args.n if args.n is not None else 8
        classes = torch.arange(flow.context_features)
        context, per_class = torch.nn.functional.one_hot(classes, flow.context_features).double(), True
    else:
        context = _contexts(args, flow, columns)
        if context is not None:
            warn_contexts_outside_training(context, payload, flow.context_features)
    torch.manual_seed(args.seed)
    if context is None:
        samples = torch.cat([flow.sample(len(c), args.temperature).cpu()
                             for c in torch.arange(n).split(CHUNK["images" if images else "rows"])])  # fmt: skip
    else:  # n per context row, the rows of one context together
        context = context.repeat_interleave(n, 0)
        device = next(flow.parameters()).device
        samples = torch.cat([flow.sample(temperature=args.temperature, context=c.to(device)).cpu()
                             for c in context.split(CHUNK["rows"])])  # fmt: skip
    _check_finite(samples, args.temperature)
    if images:
        _write_images(args.out, samples, spec["levels"], columns=n if per_class else None)
    else:
        _warn_outside_training_values(samples, spec, payload)
        values = _shortest_decimals(samples)
        values = values if context is None else torch.cat([values, context], 1)
        if order := payload.get("column_order"):  # a conditional run's columns, back in the file's order
            back = np.argsort(order)
            values, columns = values[:, back], [columns[i] for i in back] if columns else None
        columns = columns or [f"x{i + 1}" for i in range(values.shape[1])]
        write_table(args.out, values.numpy(), list(columns))
    each = ""  # how the samples divide among contexts
    if per_class:
        each = f"{n} of each of {flow.context_features} classes, in class order; "
    elif context is not None:
        rows = len(context) // n
        each = f"{n} at each of {rows} context row{'s' if rows != 1 else ''}; "
    print(f"wrote {len(samples)} sample{'s' if len(samples) != 1 else ''} ({each}temperature {args.temperature}) "
          f"to {args.out}")  # fmt: skip
    return 0


def _warn_outside_training_values(samples: torch.Tensor, spec: dict, payload: dict) -> None:
    """A warning when more than ``OUTSIDE_WARNING`` of the draws ``(N, D)`` of a discrete
    column (counts, codes, classes) lie outside the values its training rows take: such draws
    (a class -2 of classes 0-2) are the model's mass, written as drawn, not clamped."""
    from clayflow.cli.inputs import outside_training_range

    discrete = list(spec.get("discrete") or [])
    outside = [f"{name} {100 * count / len(samples):.1f}% (training rows: {low:g} to {high:g})"
               for name, count, low, high in outside_training_range(samples[:, discrete], discrete, payload)
               if count / len(samples) > OUTSIDE_WARNING]  # fmt: skip
    if outside:
        print(f"clayflow: warning: draws of discrete columns lie outside the values of the training rows: "
              f"{', '.join(outside)}; they are the model's, written as drawn", file=sys.stderr)  # fmt: skip


def _fitted(args: argparse.Namespace, flow, payload: dict, n: int) -> int:
    """``sample`` of a run of ``clayflow fit``: draws with their log importance weights
    (``--weights``), or resampled by them (``--resample``)."""
    from clayflow.data.tabular import check_output_path, write_table
    from clayflow.variational import ImportanceWeights, load_target

    if not payload.get("target"):
        raise UsageError("--weights and --resample need a run of clayflow fit (a flow fitted to a target density)")
    if args.context:
        raise UsageError("a run of clayflow fit is not conditional; it takes no --context")
    if args.temperature != 1 and (args.weights or args.resample):
        raise UsageError("importance weights are of the flow itself: --weights and --resample take no --temperature")
    if args.weights and args.resample:
        raise UsageError("resampled draws all carry the same weight: give --weights or --resample, not both")
    check_output_path(args.out, (".csv", ".npy"), args.force)
    torch.manual_seed(args.seed)
    pool = max(10 * n, 10_000) if args.resample else n
    weights = None
    with torch.no_grad():
        if args.weights or args.resample:  # the target only now: plain draws need not find its file
            target = load_target(payload["target"], (payload.get("config") or {}).get("dims"))
            xs, log_targets, log_qs = [], [], []
            for chunk in torch.arange(pool).split(TARGET_CHUNK):
                x, log_q = flow.sample_and_log_prob(len(chunk))
                xs.append(x.cpu())
                log_targets.append(target(x).cpu())
                log_qs.append(log_q.cpu())
            x = torch.cat(xs)
            weights = ImportanceWeights(torch.cat(log_targets), torch.cat(log_qs))
        else:
            x = torch.cat([flow.sample(len(c), args.temperature).cpu() for c in torch.arange(n).split(CHUNK["rows"])])
    _check_finite(x, args.temperature)
    columns = [f"x{i + 1}" for i in range(x.shape[1])]
    values = x.double()
    if args.resample:
        chosen = weights.resample(n, torch.Generator().manual_seed(args.seed))
        values = values[chosen]
        if (effective := weights.ess * pool) < n:  # fewer independent draws than rows: rows repeat a few draws
            print(f"clayflow: warning: the {n} resampled rows hold {len(chosen.unique())} distinct draws (the weights' "
                  f"ESS is {effective:.0f} of {pool} draws): they are far from independent samples of the target; "
                  "fit the flow better (more steps, --model nsf) or ask for fewer rows", file=sys.stderr)  # fmt: skip
    if args.weights:
        values = torch.cat([values, weights.log_w[:, None]], 1)
        columns.append("log_weight")
    write_table(args.out, values.numpy(), columns)
    how = f"resampled from {pool} draws by their importance weights" if args.resample else "draws of the flow"
    ess = f"; ESS {100 * weights.ess:.1f}%" if weights is not None and pool > 1 else ""  # one draw's is 100%
    print(f"wrote {n} samples ({how}{', with log weights' if args.weights else ''}{ess}) to {args.out}")
    return 0


def _contexts(args: argparse.Namespace, flow, columns: list[str] | None) -> torch.Tensor | None:
    """The context rows ``(M, K)`` (float64) of ``--context`` (None for an unconditional run), matched to
    the run's context columns (the last K of its data columns) by name, else by position."""
    from clayflow.data.tabular import align_columns, read_table

    k = flow.context_features
    if not k:
        if args.context:
            raise UsageError("--context is for conditional runs (trained with --context); this one models p(x)")
        return None
    names = columns[-k:] if columns else None
    if not args.context:
        which = f" ({', '.join(names)})" if names else ""
        raise UsageError(f"this run learned p(x | c) given {k} context column(s){which}; give --context FILE with their values")
    values, header = read_table(args.context)
    if (header is None or names is None) and values.shape[1] != k:  # matched by position
        raise ClayflowError(f"{args.context} has {values.shape[1]} columns; the run's context has {k}")
    if header is not None and names is not None and set(names) <= set(header):
        values, header = values[:, [header.index(c) for c in names]], names  # other columns are ignored
    return torch.as_tensor(align_columns(values, header, names, args.context))  # float64: written as read


def _check_finite(samples: torch.Tensor, temperature: float) -> None:
    """Never write NaN or inf as if they were samples: a one-line error instead."""
    finite = torch.isfinite(samples.reshape(len(samples), -1)).all(1)
    if finite.all():
        return
    why = (
        "the flow cannot map draws that far out to finite values; lower --temperature"
        if temperature > 1
        else "the model gives non-finite values; check the run (it may have diverged)"
    )
    raise ClayflowError(
        f"{int((~finite).sum())} of {len(samples)} samples at temperature {temperature} are not finite "
        f"(NaN or inf), so nothing was written: {why}"
    )


def _write_images(path: str, images: torch.Tensor, levels: int, columns: int | None = None) -> None:
    """Images of integer levels as an ``(N, C, H, W)`` .npy array, or a .png grid (of
    ``columns`` images per row; default square)."""
    from clayflow.files import atomic_write
    from clayflow.plotting.images import save_image_grid

    dtype = np.uint8 if levels <= 256 else np.int32
    try:
        if path.lower().endswith(".png"):
            save_image_grid(images, levels, Path(path), columns=columns)
        else:
            atomic_write(Path(path), lambda file: np.save(file, images.numpy().astype(dtype)))
    except OSError as exc:
        raise ClayflowError(f"cannot write {path}: {exc.strerror or exc}") from None


def _shortest_decimals(samples: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """Float32 samples ``(N, D)`` as the float64 values of their shortest decimals: a grid value
    of a discrete column (2.9f, stored as 2.9000000954) is written 2.9, not 2.9000001; each
    float64 value is the same float32. (Through strings, ``chunk`` rows at a time: a string
    array takes 128 bytes per value.)"""
    if samples.dtype != torch.float32:
        return samples.double()
    rows = samples.numpy()
    parts = np.split(rows, range(chunk, len(rows), chunk))
    return torch.from_numpy(np.concatenate([part.astype(str).astype(np.float64) for part in parts]))

"""``clayflow score RUN --data DATA``: each example's log-likelihood and bits/dim, and as an
anomaly detector a score (``--method``), a flag at a false-alarm rate calibrated on the run's
validation split (``--fpr``), and with labels AUROC, AUPRC and a ROC curve."""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from clayflow.errors import UsageError

DEFAULT_DRAWS = 8  # --draws: dequantization draws per example

METHOD_HELP = (
    "anomaly score: likelihood (-log p), typicality (|-log p - its validation mean|), ratio "
    "(against a full-covariance Gaussian of the training rows; images: a local pixel model) or complexity (-log2 p "
    "minus the bits of a generic code: images, zlib; tables, independent columns) (default likelihood)"
)


def add_arguments(p: argparse.ArgumentParser, device_type) -> None:
    """The options of ``clayflow score``."""
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint file")
    p.add_argument("--data", required=True, metavar="DATA",
                   help=".csv/.npy file, images:DIR (every image), or a dataset (its test split)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output .csv (row, log_prob, bits_per_dim[, score, flag]) or .npy (the same columns but row)")  # fmt: skip
    p.add_argument("--method", default="likelihood", metavar="METHOD", help=METHOD_HELP)
    p.add_argument("--fpr", type=float, metavar="RATE",
                   help="flag rows above the threshold that flags this share of the run's validation rows (e.g. 0.01)")  # fmt: skip
    p.add_argument("--labels", metavar="FILE", help="a .csv/.npy of one label per row: 1 anomaly, 0 normal")
    p.add_argument("--label-column", metavar="NAME", help="the column of --data holding those labels (not scored)")
    p.add_argument("--roc", metavar="FILE.png", help="with labels: draw the ROC curve to this picture")
    p.add_argument("--draws", type=int, metavar="K",
                   help="a model that dequantizes (images, discrete columns): each example's log-likelihood is the "
                        "importance-weighted bound over K noise draws, log mean_k p(x + u_k), tighter and less noisy "
                        f"than one draw's (default: {DEFAULT_DRAWS}; a CNF evaluated with Hutchinson's trace takes one, since "
                        "K random log-dets would bias the bound upwards)")  # fmt: skip
    p.add_argument("--device", type=device_type, default="cpu", help="device (default: cpu)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace, load_run) -> int:
    """Write each example's log-likelihood, bits/dim and anomaly score (and flag); print the
    threshold and, with labels, the detection figures."""
    from clayflow.cli.inputs import examples_to_score, read_labels, warn_contexts_outside_training
    from clayflow.data.tabular import check_output_path, write_table
    from clayflow.diagnostics.anomaly import check_labels, check_method, evaluate_labels
    from clayflow.train.evaluate import effective_draws, log_prob_in_chunks, one_draw_reason

    check_output_path(args.out, force=args.force)  # fail before the expensive part
    if args.roc:
        check_output_path(args.roc, suffixes=(".png",), force=args.force)
    if args.labels and args.label_column:
        raise UsageError("give the labels either as --labels FILE or as --label-column NAME, not both")
    if args.roc and not (args.labels or args.label_column):
        raise UsageError("--roc draws the ROC curve of labelled data; give --labels or --label-column")
    if args.draws is not None and args.draws < 1:
        raise UsageError(f"--draws must be at least 1, got {args.draws}")
    flow, payload = load_run(args.run, args.device)
    if args.draws is None:
        args.draws = DEFAULT_DRAWS
    elif args.draws > 1 and (why := one_draw_reason(flow)):  # asked for, and not taken
        print(f"clayflow: note: --draws {args.draws} has no effect on this run: {why}; one draw is taken", file=sys.stderr)
    spec = payload["model_spec"]
    check_method(args.method, spec.get("levels"), args.fpr if args.fpr is not None else 0.5)
    if flow.context_features and args.method in ("ratio", "complexity"):
        raise UsageError(f"--method {args.method} compares with a reference of p(x); this run learned p(x | c): "
                         "use likelihood or typicality")  # fmt: skip
    x, files, labels = examples_to_score(args.data, payload, args.label_column)
    if args.labels:
        labels = read_labels(args.labels, len(x))
    if labels is not None:  # before anything is computed or written
        labels = check_labels(labels, args.labels or f"--label-column {args.label_column}")
    if flow.context_features and spec.get("levels") is None:  # rows (x, c) of a conditional table
        warn_contexts_outside_training(x, payload, flow.context_features)
    log_prob = log_prob_in_chunks(flow, x, draws=args.draws)
    dims = math.prod(flow.event_shape) if flow.event_shape is not None else x[0].numel()  # x's, not a context's
    bits_per_dim = -log_prob / (dims * math.log(2))
    scorer = _calibrated(args, flow, payload, spec)
    scores = scorer.scores(log_prob, x) if scorer is not None else -log_prob.double()
    flags = scorer.flag(scores) if scorer is not None and args.fpr is not None else None
    _write(args.out, write_table, log_prob, bits_per_dim, scores if scorer is not None else None, flags, files)
    finite = log_prob.isfinite()
    line = f"scored {len(x)} examples: "
    if finite.any():
        over = "" if finite.all() else f" over the {int(finite.sum())} with a finite one"
        line += (f"mean log-likelihood {log_prob[finite].mean():.4f} nats ({bits_per_dim[finite].mean():.4f} "
                 f"bits/dim){over}")  # fmt: skip
    else:
        line += "none has a finite log-likelihood"
    if not finite.all():
        fate = [word for word, done in (("flagged", flags is not None), ("ranked most anomalous", labels is not None)) if done]
        print(_nonfinite_note(log_prob, files, " and ".join(fate)), file=sys.stderr)
    if (draws := effective_draws(flow, args.draws)) > 1:
        line += f" (importance-weighted over {draws} dequantization draws)"
    if flags is not None:
        line += (f"; {args.method} score threshold {scorer.threshold:.4f} (flags {args.fpr:g} of the validation "
                 f"rows): {int(flags.sum())} flagged ({flags.double().mean():.1%})")  # fmt: skip
    print(f"{line}; wrote {args.out}")
    if labels is not None:
        figures = evaluate_labels(scores, flags if flags is not None else torch.zeros(len(x), dtype=torch.bool), labels)
        text = f"{figures['normal']} normal and {figures['anomalies']} anomalous rows: AUROC {figures['auroc']:.4f}, AUPRC {figures['auprc']:.4f}"
        if flags is not None:
            text += f"; flags {figures['detection_rate']:.1%} of anomalies at a false-alarm rate of {figures['false_alarm_rate']:.1%}"
        print(text)
        if args.roc:
            from clayflow.plotting.anomaly import plot_roc

            print(f"ROC curve: {plot_roc(args.roc, *figures['roc'], figures['auroc'], args.method)}")
    return 0


def _calibrated(args, flow, payload, spec):
    """The scorer of ``--method``, calibrated on the run's validation split, or None when only
    -log p is asked for (no ``--fpr``, method likelihood)."""
    from clayflow.cli.inputs import run_dataset
    from clayflow.diagnostics.anomaly import calibrate
    from clayflow.models import ModelSpec
    from clayflow.train.evaluate import log_prob_in_chunks

    if args.fpr is None and args.method == "likelihood":
        return None
    data = run_dataset(args.run, payload, f"its validation split is what calibrates --{'fpr' if args.fpr else 'method'}")
    val = data.val if len(data.val) >= 2 else data.train
    if args.fpr is not None and len(val) * args.fpr < 5:
        print(f"note: the threshold rests on {len(val)} validation rows, fewer than 5 of them above it at --fpr "
              f"{args.fpr:g}; the false-alarm rate it gives will vary", file=sys.stderr)  # fmt: skip
    val_log_prob = log_prob_in_chunks(flow, val, data.loader_options, draws=args.draws)
    train = data.train if isinstance(data.train, torch.Tensor) else None
    model = ModelSpec.from_dict(spec)
    fpr = args.fpr if args.fpr is not None else 0.5
    discrete = dict(zip(model.discrete, model.discrete_steps))
    return calibrate(args.method, fpr, val, val_log_prob, train, spec.get("levels"), discrete)


def _nonfinite_note(log_prob: torch.Tensor, files: list[str] | None, fate: str, shown: int = 5) -> str:
    """One line naming the examples (rows 1.., or files) whose log-likelihood is -inf (density
    0 in float32), +inf or NaN (the model's float32 arithmetic overflowed), and ``fate``: what
    the scores made of them ("flagged", ...)."""
    parts = []
    overflowed = "the model's float32 arithmetic overflowed"
    for kind, where, why in (("-inf", log_prob.isneginf(), "density 0 in float32"),
                             ("+inf", log_prob.isposinf(), overflowed), ("nan", log_prob.isnan(), overflowed)):  # fmt: skip
        rows = where.nonzero().flatten().tolist()
        if rows:
            names = [files[i] if files is not None else f"row {i + 1}" for i in rows[:shown]]
            parts.append(f"{len(rows)} {kind} ({why}: {', '.join(names)}{', ...' if len(rows) > shown else ''})")
    return (f"note: log-likelihoods of {'; '.join(parts)}: values far outside what the model was trained on; "
            f"written as they are{', ' + fate if fate else ''}")


def _write(out, write_table, log_prob, bits_per_dim, scores, flags, files) -> None:
    """The CSV's columns, or for .npy an array ``(N, k)`` of the same columns without row/file."""
    columns, names = [log_prob.numpy(), bits_per_dim.numpy()], ["log_prob", "bits_per_dim"]
    for name, values in (("score", scores), ("flag", flags)):  # with --method or --fpr
        if values is not None:
            columns.append(values.double().numpy())
            names.append(name)
    if out.lower().endswith(".npy"):
        write_table(out, np.stack(columns, 1), names)
    elif files is not None:  # a folder of images: each row names its file
        write_table(out, np.stack(columns, 1), ["file", *names], files)
    else:
        write_table(out, np.stack([np.arange(1, len(log_prob) + 1), *columns], 1), ["row", *names])

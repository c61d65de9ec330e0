"""``clayflow explain RUN``: what each layer of a trained flow does, as a table of its share
of the log-likelihood and as pictures in ``RUN/explain`` (or ``--out``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from clayflow.errors import ClayflowError, UsageError


def add_arguments(p: argparse.ArgumentParser, device_type) -> None:
    """The options of ``clayflow explain``."""
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", metavar="DATA", help="examples to push through the layers (default: the run's test split; a run of clayflow fit: its own draws)")
    p.add_argument("--rows", type=int, default=1000, metavar="N", help="examples used (default 1000)")
    p.add_argument("--out", metavar="DIR", help="where the pictures go (default RUN/explain)")
    p.add_argument("--force", action="store_true", help="replace pictures of these names already in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of dequantization noise and samples (default 0)")
    p.add_argument("--device", type=device_type, default="cpu", help="device (default: cpu)")


# The pictures' file names: the contributions for every run, then by the kind of data
CONTRIBUTIONS, SCALES, MARGINALS = "contributions.png", "scales.png", "marginals.png"
LAYERS, ANIMATION, TRAJECTORIES = "layers.png", "layers.gif", "trajectories.png"  # 2-D data (trajectories: CNFs)


def picture_names(images: bool, dims: int, continuous: bool) -> tuple[str, ...]:
    """The pictures ``explain`` draws for images, or for vectors of ``dims`` dimensions
    (``continuous``: the flow has one CNF block, whose paths are drawn)."""
    if images:
        return CONTRIBUTIONS, SCALES
    if dims == 2:
        return (CONTRIBUTIONS, LAYERS, ANIMATION, *((TRAJECTORIES,) if continuous else ()))
    return CONTRIBUTIONS, MARGINALS


def run(args: argparse.Namespace, load_run) -> int:
    """Print each layer's share of log p and draw the pictures that apply to the data's kind."""
    from clayflow.cli.inputs import examples_to_score, run_dataset
    from clayflow.core.conditioning import at_context
    from clayflow.diagnostics.explanation import explain
    from clayflow.plotting import explain as pictures
    from clayflow.train.config import check_seed
    from clayflow.transforms import CNF

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise ClayflowError(f"{run_dir} is not a run directory")
    if args.rows < 2:
        raise UsageError("--rows must be >= 2")
    check_seed(args.seed)
    flow, payload = load_run(args.run, args.device)
    if args.data:
        x = examples_to_score(args.data, payload)[0]
    elif payload.get("target"):  # a run of clayflow fit: no data, its own draws instead
        from clayflow.cli.verify import own_draws

        x = own_draws(flow, args.rows, args.seed)
    else:
        x = run_dataset(args.run, payload).test
    x, context = flow.split_rows(x[: args.rows])
    images = x.dim() == 4
    names = picture_names(images, x[0].numel(), sum(isinstance(m, CNF) for m in flow.modules()) == 1)
    out = Path(args.out) if args.out else run_dir / "explain"  # RUN/explain is clayflow's own
    if args.out and not args.force and (taken := [name for name in names if (out / name).exists()]):
        raise UsageError(f"{out} already holds {', '.join(taken)}; give --force to replace them, or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClayflowError(f"cannot write to {out}: {exc.strerror or exc}") from None
    explanation = explain(flow, x, args.seed, context)
    print(explanation.table())
    if context is not None:  # pictures of p(x | c) at one c, the first example's
        flow = at_context(flow, context[:1])
        if not images and x.shape[1] == 2:  # the 2-D pictures then show that density's own samples
            with torch.random.fork_rng():
                torch.manual_seed(args.seed)
                x = flow.sample(len(x))
        print(f"pictures at the first example's context: {_context_text(payload, context[0])}")
    drawn = [pictures.plot_contributions(explanation, out / CONTRIBUTIONS, images)]
    try:
        if SCALES in names:
            drawn.append(pictures.plot_image_scales(flow, x, out / SCALES, seed=args.seed))
        if LAYERS in names:
            drawn.append(pictures.plot_layers_2d(flow, x[:500], out / LAYERS, args.seed))
            drawn.append(pictures.animate_2d(flow, x[:500], out / ANIMATION, args.seed))
        if TRAJECTORIES in names:
            drawn.append(pictures.plot_cnf_trajectories(flow, out / TRAJECTORIES, seed=args.seed))
        if MARGINALS in names:
            drawn.append(pictures.plot_marginals(explanation, out / MARGINALS))
    except OSError as exc:
        raise ClayflowError(f"cannot write the pictures in {out}: {exc.strerror or exc}") from None
    print("pictures: " + ", ".join(str(p) for p in drawn if p is not None))
    return 0


def _context_text(payload: dict, context) -> str:
    """A context row as a user named it: the class of a class-conditional image run, else
    the context columns' values."""
    if classes := payload.get("classes"):
        return f"class {classes[int(context.argmax())]}"
    names = (payload.get("data_columns") or [])[-len(context) :] or [f"c{k + 1}" for k in range(len(context))]
    return ", ".join(f"{name} = {value:.4g}" for name, value in zip(names, context.tolist(), strict=True))

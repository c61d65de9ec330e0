"""Autoregressive and spline flows: clayflow's MAF and NSF beside zuko's and nflows', at equal
architecture, timed with ``speed.measure`` (interleaved blocks, rotating order, medians with
the min and max over blocks).

    pip install -e ".[bench]"
    python benchmarks/compare/autoregressive.py              # about 10 minutes, 1 thread
    python benchmarks/compare/autoregressive.py --quick      # a smoke test, under a minute
    python benchmarks/compare/run.py --only autoregressive   # the same, from the harness

Writes ``benchmarks/results/compare_autoregressive/{speed.csv,speed.md,config.json}``.

Families and the common architecture (float32, N(0, I) base):

* ``MAF``: ``LAYERS`` affine MADE layers, the feature order reversed between layers;
* ``NSF-AR``: ``LAYERS`` rational-quadratic spline MADE layers (``BINS`` bins on
  ``[-TAIL_BOUND, TAIL_BOUND]``, identity/linear tails outside), reversed between layers;
* ``NSF-C``: ``LAYERS`` spline couplings, even/odd features kept in turn (clayflow's
  ``alternating_mask``), reversed between layers.

Every MADE is ``D -> HIDDEN -> ReLU -> HIDDEN -> ReLU -> D * P`` (``DEPTH`` = 2 hidden layers,
masked, the sequential degrees of Germain et al.), every coupling net the same MLP unmasked.
``clayflow.models.nsf`` puts a learned LU linear map between layers by default; the matched
rows turn it off (``lu=False``) and the row ``clayflow + LU`` gives the default as shipped.
Nobody is compiled. Each library trains with the Adam its user gets (``contenders.py``):
torch's default for the peers, clayflow's trainer's (fused) for clayflow.

Workloads, at D = 8 and 64, batch 256 (``speed.WORKLOADS``): train steps/s (Adam lr 1e-3,
loss -mean log_prob), log_prob samples/s and sample samples/s. At batch 4096 (``--wide``)
train and log_prob only: sampling an autoregressive flow takes D network passes per layer,
seconds per call there, so its ``sample`` is a no-op for that cell and the row is dropped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report
import speed
from contenders import Contender, _ContextFree, _version, clayflow_contender, nflows_contender, zuko_contender

from clayflow import models

FAMILIES = ("MAF", "NSF-AR", "NSF-C")
LAYERS = 5  # transforms (clayflow's maf / nsf default)
HIDDEN = 128  # MADE / coupling-net width
DEPTH = 2  # hidden layers
BINS = 8
TAIL_BOUND = 5.0
SEED = 0  # weights (torch.manual_seed before each build) and data (speed.measure's own seed 0)
CLAYFLOW = "clayflow"
CLAYFLOW_LU = "clayflow + LU"
CLAYFLOW_TORCH_ADAM = "clayflow + torch Adam"
LIBRARIES = (CLAYFLOW, "zuko", "nflows")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "compare_autoregressive"

LU_NOTE = "clayflow's default: a learned LU linear map between layers instead of a reversal"
DIFFERS = {
    (CLAYFLOW, "MAF"): "log-scale a * tanh(r), learned per-feature a (D extra parameters); fused Adam",
    (CLAYFLOW, "NSF-AR"): "min bin width/height/derivative 1e-3; fused Adam",
    (CLAYFLOW, "NSF-C"): "net sees the kept half only (index_select); fused Adam",
    (CLAYFLOW_LU, "NSF-AR"): LU_NOTE,
    (CLAYFLOW_LU, "NSF-C"): LU_NOTE,
    **{
        (CLAYFLOW_TORCH_ADAM, f): "the matched clayflow flow, trained with torch's default Adam"
        for f in FAMILIES
    },
    ("zuko", "MAF"): (
        "zuko.flows.MAF: order ascending/descending in turn (no permutation layer); "
        "log-scale soft-bounded r / (1 + |r| / 6.9)"
    ),
    ("zuko", "NSF-AR"): (
        "zuko.flows.NSF: order ascending/descending in turn (no permutation layer); min slope 1e-3"
    ),
    ("zuko", "NSF-C"): "zuko GeneralCouplingTransform + MonotonicRQSTransform, PermutationTransform between",
    ("nflows", "MAF"): (
        "nflows MaskedAutoregressiveFlow (residual blocks off): a reversal before every layer "
        "(5, not 4); scale softplus(r) + 1e-3"
    ),
    ("nflows", "NSF-AR"): (
        "MaskedPiecewiseRationalQuadraticAutoregressiveTransform, linear tails, residual "
        "blocks off; ReversePermutation between"
    ),
    ("nflows", "NSF-C"): (
        "PiecewiseRationalQuadraticCouplingTransform, linear tails; ReversePermutation between"
    ),
}


# --- builders -----------------------------------------------------------------------------------


def build_clayflow(family: str, features: int, lu: bool = False) -> Contender:
    options = {"layers": LAYERS, "hidden": HIDDEN, "depth": DEPTH}
    if family == "MAF":
        flow = models.maf(features, **options)
    else:
        flow = models.nsf(features, **options, bins=BINS, tail_bound=TAIL_BOUND, lu=lu,
                          autoregressive=family == "NSF-AR")  # fmt: skip
    name = CLAYFLOW_LU if lu else CLAYFLOW
    return replace(clayflow_contender(flow, DIFFERS[name, family]), name=name)


def build_zuko(family: str, features: int) -> Contender:
    import zuko

    hidden = (HIDDEN,) * DEPTH
    if family == "MAF":
        flow = zuko.flows.MAF(features, transforms=LAYERS, hidden_features=hidden)
    elif family == "NSF-AR":
        flow = zuko.flows.NSF(features, transforms=LAYERS, bins=BINS, hidden_features=hidden)
    else:
        from zuko.flows.coupling import GeneralCouplingTransform

        reverse = torch.arange(features - 1, -1, -1)
        shapes = [(BINS,), (BINS,), (BINS - 1,)]
        spline = functools.partial(zuko.transforms.MonotonicRQSTransform, bound=TAIL_BOUND)
        steps = []
        for k in range(LAYERS):
            if k > 0:
                steps.append(
                    zuko.flows.UnconditionalTransform(
                        zuko.transforms.PermutationTransform, reverse, buffer=True
                    )
                )
            kept = torch.arange(features) % 2 == k % 2  # True: kept (as clayflow's alternating_mask)
            steps.append(
                GeneralCouplingTransform(
                    features, mask=kept, univariate=spline, shapes=shapes, hidden_features=hidden
                )
            )
        flow = zuko.flows.Flow(
            steps,
            zuko.flows.UnconditionalDistribution(
                zuko.distributions.DiagNormal, torch.zeros(features), torch.ones(features), buffer=True
            ),
        )
    return zuko_contender(flow, DIFFERS["zuko", family])


def _nflows_coupling_net(in_features: int, out_features: int) -> nn.Module:
    net = _ContextFree(in_features, out_features)  # contenders.mlp: in -> 128 -> 128 -> out
    assert HIDDEN == 128 and DEPTH == 2, "contenders.mlp is fixed at two hidden layers of 128"
    return net


def build_nflows(family: str, features: int) -> Contender:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow, MaskedAutoregressiveFlow
    from nflows.transforms import (
        CompositeTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    if family == "MAF":
        # num_blocks_per_layer counts the hidden-to-hidden blocks after the input layer
        flow = MaskedAutoregressiveFlow(features, HIDDEN, LAYERS, DEPTH - 1, use_residual_blocks=False)
    else:
        steps = []
        for k in range(LAYERS):
            if k > 0:
                steps.append(ReversePermutation(features))
            if family == "NSF-AR":
                steps.append(
                    MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                        features,
                        HIDDEN,
                        num_bins=BINS,
                        tails="linear",
                        tail_bound=TAIL_BOUND,
                        num_blocks=DEPTH - 1,
                        use_residual_blocks=False,
                    )
                )
            else:
                mask = torch.where(torch.arange(features) % 2 == k % 2, -1, 1)  # > 0: transformed
                steps.append(
                    PiecewiseRationalQuadraticCouplingTransform(
                        mask, _nflows_coupling_net, num_bins=BINS, tails="linear", tail_bound=TAIL_BOUND
                    )
                )
        flow = Flow(CompositeTransform(steps), StandardNormal([features]))
    return nflows_contender(flow, DIFFERS["nflows", family])


BUILDERS = {CLAYFLOW: build_clayflow, "zuko": build_zuko, "nflows": build_nflows}


def contenders(
    family: str, features: int, libraries=LIBRARIES, lu_row: bool = True, adam_row: bool = False
) -> list[Contender]:
    """The family's contenders, each built after ``torch.manual_seed(SEED)``; ``lu_row``: also
    clayflow's NSF as shipped (LU); ``adam_row``: also clayflow trained with torch's default
    Adam, as the peers are (isolates what its fused Adam gives)."""
    out = []
    for name in libraries:
        torch.manual_seed(SEED)
        out.append(BUILDERS[name](family, features))
    if lu_row and family != "MAF" and CLAYFLOW in libraries:
        torch.manual_seed(SEED)
        out.append(build_clayflow(family, features, lu=True))
    if adam_row and CLAYFLOW in libraries:
        torch.manual_seed(SEED)
        out.append(
            replace(build_clayflow(family, features), name=CLAYFLOW_TORCH_ADAM, optimizer=torch.optim.Adam)
        )
    return out


# --- the run ------------------------------------------------------------------------------------


# A ``speed.SpeedRow`` with the flow family first.
Row = dataclasses.make_dataclass("Row", [("family", str), *((f.name, f.type) for f in dataclasses.fields(speed.SpeedRow))])


def _no_sample(contender: Contender) -> Contender:
    return replace(contender, sample=lambda n: None)


def run(args, log=print) -> list[Row]:
    rows = []
    cells = [(d, 256, True) for d in args.dims] + [(d, b, False) for d in args.dims for b in args.wide]
    for family in args.families:
        for features, batch, sampled in cells:
            cs = contenders(family, features, args.libraries, args.lu_row, args.adam_row)
            log(f"{family}: dim {features}, batch {batch}: " + ", ".join(c.name for c in cs))
            timed = cs if sampled else [_no_sample(c) for c in cs]
            cell = speed.measure(timed, features, batch, args.blocks, args.block_seconds)
            rows += [
                Row(family, **dataclasses.asdict(r))
                for r in cell
                if sampled or r.workload != "sample samples/s"
            ]
            for c in cs:
                params = speed.parameters(c)
                rows.append(Row(family, c.name, features, batch, "parameters", params, params, params))
    return rows


def write_csv(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(Row)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def markdown(rows: list[dict], info: dict) -> str:
    """The tables: per family and workload, one line per contender, one column per (D, batch):
    median [min-max] over blocks and the ratio of medians to clayflow's (> 1: faster)."""
    m = info["machine"]
    lines = [
        "# Autoregressive and spline flows: clayflow beside zuko and nflows\n",
        "Command: `" + info["command"] + "` (see `benchmarks/compare/autoregressive.py`).\n",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, torch {m['torch']}, "
        f"{m['threads']} thread(s), float32; versions: "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; took {info['seconds']:.0f} s.\n",
        "Config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()) + "\n",
        (
            f"Architecture: {LAYERS} transforms; MADE / coupling net with {DEPTH} hidden layers of {HIDDEN} "
            f"(ReLU); splines of {BINS} bins on [-{TAIL_BOUND:g}, {TAIL_BOUND:g}]; features reversed between "
            "transforms; no torch.compile. Seeds: torch.manual_seed(0) before each build; data from "
            "speed.measure's generator (seed 0). Timing: speed.measure (blocks; in each, every contender "
            "runs for at least block_seconds, the order rotating from block to block).\n"
        ),
        (
            "Each cell: median [min-max] over blocks, x = ratio of medians to clayflow's (matched, no LU). "
            "Higher is better for all.\n"
        ),
    ]
    cells = sorted({(int(r["features"]), int(r["batch"])) for r in rows})
    ran = {(r["family"], r["contender"]) for r in rows}
    value = {
        (r["family"], r["contender"], int(r["features"]), int(r["batch"]), r["workload"]): r for r in rows
    }
    header = "| contender | " + " | ".join(f"D {d}, batch {b}" for d, b in cells) + " |"
    rule = "|---|" + "---|" * len(cells)
    for family in dict.fromkeys(r["family"] for r in rows):
        names = list(dict.fromkeys(r["contender"] for r in rows if r["family"] == family))
        lines.append(f"\n## {family}\n")
        for workload in (*speed.WORKLOADS, "parameters"):
            lines += [f"\n### {family}: {workload}\n", header, rule]
            for name in names:
                parts = []
                for d, b in cells:
                    r, base = (
                        value.get((family, name, d, b, workload)),
                        value.get((family, CLAYFLOW, d, b, workload)),
                    )
                    if r is None:
                        parts.append("-")
                    elif workload == "parameters":
                        parts.append(f"{int(float(r['median'])):,}")
                    else:
                        ratio = float(r["median"]) / float(base["median"]) if base else float("nan")
                        parts.append(
                            f"{report._fmt(float(r['median']))} "
                            f"[{report._fmt(float(r['low']))}-{report._fmt(float(r['high']))}] x{ratio:.2f}"
                        )
                lines.append(f"| {name} | " + " | ".join(parts) + " |")
    lines += ["\n## How each contender departs from the common architecture\n", "| family | contender | note |",
              "|---|---|---|"]  # fmt: skip
    lines += [
        f"| {f} | {n} | {note.replace('|', chr(92) + '|')} |"
        for (n, f), note in sorted(DIFFERS.items(), key=lambda kv: kv[0][::-1])
        if (f, n) in ran
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 64])
    parser.add_argument(
        "--wide", type=int, nargs="*", default=[], help="batches timed for train and log_prob only"
    )
    parser.add_argument("--no-lu-row", dest="lu_row", action="store_false", help="leave out clayflow + LU")
    parser.add_argument(
        "--torch-adam-row",
        dest="adam_row",
        action="store_true",
        help="add clayflow with torch's default Adam",
    )
    parser.add_argument("--blocks", type=int, default=15, help="timed blocks per figure")
    parser.add_argument("--block-seconds", type=float, default=0.25, help="seconds per contender per block")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.block_seconds, args.dims, args.wide = 2, 0.02, [8], []
    torch.set_num_threads(args.threads)
    log = functools.partial(print, flush=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    log("config:", json.dumps(config))
    log("machine:", json.dumps(report.machine()))
    versions = {"clayflow": _version("clayflow"), "zuko": _version("zuko"), "nflows": _version("nflows")}
    log("versions:", json.dumps(versions))
    start = time.perf_counter()
    rows = run(args, log)
    seconds = time.perf_counter() - start
    write_csv(args.out / "speed.csv", rows)
    info = {
        "command": " ".join(
            ["python benchmarks/compare/autoregressive.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "config": config,
        "machine": report.machine(),
        "versions": versions,
        "seconds": seconds,
    }
    (args.out / "config.json").write_text(json.dumps(info, indent=2))
    text = markdown(report.read_rows(args.out / "speed.csv"), info)
    (args.out / "speed.md").write_text(text)
    log(text)
    log(f"wrote {args.out / 'speed.md'} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()

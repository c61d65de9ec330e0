"""Where the time of one workload goes, for clayflow and a peer: torch.profiler op tables.

    python benchmarks/compare/where_time_goes.py --dim 64 --batch 4096 --workload train [--peer FrEIA]

Prints, per contender, the measured time per call and the ops that take the most self CPU
time, and the share of the matrix products (``aten::mm``, ``aten::addmm``, ``aten::bmm``,
``aten::linear``, mkldnn): the floor that no framework can lower, since every library does the
same products. Used for the closing note wherever a speed target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contenders import BUILDERS, compiled, with_fused_adam
from speed import WORKLOADS, workload_calls

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "mkldnn", "cpp_fused", "extern_kernels")
SHORT = {"train": WORKLOADS[0], "log_prob": WORKLOADS[1], "sample": WORKLOADS[2]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--workload", choices=sorted(SHORT), default="train")
    parser.add_argument("--peer", default="FrEIA")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(2)
    x = torch.randn(args.batch, args.dim)
    contenders = [
        BUILDERS["clayflow"](args.dim),
        compiled(BUILDERS["clayflow"](args.dim)),
        BUILDERS[args.peer](args.dim),
        with_fused_adam(compiled(BUILDERS["plain PyTorch"](args.dim))),
    ]
    print(f"torch {torch.__version__}, 2 threads; {args.workload} at dim {args.dim}, batch {args.batch}")
    for contender in contenders:
        call, _ = workload_calls(contender, x)[SHORT[args.workload]]
        for _ in range(5):
            call()
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        per_call = (time.perf_counter() - start) / args.calls
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                call()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if any(m in e.key for m in MATMUL))
        print(
            f"\n== {contender.name}: {per_call * 1e3:.2f} ms per call; matrix products {100 * matmul / total:.0f}% of self CPU time"
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

"""Training speed of the default 2D model by CPU threads, on a quiet machine and beside busy
processes: the measurement behind ``--threads``'s default (``clayflow.train.report``).

    python benchmarks/threads.py [--steps 300] [--busy 3] [--repeats 3]

For each condition (0 or ``--busy`` other processes spinning on the CPU) it times ``--steps``
training steps of the default RealNVP on moons (batch 512) with 1 thread and with torch's
default (one per core), in interleaved blocks, and prints the median [min-max] seconds and
the ratio default / 1 thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import time

import torch

from clayflow import models


def spin() -> None:
    while True:
        pass


def seconds(threads: int, steps: int, seed: int = 0) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    flow = models.realnvp(2)  # the builder's defaults: 8 layers of width 128
    optimizer = torch.optim.Adam(flow.parameters(), 2e-3, fused=True)
    x = torch.randn(512, 2)
    start = time.perf_counter()
    for _ in range(steps):
        loss = -flow.log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--busy", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    print(f"# threads: {args.steps} steps of realnvp(2) on batch 512, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {cores} default threads, seed 0")  # fmt: skip
    for busy in (0, args.busy):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            times = {1: [], cores: []}
            for _ in range(args.repeats):
                for threads, seconds_taken in times.items():
                    seconds_taken.append(seconds(threads, args.steps))
        finally:
            for process in spinners:
                process.terminate()
        one, default = statistics.median(times[1]), statistics.median(times[cores])
        print(
            f"{busy} busy processes: 1 thread {one:.2f} s [{min(times[1]):.2f}-{max(times[1]):.2f}], "
            f"{cores} threads {default:.2f} s [{min(times[cores]):.2f}-{max(times[cores]):.2f}], "
            f"ratio {default / one:.2f}"
        )


if __name__ == "__main__":
    main()

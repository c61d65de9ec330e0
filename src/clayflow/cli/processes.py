"""``clayflow train --nproc N``: the same command as N processes of this machine under
``torchrun`` (see ``clayflow.train.distributed`` for how they train as one run)."""

from __future__ import annotations

import os
import sys

from clayflow.errors import UsageError


def restarted_by_torchrun() -> bool:
    """Whether torchrun's elastic agent restarted this job after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def launch_processes(count: int, argv: list[str]) -> None:
    """Run the command ``argv`` (without ``--nproc``) as ``count`` processes on this machine
    under ``torchrun`` (``--standalone`` rendezvous), in place of this process."""
    if count < 1:
        raise UsageError(f"--nproc must be at least 1, got {count}")
    rest = [a for i, a in enumerate(argv) if a != "--nproc" and (i == 0 or argv[i - 1] != "--nproc")]
    rest = [a for a in rest if not a.startswith("--nproc=")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}",
               "-m", "clayflow", *rest]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)

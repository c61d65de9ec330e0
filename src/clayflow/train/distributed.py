"""Training on several processes with PyTorch's own engine: ``torchrun`` starts them (its
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and rendezvous variables), ``torch.distributed``
connects them (gloo on CPU, nccl on CUDA), and ``DistributedDataParallel`` averages the
gradients.

How a run stays the same run whatever the number of processes N:

* every process draws the same *global* batch of ``--batch-size`` examples (one
  ``BatchSampler`` from the run's seed) and trains on its contiguous slice of B / N examples;
  the mean of the N slices' gradients is the gradient of the global batch, so one step of N
  processes equals one step of 1 process up to float rounding, and a checkpoint resumes with
  any N;
* the random draws of a step (dequantization noise, dropout masks, Hutchinson probes, input
  noise) are made per example of the global batch from a seed of (run seed, step), and each
  process keeps its rows (``clayflow.core.batch``): no two processes share noise, an example
  gets the noise it gets on one process, and a resume draws it again, with any N;
* data-dependent layers (ActNorm) initialise on the same training rows in every process
  before the first step, as on one; batch norm (flow layers, and in RealNVP's conditioners)
  normalises with the statistics of the global batch (``core.batch.mean_var``: differentiable
  all-reduces, on CPUs too, where torch's SyncBatchNorm does not run);
* process r evaluates every N-th chunk of the validation and test sets (chunk k's noise from
  its own seed) and an all-reduce gives every process all log-probs, so each example is
  evaluated once and all processes take the same decisions (best model, early stopping);
* only rank 0 reads and writes the run directory (checkpoints, metrics, plots, the console)
  and shares what it read (a resumed checkpoint, the best weights), so the other processes
  may be on machines that do not see its disk;
* a stop signal is agreed on by all processes before the next step (one all-reduce of a flag),
  and at the end the processes check that they hold the same weights, bit for bit.

Refused with more than one process: a global batch that N does not divide, and processes
given different data. Not reproduced across N: adaptive ODE solvers
(their steps depend on the whole batch) and optimal-transport flow matching (each process
pairs its own rows).
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from clayflow.errors import ClayflowError, RankZeroError, UsageError, first_line

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the ``world`` processes of a run (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    def slice(self, batch_size: int) -> slice:
        """This process's part of a global batch of ``batch_size`` examples."""
        per_process = batch_size // self.world
        return slice(self.rank * per_process, (self.rank + 1) * per_process)

    def agree(self, flag: bool) -> bool:
        """Whether any process says ``flag`` (all of them get the same answer)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar ``value`` over the processes."""
        if not self.distributed:
            return value
        total = value.detach().to(_collective_device(), torch.float64).reshape(1)
        dist.all_reduce(total)
        return (total / self.world).to(value)[0]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of the processes' ``values`` (a CPU tensor), on every process."""
        if not self.distributed:
            return values
        total = values.to(_collective_device())
        dist.all_reduce(total)
        return total.cpu()

    def barrier(self) -> None:
        """Wait until every process gets here (nothing on one process)."""
        if self.distributed:
            dist.barrier()

    def share(self, value):
        """Rank 0's ``value`` (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, action: Callable[[], T], shared: bool = True) -> T | None:
        """``action()`` on rank 0 (the process that reads and writes the run directory); its
        value on every process (``shared``; else None on the others). A ``ClayflowError`` it
        raises is raised on every process with the same line and exit code, so that the
        others stop as rank 0 does instead of waiting for it."""
        if not self.distributed:
            return action()
        outcome, error, value = None, None, None
        if self.main:
            try:
                value = action()
                outcome = (value if shared else None, None, None)
            except ClayflowError as exc:
                error, outcome = exc, (None, first_line(exc), exc.exit_code)
        shared_value, line, exit_code = self.share(outcome)
        if error is not None:
            raise error
        if line is not None:
            raise RankZeroError(line, exit_code)
        return value if self.main else shared_value

    def broadcast_state(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every process, in place."""
        if self.distributed:
            with torch.no_grad():
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def parallel(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` wrapped in ``DistributedDataParallel`` (the module itself on one process)."""
        if not self.distributed:
            return module
        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)


_own_group = False  # whether the process group is one that clayflow set up (and takes down)


def processes_from_environment() -> Processes:
    """The processes ``torchrun`` started (``WORLD_SIZE`` > 1), with the process group
    initialised (gloo on CPU, nccl when this process has a GPU), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("CLAYFLOW_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
        global _own_group
        _own_group = True
        atexit.register(_destroy_process_group)
    return Processes(rank, world, local_rank)


def _destroy_process_group() -> None:
    """Take down the process group clayflow set up; at exit, unless ``end_processes`` did (the
    group is kept for later ``fit`` calls in the same script until then). Left to the
    interpreter's teardown, gloo's threads aborted 5 of 40 finished two-process runs here
    (``terminate called without an active exception``)."""
    global _own_group
    if _own_group and dist.is_initialized():
        gc.collect()  # DistributedDataParallel reducers left in cycles hold the group and its work
        dist.destroy_process_group()
    _own_group = False


def end_processes() -> None:
    """Take down the process group clayflow set up together, once every process has finished
    its run: a barrier (so that no process tears down while rank 0 still writes and talks),
    then the teardown. A command ends with this rather than leave it to ``atexit``, where a
    finished two-process run of the test suite still aborted once in gloo's threads (CI,
    2026-12-02). A group that the calling script set up is left to it."""
    if _own_group and dist.is_initialized():
        dist.barrier()
        _destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process died or stopped."""
    return isinstance(exc, dist.DistError) or "closed by peer" in str(exc) or "Connection reset" in str(exc)


def peer_failure_cause(exc: BaseException) -> str:
    """The backend's reason, without its source location: ``Connection closed by peer ...``."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc))
    return text.split(". ")[0][:100]


def check_distributable(processes: Processes, batch_size: int, fingerprint: dict) -> None:
    # (fingerprint["rows"][0]: training rows; a smaller epoch would shrink the global batch)
    """Refuse what would make a run depend on the number of processes, and processes given
    different data (``fingerprint``: ``resume.data_fingerprint``), such as tensors that a
    script drew without seeding torch."""
    if not processes.distributed:
        return
    if processes.agree(processes.share(fingerprint) != fingerprint):
        raise UsageError(
            f"the {processes.world} processes were given different data (rows or values differ from "
            "rank 0's); every process must train on the same examples: seed what draws them, or read "
            "the same files"
        )
    if batch_size > fingerprint["rows"][0]:
        raise UsageError(
            f"--batch-size {batch_size} is more than the {fingerprint['rows'][0]} training rows; on several "
            "processes the global batch must be a whole batch: give a smaller --batch-size"
        )
    if batch_size % processes.world:
        raise UsageError(
            f"--batch-size {batch_size} is the global batch, split over {processes.world} processes; "
            f"give a multiple of {processes.world}"
        )


def check_identical(processes: Processes, module: nn.Module) -> None:
    """Raise a ``ClayflowError`` when the processes' copies of ``module`` (parameters and
    buffers) are not bit for bit the same, as DistributedDataParallel keeps them."""
    if not processes.distributed:
        return
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    mine = digest.hexdigest()
    if processes.agree(processes.share(mine) != mine):
        raise ClayflowError(
            f"the weights of the {processes.world} processes differ at the end of training, which "
            "DistributedDataParallel should prevent; the checkpoints are rank 0's. Please report "
            "this with the command that trained"
        )


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

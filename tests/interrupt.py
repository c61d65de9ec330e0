"""Run ``clayflow train`` in this process and interrupt it from inside, at a step the test chooses.

    python tests/interrupt.py STEP WHERE ACTION train-args...

WHERE is ``step`` (right after optimisation step STEP, before its metrics row and checkpoint)
or ``checkpoint`` (while the checkpoint of step STEP is half written: half its bytes are in
the temporary file). Under torchrun every process acts, or only the one whose ``RANK`` is
``INTERRUPT_RANK`` when that is set, and only in the first attempt (``--max-restarts``).
ACTION is a signal name such as SIGKILL or SIGTERM, sent to this process; ``fill:PATH``: write
zeros to PATH until its file system is full, as another program filling the disk would; or
``perturb`` (WHERE ``step``): add 1e-3 to this process's first weight, a divergence between
processes that the end-of-run check must catch. Nothing depends on how fast the machine is: tests that act
on a run at a wall-clock time fail on a quiet machine (training got further than assumed)
or a busy one.
"""

import errno
import os
import signal
import sys

import torch

from clayflow.cli.main import main
from clayflow.train import loop


def fill_disk(path: str) -> None:
    """Append zeros to ``path`` until the file system refuses (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, bytes(1 << 20))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def perturb(trainer) -> None:
    """Move this process's first weight by 1e-3."""
    with torch.no_grad():
        next(trainer.flow.parameters()).view(-1)[0] += 1e-3


def run() -> int:
    """Install the stop named on the command line, then run ``clayflow train``."""
    step, where, action = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    argv = sys.argv[4:]
    if action.startswith("fill:"):
        path = action.removeprefix("fill:")
        act = lambda trainer: fill_disk(path)
    elif action == "perturb":
        act = perturb
    else:
        act = lambda trainer: os.kill(os.getpid(), signal.Signals[action])
    only_rank = os.environ.get("INTERRUPT_RANK")  # under torchrun: act in this process only,
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"  # and in the first attempt
    if restarted or only_rank is not None and os.environ.get("RANK") != only_rank:
        act = lambda trainer: None

    if where == "step":
        take_step = loop.Trainer._train_step

        def _train_step(self):
            taken = take_step(self)
            if self.step == step and taken is not None:
                act(self)
            return taken

        loop.Trainer._train_step = _train_step
    elif where == "checkpoint":
        save = torch.save

        def _save(obj, file, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("step") == step and "optimizer" in obj:
                save(obj, file, *args, **kwargs)
                file.truncate(file.tell() // 2)
                file.flush()
                act(None)
            return save(obj, file, *args, **kwargs)

        torch.save = _save
    else:
        raise SystemExit(f"unknown WHERE {where!r}")

    return main(["train", *argv])


if __name__ == "__main__":  # pytest imports this file for doctests: only run as a script
    sys.exit(run())

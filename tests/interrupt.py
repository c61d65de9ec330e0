"""Run ``clayflow train`` in this process and stop it from inside, at a step the test chooses.

    python tests/interrupt.py STEP WHERE SIGNAL train-args...

WHERE is ``step`` (the signal is sent right after optimisation step STEP, before its metrics
row and checkpoint) or ``checkpoint`` (sent while the checkpoint of step STEP is half written:
half its bytes are in the temporary file). SIGNAL is a name such as SIGKILL or SIGTERM.
Nothing depends on how fast the machine is: tests that kill a run at a wall-clock time fail
on a quiet machine (training got further than assumed) or a busy one.
"""

import os
import signal
import sys

import torch

from clayflow.cli.main import main
from clayflow.train import loop


def run() -> int:
    """Install the stop named on the command line, then run ``clayflow train``."""
    step, where, signum = int(sys.argv[1]), sys.argv[2], signal.Signals[sys.argv[3]]
    argv = sys.argv[4:]

    if where == "step":
        take_step = loop._Trainer._train_step

        def _train_step(self):
            taken = take_step(self)
            if self.step == step and taken is not None:
                os.kill(os.getpid(), signum)
            return taken

        loop._Trainer._train_step = _train_step
    elif where == "checkpoint":
        save = torch.save

        def _save(obj, file, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("step") == step and "optimizer" in obj:
                save(obj, file, *args, **kwargs)
                file.truncate(file.tell() // 2)
                file.flush()
                os.kill(os.getpid(), signum)
            return save(obj, file, *args, **kwargs)

        torch.save = _save
    else:
        raise SystemExit(f"unknown WHERE {where!r}")

    return main(["train", *argv])


if __name__ == "__main__":  # pytest imports this file for doctests: only run as a script
    sys.exit(run())

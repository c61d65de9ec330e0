"""Atomic checkpoint files and ``load``: a ready ``Flow`` from a run directory or checkpoint.

A checkpoint is a dict of tensors and plain values, written to a temporary file and moved
into place with ``os.replace`` (a crash leaves the previous one intact), and read with
``torch.load(weights_only=True)``, which never executes pickled code.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch

from clayflow.core import Flow
from clayflow.errors import ClayflowError, first_line
from clayflow.files import atomic_write
from clayflow.models import ModelSpec, build

FORMAT_VERSION = 1
CHECKPOINT_NAME = Path("checkpoints") / "last.pt"  # full training state, for --resume
BEST_NAME = Path("checkpoints") / "best.pt"  # weights with the lowest validation NLL


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format version) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda file: torch.save(payload, file))


def checkpoint_path(path: str | os.PathLike, prefer_best: bool = False) -> Path:
    """The checkpoint file of a run directory (``best.pt`` if ``prefer_best`` and the run kept
    one, else ``last.pt``), or ``path`` itself if it is a file.

    Anything but a regular file (a FIFO, a device such as /dev/zero, a directory where the
    checkpoint should be) is refused before it is opened: reading one could block forever.
    """
    path = Path(path)
    if path.is_dir():
        if prefer_best and (path / BEST_NAME).exists():
            path = path / BEST_NAME
        elif (path / CHECKPOINT_NAME).exists():
            path = path / CHECKPOINT_NAME
        else:
            raise ClayflowError(
                f"{path} has no checkpoint ({CHECKPOINT_NAME}); is it a clayflow run directory?"
            )
    elif not path.exists():
        raise ClayflowError(f"{path} does not exist; give a run directory or a checkpoint file")
    if not path.is_file():
        mode = path.stat().st_mode
        kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISSOCK, "a socket"))  # fmt: skip
        kind = next((name for test, name in kinds if test(mode)), "a special file")
        raise ClayflowError(
            f"{path} is {kind}, not a regular file; give a run directory or a checkpoint file"
        )
    return path


def check_best_kept(run_dir: Path, last: dict[str, Any], remedy: str) -> None:
    """Refuse a run whose last checkpoint ``last`` records best weights that ``best.pt`` no
    longer holds (deleted or moved) and that are not its own (a best step before its last):
    the last weights are another model than the one the run selected and reported.
    ``remedy``: what the user can do instead."""
    best_step = last.get("best_step")
    if best_step is not None and best_step != last.get("step") and not (run_dir / BEST_NAME).exists():
        raise ClayflowError(
            f"{run_dir / BEST_NAME} (the weights of step {best_step}, best on validation, that the run selected) "
            f"is missing, and {CHECKPOINT_NAME} holds those of step {last.get('step')}; {remedy}"
        )


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line. A file torch or pickle
    wrote (a zip archive, or a pickle's protocol byte) that holds Python objects (a class or
    function to import, ``GLOBAL name``; ``Unsupported class`` in torch before 2.4) is said
    to be one, without torch's advice to load it unsafely (no checkpoint needs it); for
    anything else, its reason is cut to its first sentence (the rest is that advice)."""
    text, cause = str(exc), f"cannot read checkpoint {path} (truncated, corrupt or not a checkpoint)"
    if not (isinstance(exc, pickle.UnpicklingError) and text.startswith("Weights only load failed")):
        return f"{cause}: {first_line(exc)}"
    try:  # a text file's first letter can read as pickle's GLOBAL opcode ('c')
        with open(path, "rb") as file:
            start = file.read(2)
    except OSError:
        start = b""
    written_by_pickle = start == b"PK" or start[:1] == b"\x80"  # torch's zip archive, or a pickle's protocol
    if written_by_pickle and (name := re.search(r"\bGLOBAL (\S+)|Unsupported class (\S+)", text)) is not None:
        return (f"{path} is not a clayflow checkpoint: it holds Python objects ({name.group(1) or name.group(2)}), "
                "which clayflow never unpickles; a checkpoint holds only tensors and plain values")  # fmt: skip
    after = text.partition("WeightsUnpickler error:")[2]
    reason = next((line.strip() for line in after.splitlines() if line.strip()), "content torch does not read safely")
    return f"{cause}: {reason.split('. ')[0]}"


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", prefer_best: bool = False
) -> dict[str, Any]:
    """Read and validate a checkpoint (run directory or file) with ``weights_only=True``.
    From a run directory with ``prefer_best``, ``last.pt`` stands in for a missing ``best.pt``
    only when it holds the run's selected weights (``check_best_kept``)."""
    source, path = Path(path), checkpoint_path(path, prefer_best)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for bad files
        raise ClayflowError(_unreadable(path, exc)) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ClayflowError(f"{path} is not a clayflow checkpoint")
    version = payload["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ClayflowError(
            f"{path} has checkpoint format {version}, newer than this clayflow's {FORMAT_VERSION}; upgrade clayflow"
        )
    for key in ("model_spec", "model"):
        if key not in payload:
            raise ClayflowError(f"{path} is not a complete clayflow checkpoint (no {key!r})")
    if prefer_best and path == source / CHECKPOINT_NAME:  # a run directory without best.pt
        how = ("give that file" if payload["model_spec"] is not None else  # clayflow.fit's: the caller's flow
               f"load its weights into your flow: torch.load('{path}', weights_only=True)['model']")  # fmt: skip
        check_best_kept(source, payload, f"to use the last weights instead, {how}")
    return payload


def flow_from_checkpoint(payload: dict[str, Any]) -> Flow:
    """Rebuild the flow a checkpoint describes and load its weights for inference: the EMA
    weights when the run kept them, else the trained ones."""
    if payload["model_spec"] is None:
        raise ClayflowError(
            "this run was trained from Python with clayflow.fit on a flow built there; build the same "
            "flow and load the weights kept: flow.load_state_dict("
            "torch.load('RUN/checkpoints/best.pt', weights_only=True)['model'])"
        )
    try:
        spec = ModelSpec.from_dict(payload["model_spec"])
        flow = build(spec)
    except (TypeError, ClayflowError) as exc:
        raise ClayflowError(f"the checkpoint's model cannot be rebuilt: {exc}") from None
    state = payload["model"]
    if payload.get("ema") is not None:
        state = {k.removeprefix("module."): v for k, v in payload["ema"].items() if k.startswith("module.")}
    try:
        flow.load_state_dict(state)
    except RuntimeError as exc:
        raise ClayflowError(
            f"checkpoint weights do not fit its model {spec.name!r}: {state_dict_mismatch(exc)}"
        ) from None
    return flow


def state_dict_mismatch(exc: RuntimeError, limit: int = 160) -> str:
    """The first concrete problem in ``load_state_dict``'s multi-line error (missing keys,
    unexpected keys or a size mismatch), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else first_line(exc)
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Flow:
    """A trained ``Flow`` in eval mode from a run directory or a checkpoint file.

    From a run directory it is the model with the best validation NLL when the run kept one
    (``--select-best``, the default), else the last.

    >>> # flow = clayflow.load("runs/realnvp-moons"); flow.sample(1000)
    """
    flow = flow_from_checkpoint(read_checkpoint(path, map_location="cpu", prefer_best=True))
    return flow.to(device).eval()

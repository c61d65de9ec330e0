"""clayflow: normalizing flows in PyTorch with exact likelihoods.

Forward is data -> latent everywhere (see ``clayflow.core.transform``).

>>> import torch, clayflow
>>> flow = clayflow.models.realnvp(2)
>>> flow.log_prob(torch.zeros(1, 2)).shape
torch.Size([1])

The names below are imported on first use (PEP 562), so ``import clayflow`` is instant and
the ``clayflow`` command can answer Ctrl-C with one line even while torch is loading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "models": "clayflow.models",
    "transforms": "clayflow.transforms",
    "Compose": "clayflow.core",
    "DiagonalNormal": "clayflow.core",
    "Flow": "clayflow.core",
    "Inverse": "clayflow.core",
    "StandardNormal": "clayflow.core",
    "Transform": "clayflow.core",
    "at_context": "clayflow.core",
    "ClayflowError": "clayflow.errors",
    "UsageError": "clayflow.errors",
    "load": "clayflow.train.checkpoint",
    "fit": "clayflow.train.fit",
    "FitResult": "clayflow.train.fit",
    "verify": "clayflow.diagnostics",
    "explain": "clayflow.diagnostics",
}

__all__ = [
    "ClayflowError",
    "Compose",
    "DiagonalNormal",
    "FitResult",
    "Flow",
    "Inverse",
    "StandardNormal",
    "Transform",
    "UsageError",
    "at_context",
    "explain",
    "fit",
    "load",
    "models",
    "transforms",
    "verify",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from clayflow import models as models
    from clayflow import transforms as transforms
    from clayflow.core import Compose as Compose
    from clayflow.core import DiagonalNormal as DiagonalNormal
    from clayflow.core import Flow as Flow
    from clayflow.core import Inverse as Inverse
    from clayflow.core import StandardNormal as StandardNormal
    from clayflow.core import Transform as Transform
    from clayflow.core import at_context as at_context
    from clayflow.diagnostics import explain as explain
    from clayflow.diagnostics import verify as verify
    from clayflow.errors import ClayflowError as ClayflowError
    from clayflow.errors import UsageError as UsageError
    from clayflow.train.checkpoint import load as load
    from clayflow.train.fit import FitResult as FitResult
    from clayflow.train.fit import fit as fit


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'clayflow' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"clayflow.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""clayflow: normalizing flows in PyTorch with exact likelihoods.

Forward is data -> latent everywhere (see ``clayflow.core.transform``).

>>> import torch, clayflow
>>> flow = clayflow.models.realnvp(2)
>>> flow.log_prob(torch.zeros(1, 2)).shape
torch.Size([1])
"""

from clayflow import models, transforms
from clayflow.core import Compose, DiagonalNormal, Flow, Inverse, StandardNormal, Transform
from clayflow.errors import ClayflowError, UsageError
from clayflow.train.checkpoint import load

__version__ = "0.1.0"

__all__ = [
    "ClayflowError",
    "Compose",
    "DiagonalNormal",
    "Flow",
    "Inverse",
    "StandardNormal",
    "Transform",
    "UsageError",
    "load",
    "models",
    "transforms",
]

"""Invertible layers. Each maps data -> latent in ``forward`` (see ``clayflow.core.transform``)."""

from clayflow.core.transform import Compose, Inverse
from clayflow.transforms.coupling import AdditiveCoupling, AffineCoupling, ScaleBound
from clayflow.transforms.elementwise import Scaling, Standardize
from clayflow.transforms.linear import Permutation
from clayflow.transforms.masks import MaskKind, alternating_mask, half_mask
from clayflow.transforms.normalization import BatchNorm

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNorm",
    "Compose",
    "Inverse",
    "MaskKind",
    "Permutation",
    "ScaleBound",
    "Scaling",
    "Standardize",
    "alternating_mask",
    "half_mask",
]

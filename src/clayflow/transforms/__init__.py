"""Invertible layers. Each maps data -> latent in ``forward`` (see ``clayflow.core.transform``)."""

from clayflow.core.transform import Compose, Inverse
from clayflow.transforms.coupling import AdditiveCoupling, AffineCoupling, ScaleBound
from clayflow.transforms.elementwise import Scaling, Standardize
from clayflow.transforms.linear import Permutation
from clayflow.transforms.masks import MaskKind, alternating_mask, checkerboard_mask, half_mask
from clayflow.transforms.multiscale import MultiScale
from clayflow.transforms.normalization import BatchNorm
from clayflow.transforms.preprocess import Dequantize, Logit, ScalarAffine
from clayflow.transforms.reshape import Squeeze

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNorm",
    "Compose",
    "Dequantize",
    "Inverse",
    "Logit",
    "MaskKind",
    "MultiScale",
    "Permutation",
    "ScalarAffine",
    "ScaleBound",
    "Scaling",
    "Squeeze",
    "Standardize",
    "alternating_mask",
    "checkerboard_mask",
    "half_mask",
]

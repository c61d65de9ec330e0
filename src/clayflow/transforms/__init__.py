"""Invertible layers. Each maps data -> latent in ``forward`` (see ``clayflow.core.transform``)."""

from clayflow.core.transform import Compose, Inverse
from clayflow.transforms.augment import Augment
from clayflow.transforms.autoregressive import AffineAutoregressive, SplineAutoregressive
from clayflow.transforms.continuous import CNF
from clayflow.transforms.coupling import AdditiveCoupling, AffineCoupling, ScaleBound
from clayflow.transforms.elementwise import PowerTransform, Scaling, Standardize
from clayflow.transforms.linear import InvertibleConv1x1, Permutation, Whitening
from clayflow.transforms.masks import (
    ImageMask,
    MaskKind,
    alternating_mask,
    checkerboard_mask,
    half_mask,
    squeezed_checkerboard_mask,
)
from clayflow.transforms.multiscale import LearnedPrior, MultiScale
from clayflow.transforms.normalization import ActNorm, BatchNorm
from clayflow.transforms.planar import Planar, Radial
from clayflow.transforms.preprocess import Dequantize, DequantizeColumns, LevelsError, Logit, ScalarAffine
from clayflow.transforms.reshape import Squeeze
from clayflow.transforms.splines import SplineCoupling, rational_quadratic_spline

__all__ = [
    "CNF",
    "ActNorm",
    "AdditiveCoupling",
    "AffineAutoregressive",
    "AffineCoupling",
    "Augment",
    "BatchNorm",
    "Compose",
    "Dequantize",
    "DequantizeColumns",
    "ImageMask",
    "Inverse",
    "InvertibleConv1x1",
    "LearnedPrior",
    "LevelsError",
    "Logit",
    "MaskKind",
    "MultiScale",
    "Permutation",
    "Planar",
    "PowerTransform",
    "Radial",
    "ScalarAffine",
    "ScaleBound",
    "Scaling",
    "SplineAutoregressive",
    "SplineCoupling",
    "Squeeze",
    "Standardize",
    "Whitening",
    "alternating_mask",
    "checkerboard_mask",
    "half_mask",
    "rational_quadratic_spline",
    "squeezed_checkerboard_mask",
]

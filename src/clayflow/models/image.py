"""Flows for images ``(B, C, H, W)``: multi-scale RealNVP with dequantization and logit."""

from __future__ import annotations

import math
from functools import partial

from clayflow.core import Compose, Flow, StandardNormal
from clayflow.errors import ClayflowError, UsageError, parse_choice
from clayflow.models.options import check_sizes
from clayflow.nn.resnet import ConvResNet
from clayflow.transforms import (
    AffineCoupling,
    BatchNorm,
    Dequantize,
    ImageMask,
    Logit,
    MultiScale,
    ScalarAffine,
    ScaleBound,
    Squeeze,
    checkerboard_mask,
    half_mask,
    squeezed_checkerboard_mask,
)

MAX_DEFAULT_SCALES = 3


def default_scales(shape: tuple[int, int, int]) -> int:
    """The most scales (up to 3) whose top is still at least 4x4 pixels."""
    _, height, width = shape
    scales = 1
    while (
        scales < MAX_DEFAULT_SCALES
        and height % 2**scales == 0
        and width % 2**scales == 0
        and min(height, width) // 2**scales >= 4
    ):
        scales += 1
    return scales


def check_image_shape(shape, scales: int) -> tuple[int, int, int]:
    """``(C, H, W)`` as ints, checked to be divisible ``scales - 1`` times by 2 leaving at
    least 2 pixels at the top (a checkerboard needs two)."""
    if len(shape) != 3 or min(shape) < 1:
        raise ClayflowError(f"image models need data of shape (C, H, W), got {tuple(shape)}")
    check_sizes(scales=scales)
    factor = 2 ** (scales - 1)
    channels, height, width = (int(s) for s in shape)
    if height % factor or width % factor or (height // factor) * (width // factor) < 2:
        raise UsageError(
            f"{scales} scales squeeze {scales - 1} time(s), so height and width must be divisible by "
            f"{factor}, leaving at least 2 pixels; got {height}x{width}. "
            f"Use --scales {default_scales(shape)} or crop the images"
        )
    return channels, height, width


def realnvp_image(
    shape: tuple[int, int, int],
    levels: int = 256,
    *,
    scales: int | None = None,
    hidden: int = 64,
    depth: int = 2,
    norm: str = "batch",
    scale_bound: str = "tanh",
    batch_norm: bool = False,
    alpha: float = 0.05,
    mask: str = "checkerboard",
    context_features: int = 0,
) -> Flow:
    """Multi-scale RealNVP for images with ``levels`` intensity levels.

    Pre-processing: ``Dequantize(levels)``, ``ScalarAffine(1 / levels)``, ``Logit(alpha)``.
    Each scale but the last: 3 checkerboard couplings, squeeze, 3 channel-wise couplings,
    then half the channels are factored out; the last scale has 4 checkerboard couplings
    (the paper's layout). Parities alternate. The base is N(0, I) over all D dimensions.

    A checkerboard coupling transforms the pixels ``(i + j) % 2 != parity`` given the others.
    ``mask="checkerboard"`` (the paper's) gives its network the masked image ``x * mask`` at
    full size ``(C, H, W)``; ``"squeezed"`` squeezes first, so that the two halves are the
    diagonal sub-grids of each 2x2 block, channels ``4c + 2 di + dj`` with ``(di + dj) % 2``
    = parity or not (``squeezed_checkerboard_mask``), and the network sees the kept half
    ``(2C, H/2, W/2)``: the same split of the pixels, with a network that convolves a quarter
    of the positions (2.4-2.6x the training images/s on 1x28x28 and 3x32x32; on the small
    digits set it overfits sooner). That squeeze is then the one before the channel-wise
    couplings; the top's is the level's last step, so its latent is ``(4C, H/2, W/2)``; at a
    top of odd height or width the checkerboard stays masked. With ``batch_norm``, the
    ``BatchNorm`` after a squeezed coupling normalises each of the 4C sub-grid channels.

    Args:
        shape: ``(C, H, W)``; H and W must be divisible by ``2 ** (scales - 1)``.
        levels: intensity levels ``k`` of the data (256 for 8-bit, 17 for scikit-learn digits).
        scales: number of scales (default: the most, up to 3, keeping the top >= 4x4).
        hidden, depth: conditioner ResNet width (channels) and residual blocks.
        norm: ``"batch"`` or ``"none"`` inside the conditioner.
        scale_bound: ``"tanh"`` (learned factor, RealNVP) or ``"soft_clamp"``.
        batch_norm: a ``BatchNorm`` flow layer after each coupling (RealNVP Sec. 3.7).
        alpha: logit boundary (RealNVP: 0.05).
        mask: ``"checkerboard"`` or ``"squeezed"``: how checkerboard couplings are laid out.
        context_features: K > 0: p(x | c) with c ``(B, K)`` (e.g. a one-hot class) given to
            every coupling's network as K constant channels.
    Shape:
        log_prob: ``(B, C, H, W)`` -> ``(B,)``; sample(n) -> ``(n, C, H, W)`` integer levels.
    Reference: Dinh et al., Density estimation using Real NVP, 2017.
    """
    check_image_shape(shape, 1)
    scales = default_scales(shape) if scales is None else scales
    shape = check_image_shape(shape, scales)
    check_sizes(hidden=hidden, depth=depth)
    make_net = partial(ConvResNet, hidden=hidden, blocks=depth, norm=norm)
    bound = parse_choice(ScaleBound, scale_bound, "scale bound")

    def couplings(masks, channels):
        steps = []
        for kept in masks:
            steps.append(AffineCoupling(kept, make_net, context_features, scale_bound=bound))
            if batch_norm:
                steps.append(BatchNorm(channels))
        return steps

    squeeze_first = parse_choice(ImageMask, mask, "image mask") is ImageMask.SQUEEZED

    def checkerboard(current, count):
        """``count`` checkerboard couplings on images ``current`` ``(C, H, W)``, and whether
        they work on the squeezed image ``(4C, H/2, W/2)`` (``squeeze_first`` and the size
        allows), so that the level's squeeze comes before them."""
        channels, height, width = current
        if squeeze_first and height % 2 == 0 and width % 2 == 0:
            masks = [squeezed_checkerboard_mask(channels, parity) for parity in range(count)]
            return couplings(masks, 4 * channels), True
        return couplings([checkerboard_mask(current, parity) for parity in range(count)], channels), False

    level_transforms = []
    current = shape
    for scale in range(scales):
        channels, height, width = current
        top = scale == scales - 1
        checker, squeezed_before = checkerboard(current, 4 if top else 3)
        steps = [Squeeze(), *checker] if squeezed_before else checker
        if top:
            level_transforms.append(Compose(*steps))
            break
        squeezed = 4 * channels
        channel = couplings([half_mask(squeezed, parity) for parity in range(3)], squeezed)
        level_transforms.append(Compose(*steps, *([] if squeezed_before else [Squeeze()]), *channel))
        current = (squeezed - squeezed // 2, height // 2, width // 2)
    preprocess = [Dequantize(levels), ScalarAffine(1.0 / levels), Logit(alpha)]
    model = Compose(*preprocess, MultiScale(level_transforms, shape))
    return Flow(model, StandardNormal(math.prod(shape)), context_features=context_features)

"""Image-flow training throughput: clayflow's Glow and RealNVP against normflows' builds of
the same architectures.

    python benchmarks/compare/image_throughput.py [--models glow realnvp] [--blocks 5]
        [--block-seconds 2] [--batches 16 64]

Glow: both are ``budget.py``'s Glow (2 scales of 8 steps, hidden width 128, sigmoid coupling
scale, affine couplings, LU 1x1 convolutions). RealNVP: the paper's layout at 2 scales
(3 checkerboard couplings, squeeze, 3 channel couplings, half the channels factored out; then
4 checkerboard couplings), every coupling's network the same residual network (clayflow's
``ConvResNet``: width 64, 2 residual blocks, batch norm), a fixed N(0, I) base, logit
pre-processing; the parameter counts differ by clayflow's learned tanh factors.

normflows has no image RealNVP class; its build here is ``MultiscaleFlow`` of its
``AffineCouplingBlock``s (``split_mode`` checkerboard and channel). It differs from clayflow's
(the RealNVP paper's masking) in how a checkerboard coupling feeds its network:
normflows gathers each half into an image of half the width (sheared: even rows keep the odd
columns, odd rows the even ones; the colouring also alternates across channels), so its
network convolves half the pixels, where clayflow's convolves the masked image at full size
and keeps half its output. On 7 of the 10 couplings normflows thus does half the
convolution work. Its scale is exp(r), clayflow's a tanh(r). clayflow's ``--mask squeezed``
(row "clayflow --mask squeezed") gathers the halves too, by a squeeze: its network sees the
kept diagonal sub-grids of each 2x2 block, ``(2C, H/2, W/2)``.

Synthetic 256-level batches of 1x28x28 and 3x32x32. One training step: -log p of the batch,
backward, Adam (clayflow's fused Adam as its trainer uses; normflows with torch's default
Adam, as its examples do). clayflow runs as ``clayflow train`` does (channels-last weights and
batches), and with its log-density under ``torch.compile``. Every variant runs for
``--block-seconds`` in each of ``--blocks`` blocks, in an order that reverses from block to
block; reported: median images/s and the median over blocks of the ratio to normflows, with
min and max.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import torch
from budget import channels_last_contender, clayflow_glow, normflows_glow
from contenders import Contender, _version
from torch import Tensor, nn

from clayflow import models
from clayflow.nn.resnet import ConvResNet
from clayflow.train.schedule import make_optimizer

REALNVP_SCALES, REALNVP_HIDDEN, REALNVP_BLOCKS = 2, 64, 2


def clayflow_realnvp(shape: tuple[int, int, int], levels: int, mask: str = "checkerboard") -> Contender:
    """clayflow's image RealNVP at 2 scales, channels-last as ``clayflow train`` keeps it
    (``mask``: ``--mask``, how its checkerboard couplings are laid out)."""
    flow = models.realnvp_image(shape, levels, scales=REALNVP_SCALES, hidden=REALNVP_HIDDEN, depth=REALNVP_BLOCKS,
                                mask=mask)  # fmt: skip
    return channels_last_contender(flow, f"{mask} checkerboard; scale a tanh(r); channels-last")


def _resnet(in_channels: int, out_channels: int) -> nn.Module:
    """The coupling network both RealNVPs use, its output convolution zeroed (an identity start)."""
    net = ConvResNet(in_channels, out_channels, hidden=REALNVP_HIDDEN, blocks=REALNVP_BLOCKS)
    nn.init.zeros_(net.output.weight)
    nn.init.zeros_(net.output.bias)
    return net


def normflows_realnvp(shape: tuple[int, int, int], levels: int) -> Contender:
    """The same RealNVP built from normflows' parts (see the module docstring). normflows lists
    each level's flows from latent to data: the finer level's channel couplings, then the
    un-squeeze, then its checkerboard couplings."""
    import normflows as nf

    channels, height, width = shape
    half = (2 * channels, height // 2, width // 2)  # what each of the 2 scales factors out

    def couplings(c_in: int, modes: list[str]) -> list:
        return [nf.flows.AffineCouplingBlock(_resnet(c_in, 2 * c_in), scale=True, scale_map="exp", split_mode=mode)
                for mode in modes]  # fmt: skip

    checker = ["checkerboard", "checkerboard_inv"]
    top = couplings(2 * channels, [checker[i % 2] for i in range(4)])  # on the kept (2C, H/2, W/2)
    fine = [*couplings(2 * channels, [("channel", "channel_inv")[i % 2] for i in range(3)]), nf.flows.Squeeze(),
            *couplings(channels, [checker[i % 2] for i in range(3)])]  # fmt: skip
    q0 = [nf.distributions.DiagGaussian(half, trainable=False) for _ in range(REALNVP_SCALES)]
    model = nf.MultiscaleFlow(q0, [top, fine], [nf.flows.Merge()], transform=nf.transforms.Logit(0.05),
                              class_cond=False)  # fmt: skip
    dims = math.prod(shape)

    def log_prob(k: Tensor) -> Tensor:
        return model.log_prob((k + torch.rand_like(k)) / levels, None) - dims * math.log(levels)

    return Contender(
        "normflows", _version("normflows"), model, log_prob,
        lambda n: (model.sample(n)[0] * levels).floor().clamp(0, levels - 1),
        lambda y: model.inverse_and_log_det(y)[0], lambda z: model.forward_and_log_det(z)[0],
        "checkerboard halves gathered to half-width images; scale exp(r)",
    )  # fmt: skip


BUILDS = {"glow": (clayflow_glow, normflows_glow), "realnvp": (clayflow_realnvp, normflows_realnvp)}
# more clayflow variants of a model, each run as trained (channels-last, eager)
OTHER_BUILDS = {"realnvp": {"clayflow --mask squeezed": lambda shape, levels: clayflow_realnvp(shape, levels, "squeezed")}}


def training_step(contender, x: torch.Tensor, fused: bool, channels_last: bool, compiled: bool):
    if channels_last:
        contender.module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    parameters = contender.module.parameters()
    optimizer = make_optimizer(parameters, "adam", 1e-4) if fused else torch.optim.Adam(parameters, 1e-4)
    log_prob = torch.compile(contender.log_prob) if compiled else contender.log_prob

    def step() -> None:
        loss = -log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDS), default=["glow", "realnvp"])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-seconds", type=float, default=2.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    print(f"# training images/s: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.blocks} blocks of {args.block_seconds} s")  # fmt: skip
    print("| model | shape | batch | variant | parameters | images/s | ratio to normflows, median [min, max] |")
    print("|---|---|---|---|---|---|---|")
    for model, shape, batch in itertools.product(args.models, ((1, 28, 28), (3, 32, 32)), args.batches):
        ours, theirs = BUILDS[model]
        torch.manual_seed(0)
        x = torch.randint(0, 256, (batch, *shape)).float()
        # variant: (contender, fused Adam and channels-last as clayflow trains, compiled)
        setups = {"normflows": (theirs(shape, 256), False, False),
                  "clayflow (channels-last, as trained)": (ours(shape, 256), True, False),
                  "clayflow, compiled": (ours(shape, 256), True, True),
                  **{name: (build(shape, 256), True, False) for name, build in OTHER_BUILDS.get(model, {}).items()}}  # fmt: skip
        variants = {name: training_step(c, x, fused=clay, channels_last=clay, compiled=compiled)
                    for name, (c, clay, compiled) in setups.items()}  # fmt: skip
        for step in variants.values():  # warm-up (and compilation)
            step()
            step()
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for block in range(args.blocks):
            for name in list(variants) if block % 2 == 0 else list(variants)[::-1]:
                count, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < args.block_seconds or count < 2:
                    variants[name]()
                    count += 1
                rates[name].append(batch * count / elapsed)
        for name, values in rates.items():
            ratios = [a / b for a, b in zip(values, rates["normflows"], strict=True)]
            parameters = sum(p.numel() for p in setups[name][0].module.parameters())
            print(f"| {model} | {'x'.join(map(str, shape))} | {batch} | {name} | {parameters:,} | {statistics.median(values):.0f} | "
                  f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

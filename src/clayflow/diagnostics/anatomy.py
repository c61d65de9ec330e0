"""A flow taken apart for checking: its random data-side layers (dequantization,
augmentation), the deterministic bijection after them (the *body*), the body without its
fixed image preprocessing (the *learned* part), and the body's leaf layers with their names."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from clayflow.core import Compose, Flow, Transform
from clayflow.transforms import CNF, Augment, Dequantize, Logit, ScalarAffine
from clayflow.transforms.preprocess import DequantizeColumns

RANDOM_LAYERS = (Dequantize, DequantizeColumns, Augment)  # forward draws noise; inverse is a left inverse
PREPROCESSING = (ScalarAffine, Logit)  # fixed maps of image levels into the learned part's space


@dataclass
class Anatomy:
    """``flow.transform`` = ``prefix`` then ``body`` (both ``Compose``); ``prefix`` holds the
    layers up to the last random one, so ``body`` is a deterministic bijection. ``learned``
    is the body after the fixed preprocessing of dequantized levels (scaling, logit): in
    float32 the logit saturates for samples at the edge of the level range, which is a limit
    of the representation, not of the learned map, so latent round trips are measured there."""

    flow: Flow
    prefix: Compose
    body: Compose
    learned: Compose

    @property
    def random_prefix(self) -> bool:
        """Whether the flow starts with random layers (dequantization, augmentation)."""
        return len(self.prefix) > 0

    def grid_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Which values of ``x`` ``(N, *)`` the prefix dequantizes (all of an image; a table's
        discrete columns), as a bool tensor like ``x``."""
        mask = torch.zeros_like(x, dtype=torch.bool)
        for layer in self.prefix:
            if isinstance(layer, Dequantize):
                mask[:] = True
            elif isinstance(layer, DequantizeColumns):
                mask |= layer.mask.to(x.device)
        return mask

    @property
    def quantized(self) -> bool:
        """Whether the prefix dequantizes: then the flow's inverse rounds back to the data's grid."""
        return any(isinstance(layer, (Dequantize, DequantizeColumns)) for layer in self.prefix)

    def cnfs(self) -> list[tuple[str, CNF]]:
        """The CNF blocks of the body, with their names."""
        return [(name, layer) for name, layer in self.leaves() if isinstance(layer, CNF)]

    def leaves(self) -> list[tuple[str, Transform]]:
        """The body's leaf layers (see ``leaf_layers``), named as in the flow's state dict."""
        names = {id(module): name for name, module in self.flow.named_modules()}
        return [(names.get(id(layer), name), layer) for name, layer in leaf_layers(self.body)]

    def body_input(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """The body's input for data ``x``: the prefix applied with noise from ``seed``."""
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self.prefix(x)[0]


def anatomy(flow: Flow) -> Anatomy:
    """Split ``flow`` into its random prefix and deterministic body (layers are shared, not copied)."""
    layers = _top_layers(flow.transform)
    last_random = max((i for i, layer in enumerate(layers) if isinstance(layer, RANDOM_LAYERS)), default=-1)
    body = layers[last_random + 1 :]
    fixed = 0
    while last_random >= 0 and fixed < len(body) and isinstance(body[fixed], PREPROCESSING):
        fixed += 1
    return Anatomy(flow, Compose(*layers[: last_random + 1]), Compose(*body), Compose(*body[fixed:]))


def _top_layers(transform: nn.Module) -> list[nn.Module]:
    if isinstance(transform, Compose):
        return [layer for t in transform for layer in _top_layers(t)]
    return [transform]


def leaf_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, Transform]]:
    """The layers of ``module``: the outermost transforms that are not containers
    (``Transform.composite``: Compose, MultiScale) — couplings, ActNorm, CNF blocks, a
    whitening map with the learned linear map inside it, an inverted layer (IAF) — with their
    dotted names, data side first. A forward pass calls each once, and their log-dets add up
    to the module's."""
    leaves: list[tuple[str, Transform]] = []
    for name, child in module.named_modules(prefix=prefix):  # parents before their children
        inside_a_leaf = any(leaf == prefix or name.startswith(f"{leaf}.") for leaf, _ in leaves)
        if isinstance(child, Transform) and not child.composite and not inside_a_leaf:
            leaves.append((name, child))
    return leaves


def float64_copy(flow: Flow, exact_trace: bool = True) -> Flow:
    """A float64 copy of ``flow`` in eval mode; its CNF blocks evaluate with the exact trace."""
    twin = copy.deepcopy(flow).double().eval()
    if exact_trace:
        for module in twin.modules():
            if isinstance(module, CNF):
                module.eval_trace = type(module.eval_trace).EXACT
    return twin


def layer_label(name: str, layer: nn.Module) -> str:
    """``transform.transforms.3 (AffineCoupling)``: where a layer is, and what it is."""
    return f"{name or '(whole)'} ({type(layer).__name__})"

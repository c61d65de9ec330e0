r"""``explain``: what each layer of a flow does to a batch, as tensors a user can inspect.

A flow scores x by the change of variables summed over its layers,

    log p(x) = log N(z) + sum_k log|det J_k|,

so each layer's mean log|det J_k| is its share of the log-likelihood (in bits per dimension
for images: -log|det J_k| / (D ln 2) is what layer k costs or saves). ``explain`` runs the
flow's forward pass once (random layers such as dequantization with noise from ``seed``) and
records, for every leaf layer, its output and its log|det| per row.

Examples:
    >>> import torch
    >>> from clayflow import models
    >>> explanation = explain(models.realnvp(2, layers=2, hidden=8), torch.randn(5, 2))
    >>> [step.kind for step in explanation.steps]
    ['AffineCoupling', 'AffineCoupling']
    >>> explanation.steps[0].output.shape, explanation.steps[0].logabsdet.shape
    (torch.Size([5, 2]), torch.Size([5]))
    >>> explanation  # doctest: +ELLIPSIS
    Explanation(5 examples of shape (2,), 2 layers, latent (5, 2), mean log p(x) ... nats)
    >>> explanation.steps[0]  # doctest: +ELLIPSIS
    Step('transform.transforms.0', AffineCoupling, output (5, 2), mean log|det| ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.core.conditioning import at_context
from clayflow.diagnostics.anatomy import leaf_layers
from clayflow.errors import UsageError


@dataclass
class Step:
    """One leaf layer's call: its name in the flow's state dict, its class, its output
    ``(B, *)`` and log|det| ``(B,)`` (both detached, on the CPU, float64)."""

    name: str
    kind: str
    output: Tensor
    logabsdet: Tensor

    def __repr__(self) -> str:  # shapes and means, not whole tensors
        return (f"Step({self.name!r}, {self.kind}, output {tuple(self.output.shape)}, "
                f"mean log|det| {float(self.logabsdet.mean()):.4f})")  # fmt: skip


@dataclass
class Explanation:
    """The per-layer values of one forward pass over ``x`` ``(B, *event_shape)``."""

    x: Tensor
    steps: list[Step]
    latent: Tensor
    base_log_prob: Tensor
    log_prob: Tensor

    def __repr__(self) -> str:  # shapes and means, not whole tensors
        return (f"Explanation({len(self.x)} examples of shape {tuple(self.x.shape[1:])}, {len(self.steps)} layers, "
                f"latent {tuple(self.latent.shape)}, mean log p(x) {float(self.log_prob.mean()):.4f} nats)")  # fmt: skip

    @property
    def dims(self) -> int:
        """Elements per example, D (bits/dim divide by D ln 2)."""
        return math.prod(self.x.shape[1:])

    def contributions(self) -> list[tuple[str, float]]:
        """Each term of the mean log p(x) in nats: every layer's mean log|det|, then the base's
        mean log N(z); they sum to the mean log p(x)."""
        terms = [(f"{step.name} ({step.kind})", float(step.logabsdet.mean())) for step in self.steps]
        return terms + [("base log N(z)", float(self.base_log_prob.mean()))]

    def table(self) -> str:
        """The contributions as text, in nats and in bits per dimension."""
        rows = [f"{'term':<56} {'nats':>12} {'bits/dim':>10}"]
        for name, nats in self.contributions():
            rows.append(f"{name:<56} {nats:>12.4f} {-nats / (self.dims * math.log(2)):>10.4f}")
        total = float(self.log_prob.mean())
        rows.append(f"{'log p(x) (sum)':<56} {total:>12.4f} {-total / (self.dims * math.log(2)):>10.4f}")
        return "\n".join(rows)


@torch.no_grad()
def explain(flow: Flow, x: Tensor, seed: int = 0, context: Tensor | None = None) -> Explanation:
    """Run ``flow`` forward on ``x`` ``(B, *event_shape)`` in eval mode and record every leaf
    layer's output and log|det| (see ``Explanation``); the flow's mode and torch's random
    stream are left as they were. A conditional flow p(x | c) takes the rows' contexts
    ``context`` ``(B, K)`` (see ``clayflow.core.conditioning.at_context`` to explain it
    with the plots, which take an unconditional flow)."""
    if bool(flow.context_features) != (context is not None):
        raise UsageError("explain a conditional flow p(x | c) at the rows' contexts (context=...), "
                         "and an unconditional one without" if flow.context_features else
                         "this flow is not conditional: explain it without a context")  # fmt: skip
    if context is not None:
        flow = at_context(flow, context)
    names = {id(module): name for name, module in flow.named_modules()}
    steps: list[Step] = []
    handles = []
    for local_name, layer in leaf_layers(flow.transform):
        full_name = names.get(id(layer), local_name)

        def record(module, args, output, name=full_name):
            steps.append(Step(name, type(module).__name__, output[0].detach().double().cpu(),
                              output[1].detach().double().cpu()))  # fmt: skip

        handles.append(layer.register_forward_hook(record))
    was_training = flow.training
    flow.eval()
    device = next(flow.parameters()).device
    x = torch.as_tensor(x).to(device=device, dtype=flow.dtype)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            z, logabsdet = flow(x)
    finally:
        for handle in handles:
            handle.remove()
        flow.train(was_training)
    base = flow.base.log_prob(z).double().cpu()
    return Explanation(x.double().cpu(), steps, z.double().cpu(), base, base + logabsdet.double().cpu())

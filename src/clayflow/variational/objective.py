r"""Training a flow q towards an unnormalised target p̃ = Z p.

Reverse KL (the flow's own samples; Rezende & Mohamed 2015):

    KL(q || p) = E_q[log q(x) - log p̃(x)] + log Z,

minimised through reparameterised samples x = f⁻¹(z), z ~ N(0, I), whose log q comes from the
same inverse pass (``Flow.sample_and_log_prob``, with a gradient). Annealing multiplies
log p̃ by β ∈ (0, 1] (a flatter target early on, which keeps q from collapsing onto one mode).
When samples of p exist, the forward KL -E_p[log q(x)] (maximum likelihood on them) can be
mixed in: ``loss = (1 - a) · reverse + a · forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.errors import UsageError
from clayflow.variational.targets import Target


@dataclass
class ReverseKLStep:
    """One step's loss (a scalar), and the detached log p̃ and log q of its samples ``(n,)``."""

    loss: Tensor
    log_target: Tensor
    log_q: Tensor


def reverse_kl(flow: Flow, target: Target, samples: int, beta: float = 1.0,
               target_samples: Tensor | None = None, forward_weight: float = 0.0) -> ReverseKLStep:  # fmt: skip
    """``mean(log q(x) - β log p̃(x))`` over ``samples`` draws of the flow (the reverse KL up to
    log Z at β = 1), mixed with ``forward_weight`` of the NLL of ``target_samples`` ``(m, D)``
    (a random ``samples`` of them when there are more)."""
    x, log_q = flow.sample_and_log_prob(samples)
    log_target = target(x)
    if x.requires_grad and not log_target.requires_grad:
        raise UsageError(f"target {target.name} gives log p~ without a gradient: compute it from x with torch "
                         "operations (its gradient drives the fit; values through numpy or .detach() have none)")  # fmt: skip
    loss = (log_q - beta * log_target).mean()
    if target_samples is not None and forward_weight > 0:
        if len(target_samples) > samples:
            target_samples = target_samples[torch.randint(len(target_samples), (samples,), device=target_samples.device)]
        loss = (1 - forward_weight) * loss - forward_weight * flow.log_prob(target_samples).mean()
    return ReverseKLStep(loss, log_target.detach(), log_q.detach())


def anneal(step: int, steps: int, start: float = 0.01) -> float:
    """β at ``step`` of an annealing phase of ``steps`` steps: linear from ``start`` to 1 (1 after)."""
    if steps <= 0 or step >= steps:
        return 1.0
    return start + (1 - start) * step / steps


@torch.no_grad()
def draw_weights(flow: Flow, target: Target, samples: int, chunk: int = 4096):
    """``ImportanceWeights`` of ``samples`` fresh draws of the flow (in chunks), in eval mode."""
    from clayflow.variational.weights import ImportanceWeights

    was_training = flow.training
    flow.eval()
    try:
        log_targets, log_qs = [], []
        for start in range(0, samples, chunk):
            x, log_q = flow.sample_and_log_prob(min(chunk, samples - start))
            log_targets.append(target(x))
            log_qs.append(log_q)
    finally:
        flow.train(was_training)
    return ImportanceWeights(torch.cat(log_targets), torch.cat(log_qs))

r"""Training objectives: maximum likelihood (with the CNF regularisers of Finlay et al. 2020)
and conditional flow matching for continuous flows.

Both return a ``StepLoss``: the loss to minimise, the NLL it contains (None for flow
matching, which never solves the ODE), and the solve statistics of any CNF blocks, whose
``nfe_backward`` is read after ``backward()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor, nn

from clayflow.core import Flow, batch
from clayflow.errors import UsageError
from clayflow.transforms import CNF
from clayflow.transforms.continuous import SolveStats


class Objective(str, Enum):
    """``mle``: maximise log p(x); ``fm``: regress the CNF's vector field on straight paths."""

    MLE = "mle"
    FM = "fm"


@dataclass
class StepLoss:
    """One training step's loss (a scalar to minimise), its NLL part and the CNF solves."""

    loss: Tensor
    nll: Tensor | None
    solves: list[SolveStats] = field(default_factory=list)

    def nll_value(self, loss_value: float) -> float:
        """The NLL as a float given the loss's (``loss_value``), without a second host sync when
        the NLL is the loss itself; 0 for flow matching."""
        if self.nll is None:
            return 0.0
        return loss_value if self.nll is self.loss else self.nll.item()

    def nfe(self) -> tuple[int, int]:
        """Function evaluations of all solves of this step: (forward, backward)."""
        return sum(s.nfe_forward for s in self.solves), sum(s.nfe_backward for s in self.solves)


class StepObjective(nn.Module):
    """A training objective as a module, ``forward(x) -> StepLoss``, so that
    ``DistributedDataParallel`` can wrap it and average the gradients of its backward pass."""

    def __init__(self, flow: Flow, objective):
        super().__init__()
        self.flow, self.objective = flow, objective

    def forward(self, x: Tensor) -> StepLoss:
        return self.objective(self.flow, x)


def maximum_likelihood(flow: Flow, x: Tensor, kinetic: float = 0.0, jacobian: float = 0.0) -> StepLoss:
    r"""-mean log p(x), plus ``kinetic`` * int |f|^2 dt and ``jacobian`` * int |df/dz|_F^2 dt
    averaged over the batch for every CNF block (RNODE). A conditional flow's rows ``x`` hold
    the context in their last columns (``Flow.split_rows``): the NLL is then -log p(x | c)."""
    regularize = kinetic > 0 or jacobian > 0
    x, context = flow.split_rows(x)
    context = flow.encoded_context(context, len(x))
    z, logabsdet, penalty, solves = x, x.new_zeros(x.shape[0]), x.new_zeros(()), []
    for transform in flow.transform:
        if isinstance(transform, CNF):
            z, ladj, stats = transform.forward_with_stats(z, regularize=regularize, context=context)
            solves.append(stats)
            if regularize:
                penalty = (
                    penalty + kinetic * stats.kinetic.mean() + jacobian * stats.jacobian_frobenius.mean()
                )
        else:
            z, ladj = transform(z, context)
        logabsdet = logabsdet + ladj
    nll = -(flow.base.log_prob(z) + logabsdet).mean()
    return StepLoss(nll + penalty if regularize else nll, nll, solves)


def flow_matching(flow: Flow, x: Tensor, optimal_transport: bool = False) -> StepLoss:
    r"""Conditional flow matching on straight paths (Lipman et al. 2023; Tong et al. 2024).

    In the CNF's direction (t = 0 data, t = T latent): x_t = (1 - t/T) x + (t/T) eps with
    eps ~ N(0, I) and t ~ U[0, T], target velocity (eps - x) / T, loss E|f(t, x_t) - target|^2.
    Fixed transforms before the CNF (standardisation) are applied first. With
    ``optimal_transport`` the noise is re-paired to the batch by an exact minibatch assignment
    on squared distances, which straightens the learned paths. A conditional flow's rows hold
    the context (``Flow.split_rows``), which the field sees beside x_t.
    """
    x, context = flow.split_rows(x)
    context = flow.encoded_context(context, len(x))
    if context is not None and optimal_transport:
        raise UsageError("--ot pairs noise and data across the batch, which mixes contexts; train p(x | c) without it")
    transforms = list(flow.transform)
    blocks = [i for i, t in enumerate(transforms) if isinstance(t, CNF)]
    if len(blocks) != 1 or blocks[0] != len(transforms) - 1:
        raise UsageError("flow matching trains one CNF block at the end of the flow; use --blocks 1")
    for transform in transforms[:-1]:
        if any(p.requires_grad for p in transform.parameters()):
            raise UsageError("flow matching cannot train layers before the CNF; drop --batch-norm")
        x, _ = transform(x, context)
    cnf = transforms[-1]
    eps = batch.randn_like(x)
    if optimal_transport:
        eps = eps[_assignment(x, eps)]
    t1 = cnf.t1.to(x)
    t = batch.rand((x.shape[0],), like=x) * t1
    s = (t / t1).reshape(-1, *[1] * (x.dim() - 1))
    x_t = (1 - s) * x + s * eps
    velocity = cnf.dynamics(t, x_t) if context is None else cnf.dynamics(t, x_t, context)
    loss = (velocity - (eps - x) / t1).pow(2).reshape(x.shape[0], -1).sum(1).mean()
    return StepLoss(loss, None)


def _assignment(x: Tensor, eps: Tensor) -> Tensor:
    """The permutation of ``eps`` minimising sum |x_i - eps_perm(i)|^2 (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    flat = [v.detach().reshape(v.shape[0], -1).double() for v in (x, eps)]
    cost = torch.cdist(*flat).pow(2).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns, device=x.device)

"""FFJORD-style continuous normalizing flows for vectors."""

from __future__ import annotations

from clayflow.core import Compose, Flow, StandardNormal
from clayflow.errors import ClayflowError
from clayflow.models.options import check_sizes
from clayflow.nn import ODENet
from clayflow.transforms import CNF, BatchNorm


def cnf(
    features: int,
    *,
    blocks: int = 1,
    hidden: int = 64,
    depth: int = 3,
    activation: str = "softplus",
    t1: float = 1.0,
    learn_t1: bool = False,
    solver: str = "dopri5",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    step_size: float | None = None,
    trace: str = "hutchinson",
    eval_trace: str = "exact",
    adjoint: bool = False,
    batch_norm: bool = False,
) -> Flow:
    """``blocks`` CNF blocks (FFJORD), each with its own concatsquash ``ODENet`` vector field.

    Args:
        features: D.
        blocks: CNF blocks in sequence; ``batch_norm`` puts a ``BatchNorm`` between them.
        hidden, depth, activation: the vector field MLP (``softplus`` or ``tanh``).
        t1, learn_t1: integration time T per block, fixed or learned.
        solver, atol, rtol, step_size: the torchdiffeq solver and its tolerances or step.
        trace, eval_trace: ``"hutchinson"`` or ``"exact"`` divergence in training / eval
            (FFJORD: Hutchinson to train; exact is cheap to evaluate in low dimension).
        adjoint: backpropagate with the adjoint method.
    Reference: Grathwohl et al., FFJORD, 2019.
    """
    if features < 1:
        raise ClayflowError(f"a CNF needs at least 1 feature, got {features}")
    check_sizes(blocks=blocks, hidden=hidden, depth=depth)
    steps = []
    for i in range(blocks):
        field = ODENet(features, hidden, depth, activation=activation)
        steps.append(
            CNF(
                field,
                t1=t1,
                learn_t1=learn_t1,
                solver=solver,
                atol=atol,
                rtol=rtol,
                step_size=step_size,
                trace=trace,
                eval_trace=eval_trace,
                adjoint=adjoint,
            )
        )
        if batch_norm and i < blocks - 1:
            steps.append(BatchNorm(features))
    return Flow(Compose(*steps), StandardNormal(features))

"""FFJORD-style continuous normalizing flows for vectors and small images."""

from __future__ import annotations

from clayflow.core import Compose, Flow, StandardNormal
from clayflow.errors import ClayflowError, UsageError
from clayflow.models.image import check_image_shape
from clayflow.models.options import check_sizes, context_network
from clayflow.nn import ODENet
from clayflow.transforms import CNF, ActNorm, Augment, BatchNorm, Dequantize, Logit, ScalarAffine


def cnf(
    features: int,
    *,
    blocks: int = 1,
    hidden: int = 64,
    depth: int = 3,
    activation: str = "tanh",
    augment: int = 0,
    actnorm: bool = False,
    batch_norm: bool = False,
    t1: float = 1.0,
    learn_t1: bool = False,
    solver: str = "dopri5",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    step_size: float | None = None,
    trace: str = "hutchinson",
    eval_trace: str = "exact",
    adjoint: bool = False,
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """``blocks`` CNF blocks (FFJORD), each with its own concatsquash MLP vector field.

    Args:
        features: D.
        blocks: CNF blocks in sequence; ``actnorm`` or ``batch_norm`` puts an ``ActNorm`` or
            ``BatchNorm`` between them.
        hidden, depth, activation: the vector field MLP (``tanh`` or ``softplus``). tanh, as in
            FFJORD's toy experiments, is the default since 2026-12-02 (it reached a lower test
            NLL than softplus at an equal time budget: ``benchmarks/compare/run.py --only
            cnf``); runs saved before load as they were built, and a flow built in Python
            then is rebuilt with ``activation="softplus"``.
        augment: extra dimensions drawn from N(0, I) that the ODE moves in (see
            ``transforms.augment``); log_prob is then a lower bound on log p(x).
        t1, learn_t1: integration time T per block, fixed or learned.
        solver, atol, rtol, step_size: the torchdiffeq solver and its tolerances or step.
        trace, eval_trace: ``"hutchinson"`` or ``"exact"`` divergence in training / eval
            (FFJORD: Hutchinson to train; exact is cheap to evaluate in low dimension).
        adjoint: backpropagate with the adjoint method.
        context_features: K > 0: a conditional flow p(x | c), c ``(B, K)`` given to every
            vector field's first layer beside z (with ``context_embedding`` E > 0 through an
            MLP to E features first).
    Reference: Grathwohl et al., FFJORD, 2019.
    """
    if features < 1:
        raise ClayflowError(f"a CNF needs at least 1 feature, got {features}")
    check_sizes(blocks=blocks, hidden=hidden, depth=depth)
    width = features + augment
    encoder, context_width = context_network(context_features, context_embedding)

    def field():
        return ODENet(width, hidden, depth, activation=activation, context_features=context_width)

    solve = {"t1": t1, "learn_t1": learn_t1, "solver": solver, "atol": atol, "rtol": rtol,
             "step_size": step_size, "trace": trace, "eval_trace": eval_trace, "adjoint": adjoint}  # fmt: skip
    steps = _augment(augment) + _blocks(field, width, blocks, actnorm, batch_norm, solve)
    return Flow(Compose(*steps), StandardNormal(width), (features,), context_features, encoder)


def cnf_image(
    shape: tuple[int, int, int],
    levels: int = 256,
    *,
    blocks: int = 1,
    hidden: int = 64,
    depth: int = 3,
    activation: str = "softplus",
    augment: int = 0,
    actnorm: bool = False,
    batch_norm: bool = False,
    alpha: float = 0.05,
    t1: float = 1.0,
    learn_t1: bool = False,
    solver: str = "dopri5",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    step_size: float | None = None,
    trace: str = "hutchinson",
    eval_trace: str = "hutchinson",
    adjoint: bool = False,
) -> Flow:
    """A single-scale FFJORD for small images with ``levels`` intensity levels.

    Pre-processing as RealNVP's: ``Dequantize(levels)``, ``ScalarAffine(1 / levels)``,
    ``Logit(alpha)``; then ``blocks`` CNF blocks whose vector fields are concatsquash 3x3
    convolutions with ``hidden`` channels and ``depth`` hidden layers. ``augment`` adds
    channels (ANODE-style, drawn from N(0, I)). Options as ``cnf``; the divergence defaults
    to Hutchinson in evaluation too (the exact trace costs one backward pass per pixel).

    Shape:
        log_prob: ``(B, C, H, W)`` -> ``(B,)``; sample(n) -> ``(n, C, H, W)`` integer levels.
    Reference: Grathwohl et al., FFJORD, 2019 (their image models are multi-scale).
    """
    channels, height, width = check_image_shape(shape, 1)
    check_sizes(blocks=blocks, hidden=hidden, depth=depth)
    augmented = channels + augment

    def field():
        return ODENet(augmented, hidden, depth, activation=activation, conv=True)

    solve = {"t1": t1, "learn_t1": learn_t1, "solver": solver, "atol": atol, "rtol": rtol,
             "step_size": step_size, "trace": trace, "eval_trace": eval_trace, "adjoint": adjoint}  # fmt: skip
    preprocess = [Dequantize(levels), ScalarAffine(1.0 / levels), Logit(alpha)]
    steps = preprocess + _augment(augment) + _blocks(field, augmented, blocks, actnorm, batch_norm, solve)
    return Flow(Compose(*steps), StandardNormal((augmented, height, width)), event_shape=(channels, height, width))


def _augment(extra: int) -> list:
    if extra < 0:
        raise UsageError(f"augment must be >= 0 extra dimensions, got {extra}")
    return [Augment(extra)] if extra else []


def _blocks(make_field, features: int, blocks: int, actnorm: bool, batch_norm: bool, solve: dict) -> list:
    """``blocks`` CNFs on fields from ``make_field()`` with the ``CNF`` options ``solve``, and
    an ActNorm or BatchNorm between consecutive blocks."""
    if actnorm and batch_norm:
        raise UsageError("choose ActNorm or batch norm between CNF blocks, not both")
    steps = []
    for i in range(blocks):
        if i > 0 and actnorm:
            steps.append(ActNorm(features))
        if i > 0 and batch_norm:
            steps.append(BatchNorm(features))
        steps.append(CNF(make_field(), **solve))
    return steps

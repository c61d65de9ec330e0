r"""Continuous normalizing flows: a neural ODE dz/dt = f(t, z) solved by torchdiffeq.

The instantaneous change of variables d log p(z(t)) / dt = -tr(df/dz) gives the log-det:
``forward`` (data -> latent) integrates z from t = 0 to t = T together with

    log|det dz(T)/dx| = int_0^T tr(df/dz(t)) dt,

and ``inverse`` integrates from T back to 0, which yields minus that integral. The trace
is exact (one backward pass per dimension) or Hutchinson's estimate eps^T (df/dz) eps with
the noise eps fixed for one solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import cast

import torch
from torch import Tensor, nn

from clayflow.core import batch
from clayflow.core.transform import Transform
from clayflow.errors import UsageError, parse_choice

FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
DEFAULT_STEPS = 20  # fixed-step solvers without a step size take T / 20


class Trace(str, Enum):
    """How the divergence tr(df/dz) is computed."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"


class Noise(str, Enum):
    """Distribution of Hutchinson's probe vectors (both have E[eps eps^T] = I)."""

    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"


def exact_divergence(dz: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """tr(d dz / dz) per sample, one backward pass per dimension: ``(B, D) -> (B,)``."""
    flat = dz.reshape(dz.shape[0], -1)
    divergence = torch.zeros(dz.shape[0], dtype=dz.dtype, device=dz.device)
    for i in range(flat.shape[1]):
        grad = torch.autograd.grad(flat[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        divergence = divergence + grad.reshape(grad.shape[0], -1)[:, i]
    return divergence


@dataclass
class SolveStats:
    """What one solve measured: NFE of the solve and, with ``regularize``, the per-sample
    integrals of the kinetic energy |f|^2 and of the squared Jacobian Frobenius norm
    (Hutchinson estimate |eps^T df/dz|^2), as in Finlay et al. 2020."""

    nfe_forward: int
    kinetic: Tensor | None
    jacobian_frobenius: Tensor | None
    counter: _Counter

    @property
    def nfe_backward(self) -> int:
        """Function evaluations since the solve ended, i.e. by the adjoint's backward solve
        once ``backward()`` has run (0 without the adjoint: autograd replays the graph)."""
        return self.counter.calls - self.nfe_forward


class _Counter:
    def __init__(self) -> None:
        self.calls = 0


class _AugmentedDynamics(nn.Module):
    """The ODE on the state (z, log-det[, kinetic, Frobenius]) handed to torchdiffeq."""

    def __init__(self, dynamics: nn.Module):
        super().__init__()
        self.dynamics = dynamics
        self.trace = Trace.EXACT
        self.noise: Tensor | None = None
        self.regularize = False
        self.create_graph = True
        self.counter = _Counter()
        self.context: Tensor | None = None  # a conditional field's context (B, K) for this solve

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.counter.calls += 1
        z = state[0]
        with torch.enable_grad():
            if not z.requires_grad or (z.grad_fn is None and z._is_view()):
                # A fresh leaf: views made under no_grad (torchdiffeq's adjoint builds some)
                # report requires_grad but are not connected to anything.
                z = z.detach().requires_grad_(True)
            dz = self.dynamics(t, z) if self.context is None else self.dynamics(t, z, self.context)
            vjp = None
            if self.trace is Trace.EXACT:
                divergence = exact_divergence(dz, z, self.create_graph)
            if self.trace is Trace.HUTCHINSON or self.regularize:
                vjp = torch.autograd.grad(dz, z, self.noise, create_graph=self.create_graph)[0]
            if self.trace is Trace.HUTCHINSON:  # then vjp and the noise are set
                divergence = (cast(Tensor, vjp) * cast(Tensor, self.noise)).reshape(z.shape[0], -1).sum(1)
        derivatives = [dz, divergence]
        if self.regularize:
            derivatives += [
                dz.pow(2).reshape(z.shape[0], -1).sum(1),
                cast(Tensor, vjp).pow(2).reshape(z.shape[0], -1).sum(1),  # set above when regularizing
            ]
        if not self.create_graph:
            derivatives = [d.detach() for d in derivatives]
        return tuple(derivatives)


class CNF(Transform):
    r"""A continuous normalizing flow block: z = x + int_0^T f(t, z(t)) dt.

    Args:
        dynamics: ``f(t, z)``, an ``nn.Module`` taking a scalar time and ``(B, D)``; for a
            conditional CNF ``f(t, z, context)`` with the context ``(B, K)`` given to every call.
        t1: integration time T.
        learn_t1: learn T (kept positive as exp of a parameter).
        solver: a torchdiffeq method (``dopri5``, ``rk4``, ``euler``, ``adaptive_heun``, ...).
        atol, rtol: tolerances of adaptive solvers.
        step_size: step of fixed-step solvers (default T / 20).
        trace: ``"exact"`` or ``"hutchinson"`` in training mode.
        eval_trace: the same in eval mode (default: ``trace``), e.g. exact to evaluate.
        noise: Hutchinson's probes, ``"rademacher"`` or ``"gaussian"``.
        adjoint: solve the backward pass with the adjoint method (memory constant in the
            number of solver steps) instead of backpropagating through the solver.
    Shape:
        x: ``(B, D)`` -> z ``(B, D)``, logabsdet ``(B,)``.
    Reference: Chen et al., Neural ODEs, 2018; Grathwohl et al., FFJORD, 2019.
    """

    log_t1: Tensor  # a parameter with learn_t1, else a buffer

    def __init__(
        self,
        dynamics: nn.Module,
        *,
        t1: float = 1.0,
        learn_t1: bool = False,
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        step_size: float | None = None,
        trace: str = "exact",
        eval_trace: str | None = None,
        noise: str = "rademacher",
        adjoint: bool = False,
    ):
        super().__init__()
        if solver not in FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS:
            valid = ", ".join(ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS)
            raise UsageError(f"unknown ODE solver {solver!r}; choose one of: {valid}")
        if not t1 > 0:
            raise UsageError(f"the integration time T must be > 0, got {t1}")
        self.func = _AugmentedDynamics(dynamics)
        log_t1 = torch.tensor(float(t1)).log()
        if learn_t1:
            self.log_t1 = nn.Parameter(log_t1)
        else:
            self.register_buffer("log_t1", log_t1)
        self.solver, self.atol, self.rtol, self.step_size = solver, atol, rtol, step_size
        self.trace: Trace = parse_choice(Trace, trace, "trace")
        self.eval_trace: Trace = parse_choice(Trace, eval_trace or trace, "trace")
        self.noise_kind: Noise = parse_choice(Noise, noise, "Hutchinson noise")
        self.adjoint = adjoint

    @property
    def dynamics(self) -> nn.Module:
        return self.func.dynamics

    @property
    def t1(self) -> Tensor:
        return self.log_t1.exp()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, logabsdet, _ = self.forward_with_stats(x, context=context)
        return z, logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logabsdet, _ = self._solve(z, reverse=True, regularize=False, context=context)
        return x, logabsdet

    def forward_with_stats(
        self, x: Tensor, regularize: bool = False, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, SolveStats]:
        """``forward`` plus its ``SolveStats`` (NFE; kinetic and Frobenius integrals with
        ``regularize``, which need a Hutchinson probe even with the exact trace)."""
        return self._solve(x, reverse=False, regularize=regularize, context=context)

    def _solve(
        self, x: Tensor, reverse: bool, regularize: bool, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, SolveStats]:
        func = self.func
        adjoint = self.adjoint and torch.is_grad_enabled()
        if adjoint and context is not None and context.requires_grad:
            # The adjoint pass differentiates the ODE's state and parameters only: a context
            # computed by a trained encoder would get no gradient, silently.
            raise UsageError("the adjoint method cannot train a context encoder; drop adjoint or the encoder")
        # The adjoint's backward pass calls the field again after this returns, so it keeps the
        # (constant) context; otherwise the field lets go of it, and of its graph, after the solve.
        func.context = context
        try:
            return self._integrate(x, reverse, regularize, adjoint)
        finally:
            if not adjoint:
                func.context = None

    def _integrate(
        self, x: Tensor, reverse: bool, regularize: bool, adjoint: bool
    ) -> tuple[Tensor, Tensor, SolveStats]:
        """``_solve`` once the field holds its context: one torchdiffeq solve of the state."""
        from torchdiffeq import odeint, odeint_adjoint

        func = self.func
        func.trace = self.trace if self.training else self.eval_trace
        func.regularize = regularize
        func.create_graph = torch.is_grad_enabled()
        func.counter = _Counter()
        if func.trace is Trace.HUTCHINSON or regularize:
            func.noise = self._probe(x)
        t1 = self.t1.to(x)
        times = (
            torch.stack([t1, torch.zeros_like(t1)]) if reverse else torch.stack([torch.zeros_like(t1), t1])
        )
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros) + ((zeros, zeros) if regularize else ())
        options: dict[str, float] = {}
        if self.solver in FIXED_STEP_SOLVERS:
            options["step_size"] = self.step_size or float(self.t1) / DEFAULT_STEPS
        kwargs = {"rtol": self.rtol, "atol": self.atol, "method": self.solver, "options": options}
        if adjoint:
            params = tuple(p for p in self.func.parameters() if p.requires_grad)  # T gets its grad via t
            solution = odeint_adjoint(func, state, times, adjoint_params=params, **kwargs)
        else:
            solution = odeint(func, state, times, **kwargs)
        final = [s[-1] for s in solution]
        stats = SolveStats(
            nfe_forward=func.counter.calls,
            kinetic=final[2] if regularize else None,
            jacobian_frobenius=final[3] if regularize else None,
            counter=func.counter,
        )
        return final[0], final[1], stats

    @torch.no_grad()
    def trajectory(self, z: Tensor, steps: int = 6, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data states at ``steps`` times from T down to 0: ``(times (steps,),
        states (steps, B, D))``, with the same solver and tolerances (a conditional field at
        the encoded ``context`` ``(B, K)``)."""
        from torchdiffeq import odeint

        t1 = float(self.t1)
        times = torch.linspace(t1, 0.0, steps, dtype=z.dtype, device=z.device)
        options = (
            {"step_size": self.step_size or t1 / DEFAULT_STEPS} if self.solver in FIXED_STEP_SOLVERS else {}
        )
        field = self.dynamics if context is None else (lambda t, state: self.dynamics(t, state, context))
        states = odeint(field, z, times, rtol=self.rtol, atol=self.atol, method=self.solver, options=options)
        return times, states

    def _probe(self, x: Tensor) -> Tensor:
        if self.noise_kind is Noise.GAUSSIAN:
            return batch.randn_like(x)
        return batch.rademacher_like(x)

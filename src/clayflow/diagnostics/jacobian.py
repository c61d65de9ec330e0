r"""Brute-force log-determinants: the full Jacobian of a map by automatic differentiation,
then ``slogdet``, independent of every layer's own log-det code.

For a map f applied row by row to ``(B, *shape)``, the Jacobian of ``x -> f(x).sum(0)`` is
the stack of the B per-row Jacobians (rows do not interact), so one call with D_out backward
passes gives all of them: ``(D_out, B, D_in)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def brute_logabsdet(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``log|det df/dx|`` of each row of ``x`` ``(B, *shape)`` -> ``(B,)``, where ``f`` maps
    rows to rows of as many elements (``(B, *shape) -> (B, *shape_out)``), in ``x``'s dtype
    (use float64). Non-square maps give NaN."""
    rows = x.shape[0]

    def summed(v: Tensor) -> Tensor:
        return f(v).reshape(rows, -1).sum(0)

    x = x.detach()
    try:
        jac = torch.autograd.functional.jacobian(summed, x, vectorize=True)
    except RuntimeError:  # an operation without a batching rule: one backward pass at a time
        jac = torch.autograd.functional.jacobian(summed, x)
    jac = jac.reshape(jac.shape[0], rows, -1).permute(1, 0, 2)  # (B, D_out, D_in)
    if jac.shape[1] != jac.shape[2]:
        return torch.full((rows,), float("nan"), dtype=x.dtype, device=x.device)
    return torch.linalg.slogdet(jac)[1]

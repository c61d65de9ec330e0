r"""A conditional flow p(x | c) held at fixed contexts: an unconditional ``Flow`` of x whose
layers see the given context rows, so that every tool written for p(x) (``verify``,
``explain``, the per-layer checks that call layers directly) works on it unchanged.

>>> import torch
>>> from clayflow import models
>>> flow = models.maf(2, layers=2, hidden=8, context_features=1)
>>> x, c = torch.randn(4, 2), torch.randn(4, 1)
>>> fixed = at_context(flow, c)
>>> fixed.context_features, torch.allclose(fixed.log_prob(x), flow.log_prob(x, c))
(0, True)
"""

from __future__ import annotations

import copy
import itertools
from typing import cast

import torch
from torch import Tensor

from clayflow.core.flow import Flow
from clayflow.core.transform import Transform

_BOUND_CLASSES: dict[type, type] = {}


def at_context(flow: Flow, context: Tensor) -> Flow:
    """A copy of the conditional ``flow`` as the flow of x at the contexts ``context`` ``(N, K)``
    (raw, as ``flow.log_prob`` takes them; encoded here once, with no graph).

    A batch of B rows is paired with context rows ``0, 1, ..., B - 1`` (cycled when B > N),
    so data of N rows gets its own contexts and samples of N rows are drawn at them; a single
    context row (N = 1) gives the density p(x | c) of one c, which integrates to 1. Every
    leaf layer holds the encoded rows as a buffer (so ``.double()`` and copies keep them) and
    uses them whenever it is called without a context; layers keep their class for
    ``isinstance`` (a subclass of the same name, as ``diagnostics.faults.break_layer`` does),
    so the copy cannot be pickled: save the original flow, and hold it at contexts again.
    """
    if not flow.context_features:
        raise ValueError("at_context takes a conditional flow (context_features > 0)")
    device = next(itertools.chain(flow.parameters(), flow.buffers()), torch.empty(0)).device
    context = torch.as_tensor(context).to(device)
    with torch.no_grad():
        encoded = cast(  # never None: the flow is conditional
            Tensor, flow.encoded_context(context if context.dim() == 2 else context[None], len(context))
        ).detach()
    fixed = Flow(copy.deepcopy(flow.transform), copy.deepcopy(flow.base), event_shape=flow.event_shape)
    for module in fixed.transform.modules():
        if isinstance(module, Transform) and not any(isinstance(m, Transform) for m in list(module.modules())[1:]):
            module.__class__ = _bound_class(type(module))
            module.register_buffer("bound_context", encoded.clone(), persistent=False)
    return fixed.train(flow.training)


def _bound_class(cls: type[Transform]) -> type:
    """``cls`` with ``forward``/``inverse`` (and a CNF's ``trajectory``) taking their context,
    when none is passed, from the layer's ``bound_context`` rows."""
    if cls in _BOUND_CLASSES or cls in _BOUND_CLASSES.values():
        return _BOUND_CLASSES.get(cls, cls)

    def rows(self: Transform, batch: int, context: Tensor | None) -> Tensor:
        if context is not None:
            return context
        bound = cast(Tensor, self.bound_context)  # the buffer at_context registers
        return bound.expand(batch, -1) if len(bound) == 1 else bound[torch.arange(batch, device=bound.device) % len(bound)]

    methods = {
        "forward": lambda self, x, context=None: cls.forward(self, x, rows(self, len(x), context)),
        "inverse": lambda self, z, context=None: cls.inverse(self, z, rows(self, len(z), context)),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    if hasattr(cls, "forward_with_stats"):  # a CNF's forward with its solver statistics
        methods["forward_with_stats"] = lambda self, x, regularize=False, context=None: cls.forward_with_stats(
            self, x, regularize, rows(self, len(x), context)
        )
    if hasattr(cls, "trajectory"):
        methods["trajectory"] = lambda self, z, steps=6, context=None: cls.trajectory(self, z, steps, rows(self, len(z), context))
    _BOUND_CLASSES[cls] = type(cls.__name__, (cls,), methods)
    return _BOUND_CLASSES[cls]

"""Deliberate faults, to see ``verify`` catch them: a layer whose log-det or inverse is wrong."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

Fault = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (output, logabsdet) -> faulty ones


def break_layer(layer: nn.Module, forward: Fault | None = None, inverse: Fault | None = None) -> None:
    """Give ``layer`` a faulty ``forward`` and/or ``inverse``: functions of the correct
    method's ``(output, logabsdet)``. Done through a subclass of the same name, so copies
    (``verify``'s float64 twin) are broken alike and reports name the class a user sees.

    >>> import torch
    >>> from clayflow.transforms import Scaling
    >>> layer = Scaling(2)
    >>> break_layer(layer, forward=lambda z, logdet: (z, logdet + 0.1))
    >>> layer(torch.zeros(1, 2))[1].tolist()  # the log-det of the identity, plus 0.1
    [0.10000000149011612]
    """
    cls = type(layer)
    methods = {}
    if forward is not None:
        methods["forward"] = lambda self, v, context=None: forward(*cls.forward(self, v, context))
    if inverse is not None:
        methods["inverse"] = lambda self, v, context=None: inverse(*cls.inverse(self, v, context))
    layer.__class__ = type(cls.__name__, (cls,), methods)

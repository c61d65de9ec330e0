r"""Mixed precision where it is safe: the conditioner networks, and nothing else.

A coupling ``y_B = x_B · exp(s(x_A)) + t(x_A)`` stays an exact bijection whatever precision
its network ``(s, t) = net(x_A)`` is computed in, because the inverse calls the same network on
the same ``x_A``; what must stay in float32 is the transformation itself and its log|det|
(``Σ s``), the ODE state of a CNF, the LU factors of a 1x1 convolution and everything a
determinant is built from. So ``autocast_conditioners`` runs only each transform's ``net``
(coupling, autoregressive and split-prior networks) and, for flow matching, a CNF's vector
field, under ``torch.autocast`` in training mode, and casts their outputs back to the input's
dtype; evaluation (``flow.eval()``: validation, ``score``, ``sample``) runs in full precision,
so the figures a run reports are those of the float32 model it saves.

bfloat16 has float32's range (with 8 bits of mantissa), so nothing over- or underflows and no
loss scaling is needed. float16 would need a gradient scaler and is not offered.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import nn

from clayflow.errors import parse_choice


class Precision(str, Enum):
    """The precision of the conditioner networks while training."""

    FP32 = "fp32"
    BF16 = "bf16"

    @property
    def dtype(self) -> torch.dtype:
        return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}[self]


class _Autocast:
    """Mixed into a network's class: its forward runs under autocast in training mode, and its
    output comes back in the dtype of its first input (float32 data: float32 parameters of the
    transformation). A copy (``copy.deepcopy``, ``pickle``, ``torch.save``) is of the network's
    own class, in full precision."""

    autocast_dtype: torch.dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if not self.training or not inputs:  # type: ignore[attr-defined]
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        with torch.autocast(inputs[0].device.type, dtype=self.autocast_dtype):
            out = super().forward(*args, **kwargs)  # type: ignore[misc]
        if isinstance(out, tuple):
            return tuple(o.to(inputs[0].dtype) if isinstance(o, torch.Tensor) else o for o in out)
        return out.to(inputs[0].dtype)

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled (``torch.save(flow)``, ``copy.deepcopy``) as the network's own class."""
        cls = type(self)
        own = cls.__mro__[2]  # (_Autocast subclass, _Autocast, the network's class, ...)
        try:
            self.__class__ = own
            return own.__reduce_ex__(self, protocol)
        finally:
            self.__class__ = cls


_CLASSES: dict[tuple[type, torch.dtype], type] = {}


def _autocast_class(cls: type, dtype: torch.dtype) -> type:
    """``cls`` with ``_Autocast`` mixed in at ``dtype``, one subclass per pair (same name, so the
    module's repr and ``isinstance`` checks are unchanged; state dicts keep their keys)."""
    if (cls, dtype) not in _CLASSES:
        _CLASSES[cls, dtype] = type(cls.__name__, (_Autocast, cls), {"__module__": cls.__module__, "autocast_dtype": dtype})
    return _CLASSES[cls, dtype]


def conditioner_networks(flow: nn.Module, vector_fields: bool = False) -> list[nn.Module]:
    """Every transform's ``net`` in ``flow`` (and with ``vector_fields`` each CNF's dynamics)."""
    from clayflow.core.transform import Transform
    from clayflow.transforms.continuous import CNF

    nets = []
    for module in flow.modules():
        if isinstance(module, CNF):
            if vector_fields:
                nets.append(module.dynamics)
        elif isinstance(module, Transform) and isinstance(getattr(module, "net", None), nn.Module):
            nets.append(module.net)
    return nets


def autocast_conditioners(flow: nn.Module, precision: str | Precision, vector_fields: bool = False) -> int:
    """Run ``flow``'s conditioner networks (``conditioner_networks``) in ``precision`` while
    training, in place; returns how many. fp32 puts back the networks' own classes
    (``full_precision``) and returns 0."""
    kind = parse_choice(Precision, precision, "precision")
    full_precision(flow)
    if kind is Precision.FP32:
        return 0
    nets = conditioner_networks(flow, vector_fields)
    for net in nets:
        net.__class__ = _autocast_class(type(net), kind.dtype)
    return len(nets)


def full_precision(flow: nn.Module) -> None:
    """Undo ``autocast_conditioners``: every network of ``flow`` gets its own class back."""
    for module in flow.modules():
        if isinstance(module, _Autocast):
            module.__class__ = type(module).__mro__[2]

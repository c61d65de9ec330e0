r"""``Flow``: a transform (data -> latent) and a base distribution, used like a distribution."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, SupportsIndex, cast

import torch
from torch import Tensor, nn

from clayflow.core.transform import Compose, Inverse, Transform
from clayflow.errors import ClayflowError

SampleShape = int | Sequence[int]  # torch.Size, a tuple, or an int n meaning (n,)

if TYPE_CHECKING:

    class _Distribution(Protocol):
        """What a flow calls on its base (an nn.Module, so typed as one)."""

        def log_prob(self, z: Tensor) -> Tensor: ...

        def sample(self, n: int, temperature: float = 1.0) -> Tensor: ...


class TemperatureError(ClayflowError, ValueError):
    """A sampling temperature that is negative, infinite or NaN: a ``ValueError``."""


class EventShapeError(ClayflowError, ValueError):
    """An input whose event shape is not the flow's: a ``ValueError``, as
    ``torch.distributions`` raises, and a ``ClayflowError`` (one line in the CLI)."""


class Flow(nn.Module):
    r"""A normalizing flow p(x) = p_base(f(x)) |det df/dx|.

    ``transform`` maps data to latent (see ``clayflow.core.transform`` for the convention),
    ``base`` is a distribution over the latent with ``log_prob`` and ``sample(n, temperature)``.

    >>> import torch
    >>> from clayflow import models
    >>> flow = models.realnvp(2, layers=4, hidden=16)
    >>> x = torch.randn(5, 2)
    >>> flow.log_prob(x).shape
    torch.Size([5])
    >>> flow.sample((3,)).shape
    torch.Size([3, 2])
    >>> flow.sample(torch.Size([4, 3])).shape
    torch.Size([4, 3, 2])

    Inputs of another event shape raise ``EventShapeError`` (a ``ValueError``) rather than
    broadcast; an empty batch gives empty results (and leaves ActNorm and batch-norm state alone).

    Args:
        transform: data -> latent.
        base: distribution over the latent, with ``event_shape``.
        event_shape: the data's event shape. ``None``: the base's when no layer changes shapes
            (``output_shape`` is the identity), else the input shape a first reshaping layer
            records (``MultiScale.event_shape``), else unknown (then not checked here).
            ``models.build`` records it for every model.
        context_features: K > 0 makes the flow conditional, p(x | c): every method then takes
            ``context`` ``(B, K)``, one row per example (``sample(n, context=c)`` draws one
            sample per row of c; a single row is shared by all n).
        context_encoder: an optional network ``(B, K) -> (B, K')`` applied to the context
            before the layers see it, trained with them.
    Shape:
        x: ``(B, *event_shape)``; log_prob -> ``(B,)``; sample(shape) -> ``(*shape, *event_shape)``;
        latent z: ``(B, *latent_shape)``.
    """

    def __init__(
        self,
        transform: Transform,
        base: nn.Module,
        event_shape: tuple[int, ...] | None = None,
        context_features: int = 0,
        context_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.transform = transform
        self.base = base
        self.context_features = int(context_features)
        self.context_encoder = context_encoder
        if isinstance(event_shape, int):
            event_shape = (event_shape,)
        if event_shape is None:
            self._event_shape = _infer_event_shape(transform, base)
        else:
            self._event_shape = torch.Size(event_shape)

    @property
    def event_shape(self) -> torch.Size | None:
        """Shape of one data sample, e.g. ``(D,)`` or ``(C, H, W)``; ``None`` if unknown."""
        return self._event_shape

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the flow's parameters and buffers (``flow.double()`` makes it
        float64); the default dtype for a flow with none."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    @property
    def latent_shape(self) -> torch.Size | None:
        """Shape of one latent sample: the base's event shape (``(C * H * W,)`` for multi-scale)."""
        shape = getattr(self.base, "event_shape", None)
        return torch.Size(shape) if shape is not None else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``, ``(B, *latent_shape)`` and ``(B,)``."""
        x = self._input(x, self._event_shape, "data")
        if x.shape[0] == 0 and self.latent_shape is not None:
            return x.new_zeros((0, *self.latent_shape)), x.new_zeros(0)
        return self.transform(x, self.encoded_context(context, len(x)))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)``, ``(B, *event_shape)`` and ``(B,)``."""
        z = self._input(z, self.latent_shape, "latent")
        if z.shape[0] == 0 and self._event_shape is not None:
            return z.new_zeros((0, *self._event_shape)), z.new_zeros(0)
        return self.transform.inverse(z, self.encoded_context(context, len(z)))

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density of ``x`` ``(B, *event_shape)`` in nats, ``(B,)``, in the flow's
        dtype (any real input is cast to it: float64 from numpy, integer levels of images).
        As in ``torch.distributions``, ``x`` of any batch shape ``(*S, *event_shape)`` (what
        ``sample(S)`` returns; one event is ``S = ()``) gives ``(*S,)``, with a context of one
        row, ``(*S, K)`` or ``(prod S, K)``."""
        x = x if isinstance(x, Tensor) else torch.as_tensor(x)
        if (batch := self._batch_shape(x)) is not None:
            if context is not None and (context := torch.as_tensor(context)).dim() > 2:
                context = context.reshape(-1, context.shape[-1])
            events = x.reshape(math.prod(batch), *cast(torch.Size, self._event_shape))
            return self.log_prob(events, context).reshape(batch)
        x = self._input(x, self._event_shape, "data")
        if x.shape[0] == 0:
            return x.new_zeros(0)
        z, logabsdet = self.transform(x, self.encoded_context(context, len(x)))
        return cast("_Distribution", self.base).log_prob(z) + logabsdet

    def _batch_shape(self, x: Tensor) -> torch.Size | None:
        """The batch shape ``S`` of ``x`` ``(*S, *event_shape)`` when it is not one batch
        dimension, else None (a single batch dimension, or an event shape not known)."""
        if self._event_shape is None:
            return None
        shape, event = x.shape, self._event_shape
        if len(shape) == len(event) + 1 or len(shape) < len(event) or shape[len(shape) - len(event) :] != event:
            return None  # the usual (B, *event_shape), or a shape _check refuses
        return shape[: len(shape) - len(event)]

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""``-log p(x) / (D ln 2)`` per sample, ``(*S,)`` for ``x`` ``(*S, *event_shape)``;
        D = elements per sample."""
        x = x if isinstance(x, Tensor) else torch.as_tensor(x)
        dims = math.prod(self._event_shape) if self._event_shape is not None else math.prod(x.shape[1:])
        return -self.log_prob(x, context) / (dims * math.log(2))

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Rows ``(B, D + K)`` of data and context side by side, the context in the last K
        columns (as clayflow orders a conditional run's rows; a file's columns are in its own
        order, so choose those by name), split into ``(x (B, D), context (B, K))``; images ``(B, C + 1, H, W)``
        whose last channel holds a class index (constant over the image) into ``(x (B, C, H,
        W), one-hot context (B, K))``; an unconditional flow's rows are its data, ``(rows, None)``.

        >>> from clayflow import models
        >>> x, c = models.maf(2, context_features=1).split_rows(torch.zeros(5, 3))
        >>> x.shape, c.shape
        (torch.Size([5, 2]), torch.Size([5, 1]))
        """
        if not self.context_features:
            return rows, None
        if rows.dim() == 4:
            labels = rows[:, -1, 0, 0].long()
            return rows[:, :-1], torch.nn.functional.one_hot(labels, self.context_features).to(self.dtype)
        return rows[:, : -self.context_features], rows[:, -self.context_features :]

    def encoded_context(self, context: Tensor | None, rows: int) -> Tensor | None:
        """The context the layers see for a batch of ``rows``: checked ``(rows, K)`` (a single
        row is repeated), cast to the flow's dtype, and encoded; None for an unconditional flow."""
        if not self.context_features:
            if context is not None:
                raise ClayflowError("this flow is not conditional: it takes no context")
            return None
        if context is None:
            raise ClayflowError(f"this flow is conditional, p(x | c): pass context=... of shape (B, {self.context_features})")
        context = torch.as_tensor(context)
        if context.dim() == 1 and self.context_features == len(context):
            context = context[None]
        if context.dim() != 2 or context.shape[1] != self.context_features or len(context) not in (1, rows):
            raise EventShapeError(
                f"this flow's context has shape ({rows}, {self.context_features}) for {rows} examples "
                f"(or one row for all), got a tensor of shape {tuple(context.shape)}"
            )
        context = context.to(self.dtype).expand(rows, -1)
        return self.context_encoder(context) if self.context_encoder is not None else context

    def _input(self, t: Tensor, shape: torch.Size | None, what: str) -> Tensor:
        """``t`` checked against ``shape`` and cast to the flow's dtype, as a user of torch
        expects from a model fed ``torch.from_numpy`` (float64) or image levels (integers); a
        NumPy array or nested list is taken as ``torch.as_tensor`` takes it (as a context is)."""
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t)
        self._check(t, shape, what)
        if isinstance(t, Tensor) and not t.is_complex() and t.dtype != (dtype := self.dtype):
            t = t.to(dtype)
        return t

    @staticmethod
    def _check(t: Tensor, shape: torch.Size | None, what: str) -> None:
        if shape is None or not isinstance(t, Tensor):
            return
        if t.dim() != len(shape) + 1 or t.shape[1:] != shape:
            expected = "(B, " + ", ".join(str(s) for s in shape) + ")"
            raise EventShapeError(
                f"this flow's {what} have shape {expected}, got a tensor of shape {tuple(t.shape)}"
            )

    def rsample(
        self, sample_shape: SampleShape = (), temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        """Samples of shape ``(*sample_shape, *event_shape)``, differentiable w.r.t. the
        parameters (as ``torch.distributions``: ``rsample((3,))``; an int ``n`` is ``(n,)``);
        base draws are scaled by ``temperature``."""
        if not (math.isfinite(temperature) and temperature >= 0):  # 0: every draw the image of the base's mode
            raise TemperatureError(f"temperature must be a finite number >= 0, got {temperature}")
        shape = self._sample_shape(sample_shape, context)
        z = cast("_Distribution", self.base).sample(math.prod(shape), temperature)
        x, _ = self.inverse(z, context)
        return x.reshape(*shape, *x.shape[1:])

    @torch.no_grad()
    def sample(
        self, sample_shape: SampleShape = (), temperature: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        """Samples of shape ``(*sample_shape, *event_shape)`` with no graph (as
        ``torch.distributions.Distribution.sample``; an int ``n`` is ``(n,)``).

        ``temperature`` < 1 scales the base draws towards the mode (Glow's reduced
        temperature); 1 is the model itself.
        """
        return self.rsample(sample_shape, temperature, context)

    def sample_and_log_prob(
        self, sample_shape: SampleShape = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their model log-density in one inverse pass: ``(x, log p(x))``, shaped
        ``(*sample_shape, *event_shape)`` and ``sample_shape``."""
        shape = self._sample_shape(sample_shape, context)
        n = math.prod(shape)
        z = cast("_Distribution", self.base).sample(n)
        x, logabsdet = self.inverse(z, context)
        log_prob = logabsdet if n == 0 else cast("_Distribution", self.base).log_prob(z) - logabsdet
        return x.reshape(*shape, *x.shape[1:]), log_prob.reshape(shape)

    def _sample_shape(self, sample_shape: SampleShape, context: Tensor | None) -> tuple[int, ...]:
        """The samples' batch shape: ``sample_shape``, or with a context and no shape one
        sample per context row."""
        if context is not None and sample_shape == () and torch.as_tensor(context).dim() == 2:
            return (len(context),)
        return _sample_shape(sample_shape)

    # Unlike nn.Module.compile(*args, **kwargs) -> None, which compiles __call__: keywords, returns the flow.
    def compile(self, **options: Any) -> Flow:  # type: ignore[override]
        """Compile ``forward``, ``inverse`` and ``log_prob`` with ``torch.compile(**options)``,
        in place; ``sample``, ``rsample`` and ``sample_and_log_prob`` use the compiled inverse.

        Same numbers as eager up to float rounding (fused kernels may sum in another order).
        The first call of each method compiles it (seconds to a minute); a new batch size, or
        switching between train and eval mode, compiles again. Weights, state dicts and
        checkpoints are unaffected. Returns the flow.
        """
        # Instance attributes shadowing the methods, on purpose (mypy refuses assigning to a method).
        self.forward = torch.compile(self.forward, **options)  # type: ignore[method-assign]
        self.inverse = torch.compile(self.inverse, **options)  # type: ignore[method-assign]
        self.log_prob = torch.compile(self.log_prob, **options)  # type: ignore[method-assign]
        return self


def _sample_shape(sample_shape: SampleShape) -> tuple[int, ...]:
    """``sample_shape`` as a tuple: an int ``n`` is ``(n,)``, as ``torch.distributions`` allows."""
    shape: tuple[int, ...]
    try:  # the casts: any value is tried, and a TypeError tells what it is
        shape = (operator.index(cast(SupportsIndex, sample_shape)),)  # an int, numpy's included
    except TypeError:
        try:
            shape = tuple(operator.index(n) for n in cast("Iterable[SupportsIndex]", sample_shape))
        except TypeError:
            raise ValueError(f"sample_shape must be an int or a sequence of ints, got {sample_shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"sample_shape must be non-negative, got {sample_shape!r}")
    return shape


def _infer_event_shape(transform: nn.Module, base: nn.Module) -> torch.Size | None:
    """The data's event shape when the layers tell it: the base's if none changes shapes, or the
    input shape recorded by the first one that does (``MultiScale.event_shape``); else None.
    A layer clayflow does not define may change shapes without saying so: then None (unchecked)."""
    layers = _layers(transform)
    if any(not type(layer).__module__.startswith("clayflow.") for layer in layers):
        return None
    for layer in layers:
        if _reshapes(layer):
            shape = getattr(layer, "event_shape", None)
            return torch.Size(shape) if shape is not None else None
    shape = getattr(base, "event_shape", None)
    return torch.Size(shape) if shape is not None else None


def _layers(transform: nn.Module) -> list[nn.Module]:
    """The layers of nested ``Compose``s, data side first."""
    if isinstance(transform, Compose):
        return [layer for t in transform for layer in _layers(t)]
    return [transform]


def _reshapes(layer: nn.Module) -> bool:
    """Whether ``layer`` may change event shapes: it overrides ``Transform.output_shape``."""
    if isinstance(layer, Inverse):
        return any(_reshapes(t) for t in _layers(layer.transform))
    return getattr(type(layer), "output_shape", None) is not Transform.output_shape

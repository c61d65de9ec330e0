r"""The transform protocol shared by every layer of every flow.

Direction convention (the one place it is stated; everything in clayflow keeps it):

* ``forward(x) -> (z, logabsdet)`` maps **data -> latent** (the normalizing direction) and
  returns ``log|det dz/dx|`` per sample;
* ``inverse(z) -> (x, logabsdet)`` maps **latent -> data** and returns ``log|det dx/dz|``,
  which is minus the forward one at the same point.

A flow then scores data by the change of variables
``log p(x) = log p_base(f(x)) + log|det df/dx|``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, cast

from torch import Tensor, nn


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.sum(dim=1) if t.dim() == 2 else t.reshape(t.shape[0], -1).sum(dim=1)


class Transform(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement both directions. ``context`` is an optional conditioning tensor
    ``(B, K)``; transforms that do not use it ignore it.

    Shape:
        x: ``(B, *event_shape)`` -> z of the same shape (reshaping transforms say otherwise),
        logabsdet ``(B,)``.
    """

    if TYPE_CHECKING:
        # For type checkers only: calling a transform runs ``forward`` (through nn.Module's
        # untyped ``__call__``, which stays the one used at run time).
        def __call__(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    # A container: its forward calls the transforms it holds (their forward) and its log-det is
    # the sum of theirs, nothing of its own; the diagnostics look inside it for the layers.
    composite: ClassVar[bool] = False

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``, z like x (or of ``output_shape``), the
        log-det ``(B,)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)``, minus the forward log-det at that x."""
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The event shape ``forward`` returns for inputs of event ``shape`` (no batch dim)."""
        return tuple(shape)


class Compose(Transform):
    """Transforms applied in the order listed (data -> latent); log-dets add.

    ``inverse`` runs them in reverse order. ``Compose(a, b)(x) == b(a(x))``, unlike TFP's
    ``Chain``. Indexable: ``compose[0]`` is the first (data-side) transform.
    """

    composite = True

    def __init__(self, *transforms: Transform):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def __getitem__(self, index: int) -> Transform:
        return cast(Transform, self.transforms[index])

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(cast("Iterable[Transform]", self.transforms))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logabsdet = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, ladj = transform(x, context)
            logabsdet = logabsdet + ladj
        return x, logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logabsdet = z.new_zeros(z.shape[0])
        for transform in reversed(cast("Sequence[Transform]", self.transforms)):
            z, ladj = transform.inverse(z, context)
            logabsdet = logabsdet + ladj
        return z, logabsdet

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for transform in cast("Iterable[Transform]", self.transforms):
            shape = transform.output_shape(shape)
        return tuple(shape)


class Inverse(Transform):
    """The inverse of a transform: its ``forward`` is the wrapped ``inverse`` and vice versa."""

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, context)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.transform.output_shape(shape) != tuple(shape):
            raise NotImplementedError("the output shape of an inverted reshaping transform is not inferred")
        return tuple(shape)


def identity_logabsdet(x: Tensor) -> Tensor:
    """A zero log-det ``(B,)`` on ``x``'s device and dtype, for volume-preserving maps."""
    return x.new_zeros(x.shape[0])


def per_feature(values: Tensor, like: Tensor) -> Tensor:
    """View a ``(C,)`` tensor so it broadcasts over dim 1 of ``like`` (``(B, C)`` or ``(B, C, H, W)``)."""
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def positions_per_feature(x: Tensor) -> int:
    """Elements per feature in one sample: 1 for ``(B, D)``, ``H * W`` for ``(B, C, H, W)``."""
    return x[0].numel() // x.shape[1]

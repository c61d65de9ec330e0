"""The order in which training examples are drawn, as checkpointable state, and the batches
drawn in that order from a tensor or from a ``torch.utils.data.Dataset``."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from clayflow.data import example


class BatchSampler:
    """Shuffled epochs over ``n`` examples from a private generator; the last partial batch
    of an epoch is dropped. Its state (generator, order, position) is checkpointed."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.generator)
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        indices = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return indices

    def state_dict(self) -> dict[str, Any]:
        # ``order`` is replaced, never changed in place, so the reference stays this state's.
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.position = state["position"]


Examples = Tensor | Dataset  # a tensor (N, *event_shape), or a map-style dataset of examples


def head(examples: Examples, n: int) -> Examples:
    """The first ``n`` examples (all if fewer)."""
    return examples[:n] if isinstance(examples, Tensor) else Subset(examples, range(min(n, len(examples))))


def chunks(
    examples: Examples, size: int, loader_options: dict[str, Any] | None = None, which: Sequence[int] | None = None
) -> Iterator[Tensor]:
    """``examples`` in order, ``size`` at a time (chunk k holds examples ``[k * size, (k + 1)
    * size)``; ``which``: only those chunks): tensor slices, or the batches of a loader with
    ``loader_options`` (workers; its private generator leaves torch's stream alone)."""
    n = len(examples)
    which = range(math.ceil(n / size)) if which is None else which
    if isinstance(examples, Tensor):
        for k in which:
            yield examples[k * size : (k + 1) * size]
        return
    batches = [list(range(k * size, min((k + 1) * size, n))) for k in which]
    loader = DataLoader(examples, batch_sampler=batches, generator=torch.Generator(), **(loader_options or {}))
    for batch in loader:
        yield example(batch)


class TrainingBatches:
    """Training batches in ``BatchSampler`` order, in ``dtype`` (the flow's: float32, or float64
    for a flow made ``.double()``) on ``device``.

    From a tensor, by indexing (moved to ``device`` once). From a map-style ``Dataset`` (data
    that need not fit in memory), through a ``DataLoader`` with ``loader_options`` (workers)
    whose batches are the sampler's: the loader reads ahead, so the state that ``state_dict``
    returns is the sampler's as it was after the last batch *taken*, and a resumed run draws
    the same batches as an uninterrupted one. (Random augmentations drawn in worker processes
    restart their streams on resume; drawn in this process, they are in torch's checkpointed
    stream.)
    """

    def __init__(
        self,
        examples: Examples,
        batch_size: int,
        seed: int,
        device: torch.device,
        loader_options: dict[str, Any] | None = None,
        part: slice = slice(None),
        dtype: torch.dtype = torch.float32,
    ):
        self.sampler = BatchSampler(len(examples), batch_size, seed)
        self.dtype = dtype
        self.part = part  # this process's slice of each global batch (``distributed.Processes.slice``)
        self.device, self.seed = device, seed
        self.examples = examples.to(device) if isinstance(examples, Tensor) else examples
        self.loader_options = loader_options or {}
        self._loader: Iterator | None = None
        self._pending: deque[dict[str, Any]] = deque()  # sampler states of batches read ahead
        self._taken: dict[str, Any] | None = None

    def next(self) -> Tensor:
        """The next batch ``(batch_size, *event_shape)``."""
        if isinstance(self.examples, Tensor):
            return self.examples[self.sampler.next()[self.part].to(self.examples.device)].to(self.dtype)
        if self._loader is None:
            loader = DataLoader(  # a private generator: the loader's seed draw leaves torch's stream alone
                self.examples,
                batch_sampler=self._indices(),
                generator=torch.Generator().manual_seed(self.seed),
                **self.loader_options,
            )
            self._loader = iter(loader)
        batch = example(next(self._loader))
        self._taken = self._pending.popleft()
        return batch.to(self.device, self.dtype)

    def _indices(self) -> Iterator[list[int]]:
        """The sampler's batches, as the loader asks for them (in this process)."""
        while True:
            indices = self.sampler.next()[self.part].tolist()
            self._pending.append(self.sampler.state_dict())
            yield indices

    def state_dict(self) -> dict[str, Any]:
        return self._taken if self._taken is not None else self.sampler.state_dict()

    def close(self) -> None:
        """Stop the loader's workers (its iterator is referenced here only)."""
        self._loader = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._loader, self._taken = None, None
        self._pending.clear()

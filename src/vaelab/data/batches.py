"""Mini-batches straight from in-memory tensors, in place of a DataLoader.

The data sets here fit in (GPU) memory, so a batch is one gather with an
index slice: no per-sample ``__getitem__``, no collate, no worker processes.
That is what makes small-image VAE training GPU-bound instead of Python-bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

# Odd 64-bit constant (golden ratio) used to spread run seeds apart before the
# epoch is added, so that (seed, epoch + 1) and (seed + 1, epoch) give
# unrelated permutations; DistributedSampler's plain seed + epoch does not.
_SEED_MIX = 0x9E3779B97F4A7C15


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's permutation."""
    return (seed * _SEED_MIX + epoch) % 2**63


class TensorBatches:
    """Iterable of ``(images[idx], labels[idx])`` batches over tensors of equal length.

    Each iteration uses one permutation (``shuffle=True``) or the natural order,
    made on the tensors' device from a generator seeded by ``seed`` and the
    epoch: ``epoch_fn()`` when given (e.g. the trainer's current epoch, so a
    resumed run sees the same order), otherwise a counter of iterations.

    With ``world_size > 1``, rank ``r`` takes positions ``r, r + world_size, ...``
    of the order. With ``pad=True`` (training) the order is padded by wrapping
    around to a multiple of ``world_size`` as ``DistributedSampler`` does, so every
    rank yields the same number of batches (gradient all-reduces need that); with
    ``pad=False`` (evaluation) every sample is seen exactly once, and ranks may
    differ by one sample. All ranks must use the same seed and the same device type.
    ``batch_size`` is per rank; ``drop_last`` drops a rank's final short batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if images.device != labels.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch_fn = epoch_fn
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = bool(pad)
        self._iterations = 0

    @property
    def samples_per_rank(self) -> int:
        n = self.images.shape[0]
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``, on the tensors' device."""
        n, device = self.images.shape[0], self.images.device
        if self.shuffle:
            generator = torch.Generator(device=device)
            generator.manual_seed(epoch_seed(self.seed, epoch))
            indices = torch.randperm(n, generator=generator, device=device)
        else:
            indices = torch.arange(n, device=device)
        if self.world_size == 1:
            return indices
        if not self.pad:
            return indices[self.rank :: self.world_size]
        total = self.samples_per_rank * self.world_size
        if total > n:
            indices = indices.repeat(math.ceil(total / n))[:total]
        return indices[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the epoch is read at the first next(), not at iter(), so
        # an iter() made early (Lightning probes loaders this way) is harmless.
        if self.epoch_fn is not None:
            epoch = int(self.epoch_fn())
        else:
            epoch = self._iterations
            self._iterations += 1
        indices = self.order(epoch)
        stop = len(self) * self.batch_size if self.drop_last else indices.shape[0]
        for start in range(0, stop, self.batch_size):
            batch = indices[start : start + self.batch_size]
            # index_select: ~3x faster than images[batch] on CPU, same result.
            yield self.images.index_select(0, batch), self.labels.index_select(0, batch)

    def __repr__(self) -> str:
        return (
            f"TensorBatches(n={self.images.shape[0]}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"rank={self.rank}/{self.world_size}, batches={len(self)})"
        )

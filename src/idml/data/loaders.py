"""Batch iterators with a per-epoch, seeded order that can be sharded over DDP ranks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler, Sampler


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> Tensor:
    """The sample order of one epoch: a permutation determined by (seed, epoch) alone."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class InMemoryLoader:
    """Batches of (uint8 images, labels) from tensors already on the training device.

    Training order: shuffled per epoch, each rank takes an equal, disjoint share (the remainder
    of ``n / world_size`` is left out, as DDP needs the same step count on every rank), and a
    final batch of a single image is dropped (BatchNorm cannot train on it). Evaluation order:
    sequential, each sample on exactly one rank.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, *, train: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch ``epoch`` from batch ``start_step`` on (a resumed run skips what it did)."""
        self.epoch, self.start_step = epoch, start_step

    def _indices(self) -> Tensor:
        order = epoch_order(len(self.labels), self.seed, self.epoch, shuffle=self.train)
        if self.train:
            order = order[: len(order) // self.world_size * self.world_size]
        return order[self.rank :: self.world_size]

    def _num_samples(self) -> int:
        n = len(self.labels)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def _epoch_steps(self) -> int:
        n = self._num_samples()
        if self.train and n % self.batch_size == 1 and n > 1:
            n -= 1
        return math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        """The batches still to come in this epoch."""
        return max(self._epoch_steps() - self.start_step, 0)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        indices = self._indices().to(self.labels.device)
        for step in range(self.start_step, self._epoch_steps()):
            idx = indices[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


class ShardSampler(Sampler[int]):
    """Sequential evaluation sampler: every sample on exactly one rank, none repeated."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Wraps a ``DistributedSampler``: yields (epoch, index) and can start inside an epoch.

    The epoch travels with each index to the DataLoader's workers, where it seeds that sample's
    augmentation (see ``data.imagenet.SeededImages``); skipping whole batches keeps the batch
    boundaries of an uninterrupted epoch. A final batch of a single image is left out, as the
    in-memory loader does (BatchNorm over a batch of one fails in some backbones' heads).
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, start_step * self.batch_size

    def _usable(self) -> int:
        n = len(self.sampler)
        return n - 1 if n > 1 and n % self.batch_size == 1 else n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = itertools.islice(iter(self.sampler), self.skip, self._usable())
        return ((self.epoch, index) for index in indices)

    def __len__(self) -> int:
        return max(self._usable() - self.skip, 0)

"""Batch iterators with a per-epoch, seeded order that can be sharded over DDP ranks.

Two kinds: :class:`InMemoryLoader` over tensors already on the training device, and DataLoaders
over datasets decoded in worker processes (:func:`stream_loaders`), whose samples are augmented
under a seed of their own (:class:`SeededImages`), so that both resume exactly.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from idml.data.image_files import SKIP_HINT, UnusableImage, unusable
from idml.errors import DataError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from idml.data.types import DataRequest

#: most worker processes chosen automatically per training process (each holds the file list)
MAX_AUTO_WORKERS = 16


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

    def largest_batch(self) -> int:
        """The size of this rank's largest batch (below ``batch_size`` when the split is smaller)."""
        return min(self.batch_size, self._num_samples())

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
    augmentation (see :class:`SeededImages`); skipping whole batches keeps the batch
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


class SeededImages(Dataset):
    """A dataset of images whose augmentation is a function of (seed, epoch, sample index).

    ``images`` is a map-style dataset with a ``samples`` list of (name, label) pairs (a
    torchvision ``ImageFolder``, or :class:`idml.data.user.StreamedImages`). Each sample's
    transform runs under its own torch seed, so the draws do not depend on which worker process
    decodes it, how many workers there are, or where a resumed run restarted. Keys are
    ``(epoch, index)`` pairs (see :class:`ResumableSampler`) or plain indices. With ``skip_bad``, an
    unreadable image yields None (dropped by :func:`collate_readable`) and a one-line warning
    with the running count.
    """

    def __init__(self, images: Dataset, seed: int, skip_bad: bool) -> None:
        self.images, self.seed, self.skip_bad = images, seed, skip_bad
        self.skipped = multiprocessing.Value("i", 0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed costs ~0.3 ms
                return self.images[index]
        except DataError as exc:
            if not self.skip_bad and isinstance(exc, UnusableImage):  # refused by a transform: name the file
                raise unusable(self.images.samples[index][0], exc, SKIP_HINT) from exc
            if not self.skip_bad:
                raise
            self.note_skipped(self.images.samples[index][0])
            return None

    def note_skipped(self, path: str) -> None:
        """Count an unreadable image skipped (by a worker, or by the GPU path's decoder in the
        training process) and say so in one warning line with the running count."""
        with self.skipped.get_lock():
            self.skipped.value += 1
            count = self.skipped.value
        print(f"idml: warning: skipped unreadable image {path} ({count} so far)", file=sys.stderr, flush=True)


def collate_readable(batch: list) -> Any:
    """The samples that could be read, collated: image tensors by ``default_collate``, anything else
    (the GPU path's encoded files) by the sample type's own ``collate``."""
    readable = [sample for sample in batch if sample is not None]
    if not readable:
        raise DataError("every image of a batch was unreadable (--skip_bad_images); check the data folder")
    first = readable[0][0]
    if isinstance(first, Tensor):
        return default_collate(readable)
    images, labels = zip(*readable, strict=True)
    return type(first).collate(list(images)), default_collate(list(labels))


def default_workers() -> int:
    """``-j`` when not given: the CPU cores this process may use (``os.sched_getaffinity``), shared by
    the processes torchrun started on this machine, less one for the training process itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(1, min(cores // local_processes - 1, MAX_AUTO_WORKERS))


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` reaches its sampler (reshuffles like the in-memory loader)."""

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch, start_step)

    def largest_batch(self) -> int:
        """The size of this rank's largest batch (below ``batch_size`` when the split is smaller)."""
        return min(self.batch_size, len(self.sampler))


def stream_loaders(train_set: SeededImages, test_set: SeededImages, req: DataRequest, device: torch.device,
                   drop_single: bool = False) -> tuple[EpochDataLoader, EpochDataLoader]:
    """DataLoaders over datasets decoded in worker processes (resumable, sharded over ranks).

    ``drop_single``: leave out a last training batch of one image (BatchNorm cannot train on it).
    """
    workers = default_workers() if req.workers is None else req.workers
    common = {
        "batch_size": req.batch_size,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "collate_fn": collate_readable,
    }
    shuffled = DistributedSampler(
        train_set, num_replicas=req.world_size, rank=req.rank, shuffle=True, seed=req.seed, drop_last=True
    )
    drop_last = drop_single and len(shuffled) % req.batch_size == 1
    train = EpochDataLoader(train_set, sampler=ResumableSampler(shuffled, req.batch_size), drop_last=drop_last,
                            **common)
    test = EpochDataLoader(test_set, sampler=ShardSampler(len(test_set), req.rank, req.world_size), **common)
    return train, test

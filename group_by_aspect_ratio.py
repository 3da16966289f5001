"""Batches of images with similar shapes: less padding, so less wasted compute and memory.

The model pads every image of a batch to the largest height and width in it, so a
portrait photo batched with a landscape one costs almost twice its size. Images are put
in groups by aspect ratio (read from file headers, no image is decoded) and each batch
is drawn from one group, as torchvision's references do.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterator, Sized

import numpy as np
import torch


def height_and_width(dataset: torch.utils.data.Dataset, index: int) -> tuple[int, int]:
    """An image's size without decoding it where the dataset knows how (get_height_and_width)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if hasattr(dataset, "get_height_and_width"):
        return dataset.get_height_and_width(index)
    image = dataset[index][0]  # a dataset of your own without the method: decode it once
    return int(image.shape[-2]), int(image.shape[-1])


def aspect_ratio_groups(dataset: torch.utils.data.Dataset, factor: int) -> list[int]:
    """A group id per image: its width / height, in 2 * factor + 2 bins evenly spaced in log2 from 1/2 to 2."""
    bins = (2 ** np.linspace(-1, 1, 2 * factor + 1)).tolist() if factor > 0 else [1.0]
    groups = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        height, width = height_and_width(dataset, index)
        groups.append(bisect.bisect_right(bins, width / height))
    return groups


class GroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of `batch_size` indices from one group each, every index of `sampler` exactly once.

    Indices come in the sampler's order (shuffled, and sharded under DDP); a batch is
    yielded as soon as one group holds `batch_size` of them. What is left at the end
    (fewer than `batch_size` per group) is yielded group by group, mixing groups only to
    fill a batch. An epoch therefore always has ceil(len(sampler) / batch_size) batches,
    the same number on every rank, which DDP needs.
    """

    def __init__(self, sampler: Sized, group_ids: list[int], batch_size: int) -> None:
        self.sampler = sampler
        self.group_ids = group_ids
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buckets: defaultdict[int, list[int]] = defaultdict(list)
        for index in self.sampler:  # type: ignore[attr-defined]
            bucket = buckets[self.group_ids[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket.copy()
                bucket.clear()
        leftovers = [index for group in sorted(buckets) for index in buckets[group]]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class NoSingleImageBatch(torch.utils.data.Sampler[list[int]]):
    """The batches of `batches`, but a last batch of one image joins the batch before it: BatchNorm that trains
    cannot normalise one image's 1 x 1 feature maps (SSDlite's last layers)."""

    def __init__(self, batches: torch.utils.data.Sampler[list[int]]) -> None:
        self.batches = batches
        self.sampler = batches.sampler  # type: ignore[attr-defined]  (train.py calls its set_epoch)
        size, count = batches.batch_size, len(self.sampler)  # type: ignore[attr-defined, arg-type]
        self.joins = size > 1 and count > size and count % size == 1

    def __iter__(self) -> Iterator[list[int]]:
        held = None
        for batch in self.batches:
            if held is not None and len(batch) == 1:
                batch, held = held + batch, None
            if held is not None:
                yield held
            held = batch
        if held is not None:
            yield held

    def __len__(self) -> int:
        return len(self.batches) - int(self.joins)  # type: ignore[arg-type]


def training_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    group_factor: int,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
    single_images: bool = True,
) -> torch.utils.data.Sampler[list[int]]:
    """train.py's batches: a seeded shuffle (call .sampler.set_epoch each epoch), this rank's share of it,
    grouped by aspect ratio unless `group_factor` is negative. One process is num_replicas=1. Without
    `single_images`, a last batch of one image joins the one before it (NoSingleImageBatch)."""
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
    if group_factor < 0:
        batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    else:
        batches = GroupedBatchSampler(sampler, aspect_ratio_groups(dataset, group_factor), batch_size)
    return batches if single_images else NoSingleImageBatch(batches)

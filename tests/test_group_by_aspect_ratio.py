import math

import pytest
import torch
from conftest import LAYOUT

import dataset
from group_by_aspect_ratio import GroupedBatchSampler, aspect_ratio_groups, training_batches


def _batches(num_images, group_ids, batch_size, num_replicas=1, rank=0, epoch=0):
    sampler = torch.utils.data.DistributedSampler(range(num_images), num_replicas=num_replicas, rank=rank, seed=0)
    sampler.set_epoch(epoch)
    batch_sampler = GroupedBatchSampler(sampler, group_ids, batch_size)
    return list(batch_sampler), len(batch_sampler), list(sampler)


@pytest.mark.parametrize("num_images,batch_size", [(10, 2), (11, 4), (3, 8), (37, 3)])
def test_every_index_once_and_the_promised_number_of_batches(num_images, batch_size):
    group_ids = [i % 3 for i in range(num_images)]
    batches, length, indices = _batches(num_images, group_ids, batch_size)
    assert length == len(batches) == math.ceil(num_images / batch_size)
    assert sorted(i for batch in batches for i in batch) == sorted(indices) == list(range(num_images))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert sum(len(batch) < batch_size for batch in batches) <= 1  # only the last may be short


def test_batches_hold_one_group_except_the_leftovers():
    group_ids = [i % 2 for i in range(40)]  # two groups of 20
    batches, _, _ = _batches(40, group_ids, 4)
    mixed = [batch for batch in batches if len({group_ids[i] for i in batch}) > 1]
    assert len(batches) == 10 and mixed == []  # 20 divides by 4: no leftovers, nothing mixed
    batches, _, _ = _batches(42, [i % 3 for i in range(42)], 4)  # 14 per group: 2 left in each
    assert sum(len({i % 3 for i in batch}) > 1 for batch in batches) <= 2


def test_every_rank_takes_the_same_number_of_steps():
    group_ids = [0] * 13 + [1] * 2  # skewed groups: the shards differ in their group mix
    steps = [_batches(15, group_ids, 2, num_replicas=2, rank=rank, epoch=1)[1] for rank in (0, 1)]
    lengths = [len(_batches(15, group_ids, 2, num_replicas=2, rank=rank, epoch=1)[0]) for rank in (0, 1)]
    assert steps == lengths == [4, 4]


def test_groups_come_from_file_headers_without_decoding(pennfudan, monkeypatch):
    data = dataset.PennFudanDataset(pennfudan)
    monkeypatch.setattr(dataset, "read_image", lambda *a: pytest.fail("an image was decoded to group it"))
    subset = torch.utils.data.Subset(data, [0, 1, 2, 5])
    groups = aspect_ratio_groups(subset, factor=3)
    ratios = [LAYOUT[i][1] / LAYOUT[i][0] for i in (0, 1, 2, 5)]  # width / height: 1.33, 0.86, 1.17, 0.83
    assert groups[0] > groups[2] > groups[1] >= groups[3]
    assert aspect_ratio_groups(subset, factor=0) == [int(r >= 1) for r in ratios]  # portrait / landscape


@pytest.mark.parametrize(("count", "sizes"), [(7, [2, 2, 3]), (6, [2, 2, 2]), (5, [2, 3]), (1, [1])])
@pytest.mark.parametrize("group_factor", [-1, 3])
def test_a_last_batch_of_one_image_joins_the_one_before_it(count, sizes, group_factor):
    # SSDlite's BatchNorm cannot train on one image: its batches never hold one (unless there is one image).
    dataset = [(torch.zeros(3, 10, 10 + k), {}) for k in range(count)]  # (image, target) pairs of several shapes
    batches = training_batches(dataset, 2, group_factor, seed=0, single_images=False)
    batches.sampler.set_epoch(1)
    drawn = list(batches)
    assert sorted(len(batch) for batch in drawn) == sorted(sizes) and len(batches) == len(sizes)
    assert sorted(index for batch in drawn for index in batch) == list(range(count))  # each image once
    assert any(len(batch) == 1 for batch in training_batches(dataset, 2, group_factor, 0)) == (count % 2 == 1)

"""--classes and --val_split on the in-memory datasets, and the blended images' ground truth."""

import numpy as np
import pytest
import torch

from child import in_child
from expect import one_line_message
from idml.config import parse_train_args
from idml.data.blends import blend_pairs
from idml.data.build import build_data, load_in_memory
from idml.data.catalog import parse_classes
from idml.data.splits import keep_classes, select_classes, split_validation, stratified_indices
from idml.data.types import DataRequest
from idml.errors import ConfigError, DataError

CPU = torch.device("cpu")
TRAIN_FLAGS = ["--dataset", "digits", "--net_type", "resnet", "--depth", "8"]


@pytest.mark.parametrize(("spec", "expected"), [("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]),
                                                ("7,0-2", [7, 0, 1, 2]), (" 5 - 6 ", [5, 6])])
def test_parse_classes(spec, expected):
    assert parse_classes(spec, 10) == expected


@pytest.mark.parametrize(("spec", "fragment"), [("4-0", "backwards"), ("0-12", "class 12 does not exist"),
                                                ("a", "ranges and lists"), ("3", "at least 2"), ("1,1", "twice"),
                                                ("", "ranges and lists"), ("0-", "ranges and lists")])
def test_parse_classes_refuses(spec, fragment):
    with pytest.raises(ConfigError) as info:
        parse_classes(spec, 10)
    one_line_message(info, "--classes", fragment)


@pytest.mark.parametrize("spec", ["0-5000000", "0-99999,0-5000000", "0-" + "9" * 40])
def test_a_huge_classes_range_is_refused_before_it_is_built(spec: str) -> None:
    """Without the dataset's class count (a Hugging Face dataset's is known only once it is read),
    a range is bounded by the most classes idml supports, counted before a list is built."""
    status, text, grown = in_child(lambda: parse_classes(spec))
    assert status == 0 and text.startswith("ConfigError: --classes") and "\n" not in text, text
    assert "names more classes than any dataset holds" in text and grown < 16 * 2**20, (text, grown)


def test_keep_classes_renumbers_in_the_given_order():
    images = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 3, 7])
    kept_images, kept_labels = keep_classes(images, labels, [7, 3], 10)
    assert kept_images.flatten().tolist() == [3, 7, 8, 9]
    assert kept_labels.tolist() == [1, 0, 1, 0]  # class 7 -> 0, class 3 -> 1


def test_select_classes_keeps_names_and_both_splits():
    data = load_in_memory(DataRequest("digits", "unused", 64))
    subset = select_classes(data, [5, 6, 9])
    assert subset["class_names"] == ["5", "6", "9"]
    for split in ("train", "test"):
        images, labels = subset[split]
        original = data[split][1]
        assert set(labels.tolist()) == {0, 1, 2}
        assert len(labels) == int(sum((original == c).sum() for c in (5, 6, 9)))
        # the images are the originals of those classes, in their order
        assert torch.equal(images, data[split][0][(original == 5) | (original == 6) | (original == 9)])


def test_stratified_split_is_disjoint_proportional_and_seeded():
    labels = np.repeat(np.arange(5), [100, 60, 40, 200, 20])
    kept, held = stratified_indices(labels, 0.1, seed=3)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    assert sorted(np.r_[kept, held]) == list(range(len(labels)))
    assert np.bincount(labels[held]).tolist() == [10, 6, 4, 20, 2]  # 10% of every class
    again, _ = stratified_indices(labels, 0.1, seed=3)
    other, _ = stratified_indices(labels, 0.1, seed=4)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)


def test_split_too_small_for_a_class_is_one_line():
    with pytest.raises(DataError) as info:
        stratified_indices(np.array([0, 0, 0, 1]), 0.25, seed=0)
    one_line_message(info, "--val_split")


def test_split_validation_on_digits():
    data = load_in_memory(DataRequest("digits", "unused", 64))
    split = split_validation(data, 0.1, seed=0)
    assert torch.equal(split["test"][1], data["test"][1])  # the official test split is untouched
    n_train = len(data["train"][1])
    assert len(split["train"][1]) + len(split["held_out"][1]) == n_train
    assert abs(len(split["held_out"][1]) - 0.1 * n_train) <= 1
    # no training image is also a validation image (the digits images are all distinct here)
    flat_train = {tuple(x.flatten().tolist()) for x in split["train"][0][:, 0, ::4, ::4]}
    assert not any(tuple(x.flatten().tolist()) in flat_train for x in split["held_out"][0][:, 0, ::4, ::4][:30])
    assert split_validation(data, 0.0, seed=0) is data


def test_build_data_with_classes_split_and_noise():
    bundle = build_data(DataRequest("digits", "unused", 64, seed=1, val_split=0.2, classes="0-4",
                                    label_noise=0.3), CPU)
    assert bundle.class_names == ["0", "1", "2", "3", "4"]
    assert bundle.held_out and bundle.selection is not bundle.test
    clean = build_data(DataRequest("digits", "unused", 64, seed=1, val_split=0.2, classes="0-4"), CPU)
    assert torch.equal(bundle.selection.labels, clean.selection.labels)  # validation labels stay clean
    assert (bundle.train.labels != clean.train.labels).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert set(bundle.test.labels.tolist()) == set(range(5))
    plain = build_data(DataRequest("digits", "unused", 64), CPU)
    assert not plain.held_out and plain.selection is plain.test


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--val_split", "1"], "--val_split must be a number in [0, 1)"),
    (["--val_split", "-0.1"], "--val_split must be a number in [0, 1)"),
    (["--dataset", "imagenet", "--val_split", "0.1"], "--val_split works on cifar10, cifar100, digits and folder"),
    (["--dataset", "imagenet", "--classes", "0-4"], "--classes works on the in-memory"),
    (["--classes", "0-10"], "class 10 does not exist"),
    (["--classes", "x"], "--classes"),
])
def test_train_flags_are_validated(flags, fragment):
    with pytest.raises(ConfigError) as info:
        parse_train_args([*TRAIN_FLAGS, *flags])
    one_line_message(info, fragment)


def test_blends_ground_truth():
    images = torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (0, 100, 200, 40)])
    labels = torch.tensor([0, 1, 2, 0])
    blends = blend_pairs(images, labels, 200, seed=5)
    assert (blends.first != blends.second).all()  # always two different classes
    assert blends.ambiguity.min() >= 0 and blends.ambiguity.max() <= 0.5
    assert np.allclose(blends.ambiguity, np.minimum(blends.weight, 1 - blends.weight))
    # every blend is exactly a * x_i + (1 - a) * x_j: recover a from the constant images
    value = {0: {0.0, 40.0}, 1: {100.0}, 2: {200.0}}
    blended = torch.cat(list(blends.batches(7)))  # made a batch at a time
    assert blended.shape == (200, 3, 4, 4)
    for k in range(20):
        pixel = blended[k, 0, 0, 0].item()
        a = blends.weight[k]
        candidates = [a * x + (1 - a) * y for x in value[int(blends.first[k])] for y in value[int(blends.second[k])]]
        assert min(abs(pixel - c) for c in candidates) < 1e-3
    again = blend_pairs(images, labels, 200, seed=5)
    assert torch.equal(torch.cat(list(again.batches(200))), blended) and np.array_equal(again.weight, blends.weight)
    with pytest.raises(DataError):
        blend_pairs(images[:1], labels[:1], 5, seed=0)

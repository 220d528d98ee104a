"""Partitioning a training set into a public slice and device shards, and shard files on disk."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from flnode.learning.datasets import Dataset, DatasetError, load_dataset
from flnode.learning.partition import (
    SCHEMES,
    SHARD_FORMAT,
    Partition,
    label_histogram,
    load_shard,
    partition_indices,
    save_shard,
    write_device_shards,
)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def labels(mnist: Dataset) -> np.ndarray:
    return mnist.train_labels


def small_dataset(n: int = 120, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    return Dataset("tiny", images, labels, images[:10], labels[:10], n_classes=10)


def assert_valid(p: Partition, n: int, *, capped: bool = False) -> None:
    """Sorted read-only int64 arrays, pairwise disjoint, covering all ``n`` indices unless capped."""
    parts = [p.public, *p.shards]
    for part in parts:
        assert part.dtype == np.int64
        assert not part.flags.writeable
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    everything = np.concatenate(parts)
    assert np.unique(everything).size == everything.size, "a sample is in two parts"
    assert everything.size == 0 or (everything.min() >= 0 and everything.max() < n)
    if not capped:
        assert everything.size == n, "some samples are in no part"
    assert all(s.size > 0 for s in p.shards)


def same(a: Partition, b: Partition) -> bool:
    return np.array_equal(a.public, b.public) and all(
        np.array_equal(x, y) for x, y in zip(a.shards, b.shards, strict=True)
    )


def max_class_share(labels: np.ndarray, p: Partition) -> float:
    """Mean over devices of the fraction of the device's samples in its largest class."""
    hist = np.array([label_histogram(labels, s, 10) for s in p.shards])
    return float((hist.max(axis=1) / hist.sum(axis=1)).mean())


# -- the schemes -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parts_are_disjoint_and_cover_every_sample(labels: np.ndarray, scheme: str) -> None:
    p = partition_indices(labels, 20, scheme=scheme, public_size=1000, seed=1)
    assert (p.scheme, p.seed, p.n_devices) == (scheme, 1, 20)
    assert p.public.size == 1000
    assert_valid(p, labels.size)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_same_seed_gives_the_same_partition_and_another_does_not(
    labels: np.ndarray, scheme: str
) -> None:
    a = partition_indices(labels, 10, scheme=scheme, public_size=500, seed=3)
    b = partition_indices(labels, 10, scheme=scheme, public_size=500, seed=3)
    c = partition_indices(labels, 10, scheme=scheme, public_size=500, seed=4)
    assert same(a, b)
    assert not np.array_equal(a.public, c.public)
    assert not any(np.array_equal(x, y) for x, y in zip(a.shards, c.shards, strict=True))


def test_the_public_slice_is_stratified_and_independent_of_the_device_split(
    labels: np.ndarray,
) -> None:
    p = partition_indices(labels, 10, public_size=1000, seed=5)
    exact = 1000 * np.bincount(labels) / labels.size
    assert np.all(np.abs(label_histogram(labels, p.public, 10) - exact) < 1)
    for other in (
        partition_indices(labels, 3, scheme="dirichlet", public_size=1000, seed=5),
        partition_indices(labels, 50, scheme="classes", public_size=1000, seed=5),
    ):
        assert np.array_equal(other.public, p.public)
    # Even a public slice smaller than the number of classes never takes two of one class.
    tiny = partition_indices(labels, 10, public_size=7, seed=5)
    assert label_histogram(labels, tiny.public, 10).max() == 1


def test_iid_shards_are_equal_and_balanced(labels: np.ndarray) -> None:
    p = partition_indices(labels, 7, scheme="iid", public_size=100, seed=0)
    assert max(p.sizes()) - min(p.sizes()) <= 1
    assert max_class_share(labels, p) < 0.15  # 0.112 for exactly MNIST's class frequencies


def test_dirichlet_with_small_alpha_is_skewed_and_large_alpha_is_not(labels: np.ndarray) -> None:
    skewed = partition_indices(labels, 20, scheme="dirichlet", alpha=0.1, seed=0)
    mild = partition_indices(labels, 20, scheme="dirichlet", alpha=1000.0, seed=0)
    assert max_class_share(labels, skewed) > 0.5
    assert max_class_share(labels, mild) < 0.15
    assert_valid(skewed, labels.size)


def test_dirichlet_gives_every_device_at_least_min_size(labels: np.ndarray) -> None:
    # alpha=0.01 over 100 devices leaves most devices nearly empty before the fix-up.
    p = partition_indices(labels, 100, scheme="dirichlet", alpha=0.01, min_size=50, seed=2)
    assert min(p.sizes()) >= 50
    assert_valid(p, labels.size)
    assert max_class_share(labels, p) > 0.6  # still strongly skewed after the fix-up


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_classes_scheme_gives_at_most_k_classes_per_device(labels: np.ndarray, k: int) -> None:
    p = partition_indices(labels, 30, scheme="classes", classes_per_device=k, seed=0)
    assert_valid(p, labels.size)
    for shard in p.shards:
        assert np.count_nonzero(label_histogram(labels, shard, 10)) <= k
    assert max(p.sizes()) / min(p.sizes()) < 1.5  # pieces are about equal, as in McMahan et al.


def test_the_cap_keeps_a_random_subset_of_each_shard(labels: np.ndarray) -> None:
    full = partition_indices(labels, 10, scheme="dirichlet", public_size=300, seed=9)
    capped = partition_indices(
        labels, 10, scheme="dirichlet", public_size=300, seed=9, max_samples_per_device=100
    )
    assert_valid(capped, labels.size, capped=True)
    assert np.array_equal(capped.public, full.public)
    for small, big in zip(capped.shards, full.shards, strict=True):
        assert small.size == min(100, big.size)
        assert np.isin(small, big).all()


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=200).map(
        lambda xs: np.array(xs, dtype=np.uint8)
    ),
    n_devices=st.integers(1, 12),
    scheme=st.sampled_from(SCHEMES),
    public_size=st.integers(0, 30),
    alpha=st.floats(0.01, 10.0),
    k=st.integers(1, 4),
    min_size=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_any_feasible_request_gives_a_valid_reproducible_partition(
    labels: np.ndarray,
    n_devices: int,
    scheme: str,
    public_size: int,
    alpha: float,
    k: int,
    min_size: int,
    seed: int,
) -> None:
    def make() -> Partition:
        return partition_indices(
            labels,
            n_devices,
            scheme=scheme,
            public_size=public_size,
            alpha=alpha,
            classes_per_device=k,
            min_size=min_size,
            seed=seed,
        )

    try:
        p = make()
    except ValueError:
        return  # infeasible (too few samples, devices or pieces): refused with a message
    assert_valid(p, labels.size)
    assert p.public.size == public_size
    assert same(p, make())
    if scheme == "dirichlet":
        assert min(p.sizes()) >= min_size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "dirichlet", "alpha": 0}, r"alpha must be > 0\. Got: 0"),
        ({"scheme": "dirichlet", "alpha": -1.0}, "alpha must be > 0"),
        ({"scheme": "dirichlet", "alpha": math.nan}, "alpha must be > 0"),
        ({"scheme": "dirichlet", "alpha": math.inf}, "alpha must be > 0"),
        ({"scheme": "dirichlet", "min_size": 30}, r"min_size \* n_devices must be <="),
        ({"scheme": "mcmahan"}, "scheme must be one of iid, dirichlet, classes"),
        ({"n_devices": 0}, r"n_devices must be >= 1\. Got: 0"),
        ({"n_devices": True}, "n_devices must be an integer"),
        ({"n_devices": 2.0}, "n_devices must be an integer"),
        ({"public_size": -1}, "public_size must be >= 0"),
        ({"public_size": 96}, r"public_size \+ n_devices must be <="),
        ({"seed": -1}, "seed must be >= 0"),
        ({"scheme": "classes", "classes_per_device": 0}, "classes_per_device must be >= 1"),
        ({"scheme": "classes", "n_devices": 2, "classes_per_device": 2}, "number of classes"),
        ({"max_samples_per_device": 0}, "max_samples_per_device must be >= 1"),
    ],
)
def test_bad_parameters_are_refused_with_a_clear_message(kwargs: dict, message: str) -> None:
    labels = np.arange(100) % 10
    args = {"n_devices": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        partition_indices(labels, **args)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((4, 2), dtype=np.uint8), "1-D"),
        (np.array([], dtype=np.uint8), "non-empty"),
        (np.array([0.0, 1.0]), "integers"),
        (np.array([0, -1, 2]), ">= 0"),
    ],
)
def test_bad_labels_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition_indices(labels, 1)


def test_label_histogram_counts_the_selected_labels() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2], dtype=np.uint8)
    assert label_histogram(labels, np.array([1, 3, 4, 5]), 4).tolist() == [0, 1, 3, 0]
    assert label_histogram(labels, np.array([], dtype=np.int64), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="labels must be < n_classes"):
        label_histogram(labels, np.arange(6), 2)


# -- shard files -------------------------------------------------------------------------------


def test_a_shard_round_trips_through_a_file(tmp_path: Path) -> None:
    data = small_dataset()
    path = tmp_path / "node" / "data" / "shard.safetensors"
    save_shard(path, data.train_images, data.train_labels, meta={"origin": "test"})
    shard = load_shard(path)
    assert np.array_equal(shard.images, data.train_images)
    assert np.array_equal(shard.labels, data.train_labels)
    assert dict(shard.meta) == {"origin": "test"}
    assert shard.n_classes == 10
    assert not shard.images.flags.writeable and not shard.labels.flags.writeable
    assert [p.name for p in path.parent.iterdir()] == ["shard.safetensors"]  # no temp left


def test_saving_again_replaces_the_file(tmp_path: Path) -> None:
    data = small_dataset()
    path = tmp_path / "shard.safetensors"
    save_shard(path, data.train_images, data.train_labels)
    save_shard(path, data.test_images, data.test_labels, n_classes=10)
    assert np.array_equal(load_shard(path).labels, data.test_labels)
    assert dict(load_shard(path).meta) == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": np.zeros((3, 28, 28), dtype=np.float32)}, "uint8"),
        ({"images": np.zeros((3, 32, 32), dtype=np.uint8)}, "N×28×28"),
        ({"labels": np.zeros(4, dtype=np.uint8)}, "to match the images"),
        ({"labels": np.array([0, 1, 10], dtype=np.uint8)}, "out of range"),
        ({"meta": {"flnode.format": "x"}}, "reserved"),
        ({"meta": {"n": 1}}, "str to str"),
    ],
)
def test_save_shard_refuses_bad_arguments(tmp_path: Path, change: dict, message: str) -> None:
    args = {
        "images": np.zeros((3, 28, 28), dtype=np.uint8),
        "labels": np.zeros(3, dtype=np.uint8),
        "meta": None,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        save_shard(tmp_path / "s.safetensors", args["images"], args["labels"], meta=args["meta"])
    assert not list(tmp_path.iterdir())


def _valid_shard_bytes(tmp_path: Path) -> bytes:
    data = small_dataset(20)
    save_shard(tmp_path / "valid.safetensors", data.train_images, data.train_labels)
    return (tmp_path / "valid.safetensors").read_bytes()


def _foreign(tensors: dict, metadata: dict | None = None) -> bytes:
    return safetensors.numpy.save(tensors, metadata=metadata)


_IMAGES = np.zeros((2, 28, 28), dtype=np.uint8)
_LABELS = np.zeros(2, dtype=np.uint8)
_OURS = {"flnode.format": SHARD_FORMAT, "flnode.n_classes": "10"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: b"", "not a valid safetensors file"),
        (lambda good: b"\x00" * 64, "not a valid safetensors file"),
        (lambda good: b"PK\x03\x04 this is a zip, not a shard", "not a valid safetensors file"),
        (lambda good: good[: len(good) // 2], "not a valid safetensors file"),
        (lambda good: good[:-1] + bytes([good[-1] ^ 1]), "corrupt"),  # a flipped label bit
        (lambda good: good.replace(b"flnode-shard/1", b"flnode-shard/9"), "not an flnode shard"),
        (lambda good: _foreign({"weight": np.ones((4, 4), np.float32)}), "not an flnode shard"),
        (lambda good: _foreign({"images": _IMAGES}, _OURS), "exactly 'images' and 'labels'"),
        (
            lambda good: _foreign({"images": _IMAGES, "labels": _LABELS, "x": _LABELS}, _OURS),
            "exactly 'images' and 'labels'",
        ),
        (
            lambda good: _foreign(
                {"images": _IMAGES, "labels": _LABELS}, {**_OURS, "flnode.n_classes": "ten"}
            ),
            "flnode.n_classes",
        ),
        (
            lambda good: _foreign({"images": _IMAGES.astype(np.int16), "labels": _LABELS}, _OURS),
            "uint8",
        ),
        (
            lambda good: _foreign(
                {"images": _IMAGES, "labels": np.array([3, 12], np.uint8)}, _OURS
            ),
            "out of range",
        ),
        (
            lambda good: _foreign({"images": _IMAGES, "labels": _LABELS}, _OURS),
            "corrupt",
        ),  # no hash
    ],
)
def test_load_shard_refuses_corrupt_or_foreign_files(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "shard.safetensors"
    path.write_bytes(make(_valid_shard_bytes(tmp_path)))
    with pytest.raises(DatasetError, match=message) as info:
        load_shard(path)
    assert str(path) in str(info.value)


def test_load_shard_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        load_shard(tmp_path / "nope.safetensors")


def test_write_device_shards_writes_one_loadable_file_per_device(tmp_path: Path) -> None:
    data = small_dataset(200)
    p = partition_indices(data.train_labels, 4, scheme="dirichlet", public_size=20, seed=1)
    paths = write_device_shards(tmp_path / "shards", data, p)
    assert [x.name for x in paths] == [f"shard-{i}.safetensors" for i in range(4)]
    for i, (path, idx) in enumerate(zip(paths, p.shards, strict=True)):
        shard = load_shard(path)
        assert np.array_equal(shard.images, data.train_images[idx])
        assert np.array_equal(shard.labels, data.train_labels[idx])
        assert dict(shard.meta) == {
            "dataset": "tiny",
            "scheme": "dirichlet",
            "seed": "1",
            "device": str(i),
            "n_devices": "4",
        }


def test_write_device_shards_on_real_mnist(tmp_path: Path, mnist: Dataset) -> None:
    p = partition_indices(
        mnist.train_labels, 5, scheme="classes", public_size=1000, max_samples_per_device=50
    )
    paths = write_device_shards(tmp_path, mnist, p)
    for path in paths:
        shard = load_shard(path)
        assert shard.images.shape == (50, 28, 28)
        assert shard.meta["dataset"] == "mnist"


def test_write_device_shards_refuses_a_partition_of_other_labels(tmp_path: Path) -> None:
    data = small_dataset(50)
    p = partition_indices(np.arange(1000) % 10, 2, seed=0)
    with pytest.raises(ValueError, match="outside tiny's 50 training samples"):
        write_device_shards(tmp_path, data, p)
    assert not list(tmp_path.iterdir())

"""Data sets: the IDX parser, hash-verified loading of MNIST / Fashion-MNIST, and tensor conversion."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flnode.learning import datasets
from flnode.learning.datasets import (
    DATASET_NAMES,
    MNIST_MEAN,
    MNIST_STD,
    Dataset,
    DatasetError,
    clear_dataset_cache,
    labels_to_tensor,
    load_dataset,
    parse_idx,
    read_idx,
    to_tensor,
)

MNIST_DIR = Path(datasets.__file__).parent / "data" / "mnist"
MNIST_FILES = (
    "train-images.idx3-ubyte.gz",
    "train-labels.idx1-ubyte.gz",
    "t10k-images.idx3-ubyte.gz",
    "t10k-labels.idx1-ubyte.gz",
)
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def mirror_mnist(dest: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the vendored MNIST folder made of symlinks (cheap), minus ``skip``."""
    dest.mkdir()
    for name in MNIST_FILES:
        if name not in skip:
            (dest / name).symlink_to(MNIST_DIR / name)
    return dest


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """For tests that patch the data set table: no cached result may leak in or out."""
    clear_dataset_cache()
    yield
    clear_dataset_cache()


# -- real MNIST --------------------------------------------------------------------------------


def test_mnist_has_the_canonical_content(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.n_classes == 10
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert (mnist.n_train, mnist.n_test) == (60000, 10000)
    for array in (mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels):
        assert array.dtype == np.uint8
    assert np.bincount(mnist.train_labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert np.bincount(mnist.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    # E[x] and E[x²] without float copies of 47 M pixels (uint16 holds 255²).
    mean = mnist.train_images.mean(dtype=np.float64) / 255
    mean_sq = np.square(mnist.train_images, dtype=np.uint16).mean(dtype=np.float64) / 255**2
    std = np.sqrt(mean_sq - mean**2)
    assert abs(mean - MNIST_MEAN) < 0.0005
    assert abs(std - MNIST_STD) < 0.0005


def test_loaded_arrays_are_read_only_and_cached(mnist: Dataset) -> None:
    # The cached arrays are shared by every caller in the process: nobody may change them.
    assert load_dataset() is mnist
    with pytest.raises(ValueError, match="read-only"):
        mnist.train_images[0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        mnist.test_labels[0] = 1


def test_the_code_pins_the_hashes_listed_in_sha256sums() -> None:
    listed = dict(
        reversed(line.split()) for line in (MNIST_DIR / "SHA256SUMS").read_text().splitlines()
    )
    spec = datasets._SPECS["mnist"]
    assert {spec.files[p]: spec.sha256[p] for p in spec.files} == listed
    for name, digest in listed.items():
        assert hashlib.sha256((MNIST_DIR / name).read_bytes()).hexdigest() == digest


def test_a_copy_in_another_root_loads_the_same_data(tmp_path: Path, mnist: Dataset) -> None:
    copy = load_dataset("mnist", root=mirror_mnist(tmp_path / "copy"))
    assert copy is not mnist
    assert np.array_equal(copy.train_labels, mnist.train_labels)
    assert np.array_equal(copy.test_images, mnist.test_images)


@pytest.mark.parametrize("offset", [0, 1000])
def test_a_corrupt_file_is_refused_before_it_is_parsed(tmp_path: Path, offset: int) -> None:
    # Offset 0 breaks the gzip magic: "corrupt" (not "not a valid gzip") shows the hash came first.
    root = mirror_mnist(tmp_path / "copy", skip=("train-labels.idx1-ubyte.gz",))
    data = bytearray((MNIST_DIR / "train-labels.idx1-ubyte.gz").read_bytes())
    data[offset] ^= 0xFF
    (root / "train-labels.idx1-ubyte.gz").write_bytes(bytes(data))
    expected = datasets._SPECS["mnist"].sha256["train-labels"]
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(DatasetError, match="corrupt") as info:
        load_dataset("mnist", root=root)
    message = str(info.value)
    assert "train-labels.idx1-ubyte.gz" in message
    assert expected in message and actual in message


def test_a_missing_file_in_a_root_is_named(tmp_path: Path) -> None:
    root = mirror_mnist(tmp_path / "copy", skip=("t10k-labels.idx1-ubyte.gz",))
    with pytest.raises(DatasetError, match=r"t10k-labels\.idx1-ubyte\.gz is missing"):
        load_dataset("mnist", root=root)


def test_a_missing_packaged_file_says_to_reinstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    broken = mirror_mnist(tmp_path / "pkg", skip=("train-images.idx3-ubyte.gz",))
    spec = dataclasses.replace(datasets._SPECS["mnist"], directory=broken)
    monkeypatch.setitem(datasets._SPECS, "mnist", spec)
    with pytest.raises(DatasetError, match=r"train-images.*missing; reinstall flnode"):
        load_dataset("mnist")


def test_an_unknown_name_lists_the_known_ones() -> None:
    assert DATASET_NAMES == ("mnist", "fashion-mnist")
    with pytest.raises(DatasetError, match=r"unknown data set 'cifar10'.*mnist, fashion-mnist"):
        load_dataset("cifar10")


# -- Fashion-MNIST -----------------------------------------------------------------------------


def test_fashion_mnist_loads_if_installed_and_otherwise_says_how_to_install() -> None:
    installed = all(os.path.exists(os.path.join(FASHION_DIR, f)) for f in FASHION_FILES)
    if installed:
        fashion = load_dataset("fashion-mnist")
        assert fashion.train_images.shape == (60000, 28, 28)
        assert fashion.test_images.shape == (10000, 28, 28)
        assert np.bincount(fashion.train_labels).tolist() == [6000] * 10
        assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    else:
        with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
            load_dataset("fashion-mnist")


def write_synthetic(root: Path, names: tuple[str, ...], n_train: int, n_test: int) -> dict:
    """Small random IDX .gz files under ``names``; returns their sha256 by part."""
    rng = np.random.default_rng(7)
    root.mkdir()
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28)),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 28, 28)),
        rng.integers(0, 10, n_test),
    )
    digests = {}
    for part, name, array in zip(datasets._PARTS, names, arrays, strict=True):
        data = gzip.compress(idx_bytes(array.astype(np.uint8)))
        (root / name).write_bytes(data)
        digests[part] = hashlib.sha256(data).hexdigest()
    return digests


def test_fashion_mnist_layout_is_loaded_from_its_system_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    # Exercises the Fashion-MNIST path (dashed file names, default folder) whether or not the
    # Debian package is installed, on synthetic files whose hashes replace the pinned ones.
    digests = write_synthetic(tmp_path / "fashion", FASHION_FILES, 50, 20)
    spec = dataclasses.replace(
        datasets._SPECS["fashion-mnist"], directory=tmp_path / "fashion", sha256=digests
    )
    monkeypatch.setitem(datasets._SPECS, "fashion-mnist", spec)
    fashion = load_dataset("fashion-mnist")
    assert fashion.name == "fashion-mnist"
    assert fashion.train_images.shape == (50, 28, 28)
    assert fashion.test_labels.shape == (20,)


def test_fashion_mnist_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    spec = dataclasses.replace(datasets._SPECS["fashion-mnist"], directory=tmp_path / "absent")
    monkeypatch.setitem(datasets._SPECS, "fashion-mnist", spec)
    with pytest.raises(DatasetError, match=r"not available.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_files_that_do_not_match_the_pinned_hashes_are_corrupt(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "fake", FASHION_FILES, 5, 5)
    with pytest.raises(DatasetError, match="corrupt"):
        load_dataset("fashion-mnist", root=tmp_path / "fake")


# -- the IDX parser ----------------------------------------------------------------------------


def test_parse_idx_reads_labels_and_images_plain_or_gzipped() -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    images = np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(2, 28, 28)
    for array in (labels, images):
        for data in (idx_bytes(array), gzip.compress(idx_bytes(array))):
            parsed = parse_idx(data)
            assert parsed.dtype == np.uint8
            assert np.array_equal(parsed, array)
            assert not parsed.flags.writeable


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than a header"),
        (b"\x00\x00\x08", "shorter than a header"),
        (b"\x00\x00\x08\x02" + b"\x00" * 12, r"magic 0x00000802"),  # a matrix, not labels/images
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4, r"magic 0x00000d01"),  # float32
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", r"magic 0x01000801"),
        (b"PK\x03\x04" + b"\x00" * 20, "magic"),  # a zip file
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "truncated inside its IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", r"truncated: .*needs 5 bytes.*has 2"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "followed by extra bytes"),
        (b"\x00\x00\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),
        (b"\x1f\x8b", "not a valid gzip file"),
        (b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic", "not a valid gzip file"),
        (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03")[:-6], "gzip"),
    ],
)
def test_parse_idx_refuses_malformed_bytes(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as info:
        parse_idx(data, source="some-file.idx")
    assert "some-file.idx" in str(info.value)


def test_parse_idx_bounds_the_decompressed_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "MAX_IDX_BYTES", 100)
    data = gzip.compress(idx_bytes(np.zeros(200, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="more than 100 bytes"):
        parse_idx(data)


_HEADERS = st.sampled_from(
    [b"", b"\x00\x00\x08\x01", b"\x00\x00\x08\x03", b"\x00\x00\x08\x01\x00\x00\x00\x04"]
)
_ARBITRARY = st.one_of(
    st.binary(max_size=300),
    st.builds(bytes.__add__, _HEADERS, st.binary(max_size=64)),
    st.builds(lambda b: b"\x1f\x8b" + b, st.binary(max_size=64)),
    st.builds(lambda b, n: gzip.compress(b)[:n], st.binary(max_size=64), st.integers(0, 100)),
    st.builds(lambda h, b: gzip.compress(h + b), _HEADERS, st.binary(max_size=64)),
)


@settings(max_examples=300, deadline=None)
@given(_ARBITRARY)
def test_arbitrary_bytes_never_raise_anything_but_dataset_error(data: bytes) -> None:
    try:
        parsed = parse_idx(data, source="fuzz")
    except DatasetError:
        return
    assert parsed.dtype == np.uint8
    assert parsed.ndim in (1, 3)


def test_read_idx_names_the_file_and_checks_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "labels.idx1-ubyte.gz"
    data = gzip.compress(idx_bytes(np.array([1, 2, 3], dtype=np.uint8)))
    path.write_bytes(data)
    assert read_idx(path, sha256=hashlib.sha256(data).hexdigest()).tolist() == [1, 2, 3]
    with pytest.raises(DatasetError, match=r"labels\.idx1-ubyte\.gz is corrupt"):
        read_idx(path, sha256="0" * 64)
    with pytest.raises(DatasetError, match=r"nope\.gz is missing"):
        read_idx(tmp_path / "nope.gz")
    path.write_bytes(data[:-10])
    with pytest.raises(DatasetError, match=str(path)):
        read_idx(path)


# -- Dataset and tensors -----------------------------------------------------------------------


def test_dataset_refuses_inconsistent_arrays() -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    labels = np.zeros(3, dtype=np.uint8)
    ok = {
        "name": "x",
        "train_images": images,
        "train_labels": labels,
        "test_images": images,
        "test_labels": labels,
        "n_classes": 10,
    }
    Dataset(**ok)
    bad = [
        {"train_labels": np.zeros(2, dtype=np.uint8)},
        {"test_images": np.zeros((3, 28, 27), dtype=np.uint8)},
        {"train_images": images.astype(np.float32)},
        {"test_labels": np.full(3, 10, dtype=np.uint8)},
        {"n_classes": 0},
    ]
    for change in bad:
        with pytest.raises(DatasetError):
            Dataset(**{**ok, **change})


def test_to_tensor_scales_to_unit_range_without_touching_the_input(mnist: Dataset) -> None:
    images = mnist.train_images[:64]
    x = to_tensor(images)
    assert x.shape == (64, 1, 28, 28)
    assert x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1))
    x.add_(1)  # a new tensor: the cached data set is unchanged
    assert int(mnist.train_images[:64].max()) == 255


def test_to_tensor_standardizes_on_request(mnist: Dataset) -> None:
    images = mnist.train_images[:256]
    z = to_tensor(images, standardize=True)
    expected = (to_tensor(images) - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(z, expected, atol=1e-6)
    custom = to_tensor(images, standardize=True, mean=0.5, std=0.25)
    assert torch.allclose(custom, (to_tensor(images) - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="std must be > 0"):
        to_tensor(images, standardize=True, std=0.0)


def test_to_tensor_refuses_anything_but_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="N×H×W"):
        to_tensor(np.zeros((28, 28), dtype=np.uint8))


def test_labels_to_tensor_gives_int64(mnist: Dataset) -> None:
    y = labels_to_tensor(mnist.test_labels[:10])
    assert y.dtype == torch.int64
    assert y.tolist() == mnist.test_labels[:10].tolist()

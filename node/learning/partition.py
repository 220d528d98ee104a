"""Splitting a training set between the manufacturer and the devices, and device shards on disk.

In the paper's setting (Zhao et al., arXiv 1906.10893) the manufacturer trains the first model on a
small *public* data set, and each IoT device then learns on its own private data. A simulation
reproduces this by cutting one training set into a public slice and one shard per device;
:func:`partition_indices` does the cutting, reproducibly from a seed, so every node of a devnet and
every benchmark run can recompute the same split from three numbers instead of shipping it around.

Device shards follow one of three schemes, from easiest to hardest for federated learning:

* ``"iid"``: a uniformly random split into equal parts (sizes differ by at most one).
* ``"dirichlet"``: label skew. For every class, the proportions of its samples given to the devices
  are drawn from ``Dirichlet(alpha, ..., alpha)`` (Hsu et al. 2019, arXiv 1909.06335): small
  ``alpha`` (0.1) gives each device a few dominant classes, large ``alpha`` (100) is close to iid.
* ``"classes"``: pathological non-iid (McMahan et al. 2017, arXiv 1602.05629): the samples of each
  class are cut into label-pure pieces, and every device is dealt ``classes_per_device`` random
  pieces, so it sees at most that many classes.

A shard is written as one safetensors file (our wire format: a flat header plus raw arrays, safe to
load from an untrusted source, unlike pickle-based ``.npz``/``torch.save``). safetensors has no
checksum of its own, so the header carries the sha256 of the arrays: a shard copied between
machines and damaged on the way is refused instead of training a device on flipped pixels.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from ..fsutil import write_file_atomically
from .datasets import Dataset, DatasetError, check_images_and_labels

#: The device-shard schemes :func:`partition_indices` knows.
SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "classes")

#: Value of the ``flnode.format`` metadata key of a shard file; bump it if the layout changes.
SHARD_FORMAT = "flnode-shard/1"

# Metadata keys under this prefix are written by save_shard itself; user metadata may not use it.
_RESERVED_PREFIX = "flnode."
_FORMAT_KEY = "flnode.format"
_N_CLASSES_KEY = "flnode.n_classes"
_SHA256_KEY = "flnode.sha256"
_TENSOR_NAMES = frozenset({"images", "labels"})


@dataclass(frozen=True, eq=False)
class Partition:
    """Disjoint index sets into a training set: the public slice and one shard per device.

    Every array is a sorted, read-only ``int64`` array of indices into the labels that were
    partitioned. The order within a shard carries no meaning (training shuffles anyway); sorting
    makes a partition canonical, so equal partitions have equal arrays and write identical files.
    """

    public: np.ndarray
    shards: tuple[np.ndarray, ...]
    scheme: str
    seed: int

    @property
    def n_devices(self) -> int:
        return len(self.shards)

    def sizes(self) -> list[int]:
        """The number of samples of each device's shard."""
        return [int(s.size) for s in self.shards]


def partition_indices(
    labels: np.ndarray,
    n_devices: int,
    *,
    scheme: str = "iid",
    public_size: int = 0,
    alpha: float = 0.5,
    classes_per_device: int = 2,
    seed: int = 0,
    max_samples_per_device: int | None = None,
    min_size: int = 10,
) -> Partition:
    """Split the indices of ``labels`` into a public slice and ``n_devices`` device shards.

    * The **public slice** (``public_size`` samples, for the manufacturer) is stratified: each class
      gets its share of ``public_size`` in proportion to its frequency (rounded by the largest
      remainder method), drawn at random within the class. A random slice would do on average, but a small one
      could miss a class entirely, and the manufacturer's model must have seen every class.
    * The **device shards** split all remaining indices according to ``scheme`` (see the module
      docstring). ``alpha`` applies to ``"dirichlet"``, ``classes_per_device`` to ``"classes"``.
    * ``min_size`` (``"dirichlet"`` only) is the fewest samples a device may get. A Dirichlet draw
      with small ``alpha`` leaves some devices nearly empty; instead of redrawing until every device
      is large enough (which may never end with small ``alpha`` and many devices), each shortfall is
      made up with random samples of whichever device currently holds the most, never taking it
      below ``min_size``. This always ends, and only the short devices and the largest ones change.
    * ``max_samples_per_device`` then caps each shard by keeping a random subset, to make
      simulations cheap; without it, public slice and shards together cover every index exactly.

    The result depends only on the arguments. The public slice uses its own random stream, so it
    depends only on ``labels``, ``public_size`` and ``seed``: changing the number of devices or the
    scheme keeps the manufacturer's data, and so its pre-trained model, the same.
    """
    labels = _check_labels(labels)
    _check_int("n_devices", n_devices, minimum=1)
    _check_int("public_size", public_size, minimum=0)
    _check_int("seed", seed, minimum=0)
    _check_int("min_size", min_size, minimum=1)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}. Got: {scheme!r}")
    real = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
    if scheme == "dirichlet" and not (real and 0 < alpha < math.inf):
        raise ValueError(f"alpha must be > 0. Got: {alpha!r}")
    if scheme == "classes":
        _check_int("classes_per_device", classes_per_device, minimum=1)
    if max_samples_per_device is not None:
        _check_int("max_samples_per_device", max_samples_per_device, minimum=1)
    n = labels.size
    if public_size + n_devices > n:
        raise ValueError(
            f"public_size + n_devices must be <= the number of samples ({n}) so that every device "
            f"gets at least one. Got: public_size={public_size}, n_devices={n_devices}"
        )

    public_rng, device_rng, cap_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    public = _stratified_sample(labels, public_size, public_rng)
    in_public = np.zeros(n, dtype=bool)
    in_public[public] = True
    pool = np.flatnonzero(~in_public)

    if scheme == "iid":
        shards = np.array_split(device_rng.permutation(pool), n_devices)
    elif scheme == "dirichlet":
        if min_size * n_devices > pool.size:
            raise ValueError(
                f"min_size * n_devices must be <= the {pool.size} samples left for the devices. "
                f"Got: min_size={min_size}, n_devices={n_devices}"
            )
        shards = _dirichlet_split(labels, pool, n_devices, float(alpha), min_size, device_rng)
    else:
        shards = _class_split(labels, pool, n_devices, classes_per_device, device_rng)

    if max_samples_per_device is not None:
        shards = [
            cap_rng.choice(s, max_samples_per_device, replace=False)
            if s.size > max_samples_per_device
            else s
            for s in shards
        ]
    return Partition(
        public=_frozen_indices(public),
        shards=tuple(_frozen_indices(s) for s in shards),
        scheme=scheme,
        seed=int(seed),
    )


def label_histogram(labels: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """How many of ``labels[idx]`` fall in each class: an ``int64`` array of length ``n_classes``."""
    _check_int("n_classes", n_classes, minimum=1)
    picked = _check_labels(labels)[np.asarray(idx, dtype=np.int64)]
    if picked.size and int(picked.max()) >= n_classes:
        raise ValueError(f"labels must be < n_classes ({n_classes}). Got: {int(picked.max())}")
    return np.bincount(picked, minlength=n_classes).astype(np.int64)


# -- schemes -----------------------------------------------------------------------------------


def _stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if size == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = _apportion(size, counts)
    picks = [
        rng.choice(np.flatnonzero(labels == c), q, replace=False)
        for c, q in zip(classes, quotas, strict=True)
        if q
    ]
    return np.concatenate(picks)


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainder method)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    # A stable sort on the negated remainders: ties go to the lower class, deterministically.
    order = np.argsort(-(exact - out), kind="stable")
    out[order[: total - int(out.sum())]] += 1
    return out


def _dirichlet_split(
    labels: np.ndarray,
    pool: np.ndarray,
    n_devices: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
    pool_labels = labels[pool]
    for c in np.unique(pool_labels):
        members = rng.permutation(pool[pool_labels == c])
        proportions = rng.dirichlet(np.full(n_devices, alpha))
        # Cumulative cut points rather than a multinomial draw: never fails on float round-off
        # in the proportions, and the counts are as close to the drawn proportions as possible.
        cuts = np.round(np.cumsum(proportions)[:-1] * members.size).astype(np.int64)
        for device, piece in enumerate(np.split(members, np.clip(cuts, 0, members.size))):
            parts[device].append(piece)
    shards = [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]

    # Fix-up for min_size (see partition_indices). The total is >= n_devices * min_size, so while a
    # device is short, the largest one has a surplus above min_size to give.
    while True:
        sizes = np.array([s.size for s in shards])
        short = int(np.argmin(sizes))
        if sizes[short] >= min_size:
            return shards
        donor = int(np.argmax(sizes))
        k = int(min(min_size - sizes[short], sizes[donor] - min_size))
        given = rng.permutation(shards[donor].size)
        shards[short] = np.concatenate([shards[short], shards[donor][given[:k]]])
        shards[donor] = shards[donor][given[k:]]


def _class_split(
    labels: np.ndarray,
    pool: np.ndarray,
    n_devices: int,
    classes_per_device: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    # McMahan et al. sort by label and cut into n_devices * k equal pieces; a piece straddling two
    # classes would then give a device more than k classes. Here the cuts follow class boundaries:
    # every class gets at least one piece, the rest are apportioned by class size, so pieces stay
    # about equal and each holds one class only.
    pool_labels = labels[pool]
    classes, counts = np.unique(pool_labels, return_counts=True)
    n_pieces = n_devices * classes_per_device
    if n_pieces < classes.size:
        raise ValueError(
            "n_devices * classes_per_device must be >= the number of classes present "
            f"({classes.size}), so that every sample is placed. Got: {n_devices} * "
            f"{classes_per_device} = {n_pieces}"
        )
    per_class = 1 + _apportion(n_pieces - classes.size, counts)
    if np.any(per_class > counts):
        raise ValueError(
            f"too few samples ({pool.size}) to deal {n_pieces} label-pure pieces "
            f"({n_devices} devices x {classes_per_device} classes); use fewer devices or classes"
        )
    pieces: list[np.ndarray] = []
    for c, k in zip(classes, per_class, strict=True):
        pieces.extend(np.array_split(rng.permutation(pool[pool_labels == c]), k))
    order = rng.permutation(n_pieces)
    return [
        np.concatenate(
            [pieces[j] for j in order[d * classes_per_device : (d + 1) * classes_per_device]]
        )
        for d in range(n_devices)
    ]


# -- shard files -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Shard:
    """One device's training data as read from a shard file.

    ``images`` (``uint8`` ``N×28×28``) and ``labels`` (``uint8`` ``N``, values < ``n_classes``) are
    read-only. ``meta`` is the string metadata the writer passed to
    :func:`save_shard`, as a read-only mapping.
    """

    images: np.ndarray
    labels: np.ndarray
    meta: Mapping[str, str]
    n_classes: int


def save_shard(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    meta: Mapping[str, str] | None = None,
    n_classes: int = 10,
) -> None:
    """Write images and labels to one safetensors file, atomically.

    The bytes go to a temporary file in the same directory, which is fsynced and then renamed over
    ``path`` (and the directory fsynced), so a reader, or a node restarted after a crash, sees the
    old file or the complete new one, never a torn one. Parent directories are created.
    ``meta`` (string keys and values, none starting with ``flnode.``) is stored in the header.
    """
    path = Path(path)
    _check_int("n_classes", n_classes, minimum=1)
    problem = check_images_and_labels(images, labels, n_classes)
    if problem is not None:
        raise ValueError(f"cannot save shard {path}: {problem}")
    header = dict(meta or {})
    for key, value in header.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"shard metadata must map str to str. Got: {key!r}: {value!r}")
        if key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"shard metadata keys starting with {_RESERVED_PREFIX!r} are reserved")
    header[_FORMAT_KEY] = SHARD_FORMAT
    header[_N_CLASSES_KEY] = str(n_classes)
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(labels)
    header[_SHA256_KEY] = _arrays_sha256(images, labels)
    data = safetensors.numpy.save({"images": images, "labels": labels}, metadata=header)
    write_file_atomically(path, data)


def load_shard(path: str | os.PathLike[str]) -> Shard:
    """Read a shard file written by :func:`save_shard`, checking everything about it.

    Anything that is not such a file (missing, truncated, not safetensors, a safetensors file of
    something else, wrong shapes, dtypes or label values, arrays that do not match the checksum in
    the header) raises :class:`DatasetError` naming the file: a device must not start training on
    data it cannot trust. The header is checked before any array is read, so a large foreign file
    is refused without being loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"shard file {path} is missing")
    try:
        handle = safe_open(str(path), framework="numpy")
        header = dict(handle.metadata() or {})
        names = set(handle.keys())
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ValueError, ...
        raise DatasetError(f"shard file {path} is not a valid safetensors file: {exc}") from None
    with handle:
        if header.get(_FORMAT_KEY) != SHARD_FORMAT:
            found = header.get(_FORMAT_KEY, "none")
            raise DatasetError(
                f"{path} is not an flnode shard: format {found!r}, expected {SHARD_FORMAT!r}"
            )
        if names != _TENSOR_NAMES:
            raise DatasetError(
                f"shard file {path} must hold exactly 'images' and 'labels', has {sorted(names)}"
            )
        try:
            n_classes = int(header[_N_CLASSES_KEY])
        except (KeyError, ValueError):
            raise DatasetError(
                f"shard file {path} has no valid {_N_CLASSES_KEY} metadata"
            ) from None
        if n_classes < 1:
            raise DatasetError(f"shard file {path} declares {n_classes} classes")
        try:
            images = handle.get_tensor("images")
            labels = handle.get_tensor("labels")
        except Exception as exc:
            raise DatasetError(f"shard file {path} cannot be read: {exc}") from None
    problem = check_images_and_labels(images, labels, n_classes)
    if problem is not None:
        raise DatasetError(f"shard file {path} is invalid: {problem}")
    expected = header.get(_SHA256_KEY)
    actual = _arrays_sha256(images, labels)
    if actual != expected:
        raise DatasetError(
            f"shard file {path} is corrupt: its arrays hash to {actual}, the header says {expected}"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    meta = {k: v for k, v in header.items() if not k.startswith(_RESERVED_PREFIX)}
    return Shard(images=images, labels=labels, meta=MappingProxyType(meta), n_classes=n_classes)


def write_device_shards(
    datadir_root: str | os.PathLike[str], dataset: Dataset, partition: Partition
) -> list[Path]:
    """Write ``shard-<i>.safetensors`` (``i`` from 0) for every device shard of ``partition``.

    Each file's metadata records where it came from (data set, scheme, seed, device index), so a
    node can log what it trains on. Returns the paths in device order.
    """
    root = Path(datadir_root)
    n_train = dataset.n_train
    for i, idx in enumerate(partition.shards):
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_train):
            raise ValueError(
                f"shard {i} of the partition indexes outside {dataset.name}'s {n_train} "
                "training samples; was it made from another data set's labels?"
            )
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(partition.shards):
        path = root / f"shard-{i}.safetensors"
        meta = {
            "dataset": dataset.name,
            "scheme": partition.scheme,
            "seed": str(partition.seed),
            "device": str(i),
            "n_devices": str(partition.n_devices),
        }
        save_shard(
            path,
            dataset.train_images[idx],
            dataset.train_labels[idx],
            meta=meta,
            n_classes=dataset.n_classes,
        )
        paths.append(path)
    return paths


# -- helpers -----------------------------------------------------------------------------------


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array. Got shape: {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers. Got dtype: {labels.dtype}")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0. Got: {int(labels.min())}")
    return labels


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer. Got: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Got: {value}")


def _arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    # Shapes are in the safetensors header and checked separately; this covers the bytes.
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()


def _frozen_indices(idx: np.ndarray) -> np.ndarray:
    out = np.sort(np.asarray(idx, dtype=np.int64))
    out.flags.writeable = False
    return out

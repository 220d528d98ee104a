"""The image data sets flnode learns on, read from gzipped IDX files and verified by hash.

Two data sets are known, both 28×28 grey-scale images in 10 classes:

* ``"mnist"``: the original MNIST digits, vendored in this package (``data/mnist/``), so a node
  never needs a network connection to get its data.
* ``"fashion-mnist"``: Zalando's Fashion-MNIST, installed system-wide by the Debian package
  ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist/``. It is a drop-in second data
  set of the same shape, and a fallback should the MNIST copy ever have to go.

Why every file is hashed before it is parsed: these bytes decide what a federated model learns, and
the daemon must never train on a silently damaged or substituted copy. A fixed sha256 per file in
this module (not a checksum file next to the data, which would be damaged or replaced together with
it) turns any such problem into a clear :class:`DatasetError` instead of a model that quietly
misbehaves. The IDX parser validates its input on its own as well, because it is also used on files
that no table vouches for (tests, future data sets); it raises :class:`DatasetError` naming the file
for anything malformed, never a numpy or gzip error.

Arrays returned here are read-only: a loaded data set is cached and shared by every caller in the
process, and one caller normalising images in place must not change what the next one sees. Fancy
indexing (``images[idx]``) and :func:`to_tensor` make writable copies.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FLNodeError

#: Height × width of every image of the known data sets (the models assume it).
IMAGE_SHAPE = (28, 28)

#: Mean and standard deviation of MNIST training pixels scaled to [0, 1]; the usual constants.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# The largest decompressed IDX file accepted (MNIST's training images take 47 MB). A bound, so that a
# small hostile .gz cannot expand into all of memory when read_idx is used on an unvetted file.
MAX_IDX_BYTES = 256 * 2**20

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_IDX_NDIMS = (1, 3)  # 0x0801: labels, 0x0803: images
_PARTS = ("train-images", "train-labels", "t10k-images", "t10k-labels")


class DatasetError(FLNodeError):
    """A data set or shard file is missing, corrupt, malformed, or not installed."""


@dataclass(frozen=True, slots=True)
class _Spec:
    """Where a known data set lives, what its files are called, and what they must hash to."""

    name: str
    title: str
    directory: Path
    files: dict[str, str]  # part -> file name
    sha256: dict[str, str]  # part -> hex digest of the .gz file
    n_classes: int
    install_hint: str  # what to tell a user whose default copy is missing


_MNIST = _Spec(
    name="mnist",
    title="MNIST",
    directory=Path(__file__).resolve().parent / "data" / "mnist",
    files={part: f"{part}.idx{1 if 'labels' in part else 3}-ubyte.gz" for part in _PARTS},
    sha256={
        "train-images": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        "train-labels": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        "t10k-images": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        "t10k-labels": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
    },
    n_classes=10,
    install_hint="reinstall flnode (the MNIST files ship inside the package)",
)

_FASHION_MNIST = _Spec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    directory=Path("/usr/share/datasets/fashion-mnist"),
    files={part: f"{part}-idx{1 if 'labels' in part else 3}-ubyte.gz" for part in _PARTS},
    sha256={
        "train-images": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
    n_classes=10,
    install_hint=(
        "install it with `sudo apt-get install dataset-fashion-mnist` "
        "(Debian/Ubuntu; add --reinstall if the package is already installed)"
    ),
)

_SPECS: dict[str, _Spec] = {spec.name: spec for spec in (_MNIST, _FASHION_MNIST)}

#: Names accepted by :func:`load_dataset`.
DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image data set split into training and test parts, as stored on disk.

    Images are ``uint8`` arrays of shape ``N×28×28`` (0 = background), labels ``uint8`` arrays of
    shape ``N`` with values below ``n_classes``. The arrays are read-only (see the module
    docstring). Equality is identity: comparing 47 MB of pixels is never what ``==`` should do.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise DatasetError(f"{self.name}: n_classes must be >= 1. Got: {self.n_classes}")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            problem = check_images_and_labels(images, labels, self.n_classes)
            if problem is not None:
                raise DatasetError(f"{self.name} {split} set: {problem}")

    @property
    def n_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_labels.shape[0])


def check_images_and_labels(images: np.ndarray, labels: np.ndarray, n_classes: int) -> str | None:
    """Why ``images``/``labels`` are not a valid labelled image set, or ``None`` if they are.

    Returns a message rather than raising so that each caller can raise the error that fits it: a
    :class:`DatasetError` naming a file for data read from disk, a ``ValueError`` for bad arguments.
    """
    if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
        return "images and labels must be numpy arrays"
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        return f"images and labels must be uint8, got {images.dtype} and {labels.dtype}"
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        return f"images must have shape N×{IMAGE_SHAPE[0]}×{IMAGE_SHAPE[1]}, got {images.shape}"
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        return (
            f"labels must have shape ({images.shape[0]},) to match the images, got {labels.shape}"
        )
    if labels.size and int(labels.max()) >= n_classes:
        return f"label {int(labels.max())} is out of range for {n_classes} classes"
    return None


# -- IDX files ---------------------------------------------------------------------------------


def parse_idx(data: bytes | bytearray | memoryview, *, source: str = "IDX data") -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzipped or not) into a read-only ``uint8`` array.

    The IDX format (LeCun's) is a 4-byte magic ``00 00 08 <ndim>``, ``ndim`` big-endian ``uint32``
    sizes, then the values. Only ``0x0801`` (labels) and ``0x0803`` (images) are accepted, and the
    payload must be exactly as long as the sizes say: a truncated file or one with trailing bytes is
    refused rather than silently cut or padded. Gzip is recognised by its magic bytes, which cannot
    start an IDX file. ``source`` (usually the file name) goes into every error message.
    """
    if not isinstance(data, bytes):
        data = bytes(data)  # frombuffer over immutable bytes gives a read-only array
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, source)
    if len(data) < 4:
        raise DatasetError(f"{source} is not an IDX file: {len(data)} bytes, shorter than a header")
    zero1, zero2, dtype_code, ndim = data[:4]
    if zero1 or zero2 or dtype_code != _UBYTE or ndim not in _IDX_NDIMS:
        magic = int.from_bytes(data[:4], "big")
        raise DatasetError(
            f"{source} is not an unsigned-byte IDX file of labels or images: magic 0x{magic:08x}, "
            "expected 0x00000801 or 0x00000803"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source} is truncated inside its IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape)
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "followed by extra bytes"
        raise DatasetError(
            f"{source} is {what}: its IDX header {shape} needs {expected} bytes of data, "
            f"the file has {actual}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None) -> np.ndarray:
    """Read and parse an IDX file (see :func:`parse_idx`), checking its sha256 first if given.

    The hash is of the file's bytes as stored (the ``.gz`` file), and it is checked before anything
    is decompressed or parsed, so a damaged file never reaches the parser.
    """
    path = Path(path)
    return parse_idx(_read_verified(path, sha256), source=str(path))


def _read_verified(path: Path, sha256: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise DatasetError(f"{path} is corrupt: its sha256 is {actual}, expected {sha256}")
    return data


def _gunzip(data: bytes, source: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{source} is not a valid gzip file: {exc}") from None
    if len(out) > MAX_IDX_BYTES:
        raise DatasetError(f"{source} decompresses to more than {MAX_IDX_BYTES} bytes")
    return out


# -- loading -----------------------------------------------------------------------------------


def load_dataset(name: str = "mnist", root: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a known data set by name, verifying every file against its pinned sha256.

    ``root`` replaces the data set's default directory (the package's ``data/mnist/`` for MNIST,
    ``/usr/share/datasets/fashion-mnist/`` for Fashion-MNIST); the file names and hashes stay the
    same, so it serves copies of the same files, not other data. Results are cached per
    ``(name, root)`` for the life of the process, because decompressing and parsing takes ~0.3 s and
    every learner in the process wants the same arrays; failures are not cached, so installing a
    missing package and calling again works.
    """
    spec = _SPECS.get(name)
    if spec is None:
        known = ", ".join(DATASET_NAMES)
        raise DatasetError(f"unknown data set {name!r}; known data sets: {known}")
    directory = None if root is None else Path(root).expanduser().resolve()
    return _load_cached(name, directory)


def clear_dataset_cache() -> None:
    """Forget the data sets :func:`load_dataset` has cached (frees their memory)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Path | None) -> Dataset:
    spec = _SPECS[name]
    directory = spec.directory if root is None else root
    if root is None and not directory.is_dir():
        raise DatasetError(f"{spec.title} is not available: {spec.install_hint}")
    paths = {part: directory / spec.files[part] for part in _PARTS}
    for path in paths.values():
        if not path.is_file():
            hint = spec.install_hint if root is None else f"expected the {spec.title} files there"
            raise DatasetError(f"{spec.title} file {path} is missing; {hint}")
    # All four files are read and verified before any is decompressed: a damaged copy fails fast,
    # and no parsing work is spent on a data set that will be refused anyway.
    blobs = {part: _read_verified(path, spec.sha256[part]) for part, path in paths.items()}
    arrays = {part: parse_idx(blobs[part], source=str(paths[part])) for part in _PARTS}
    return Dataset(
        name=spec.name,
        train_images=arrays["train-images"],
        train_labels=arrays["train-labels"],
        test_images=arrays["t10k-images"],
        test_labels=arrays["t10k-labels"],
        n_classes=spec.n_classes,
    )


# -- tensors -----------------------------------------------------------------------------------


def to_tensor(
    images: np.ndarray,
    *,
    standardize: bool = False,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
) -> torch.Tensor:
    """Convert ``uint8`` images ``N×H×W`` into a new ``float32`` tensor ``N×1×H×W`` in [0, 1].

    Scaling to [0, 1] is the default because it needs no statistics of the data: it is the same for
    MNIST, Fashion-MNIST and any shard, and a device can apply it knowing nothing but its own
    images. In the paper's scheme the device's extractor output is bounded per sample before noise
    is added anyway, so input scaling does not affect the privacy accounting. ``standardize=True``
    additionally maps ``x -> (x - mean) / std``, with MNIST's training statistics by default, which
    usually speeds up training a little; pass the right ``mean``/``std`` for another data set
    (Fashion-MNIST's are about 0.2860 and 0.3530). Whichever is chosen must be used identically for
    training and testing.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"images must be a uint8 numpy array of shape N×H×W. Got: {got}")
    if standardize and not std > 0:
        raise ValueError(f"std must be > 0. Got: {std}")
    out = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).div_(255.0)
    if standardize:
        out.sub_(mean).div_(std)
    return out


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    """Convert ``uint8`` labels into a new ``int64`` tensor, the type cross-entropy expects."""
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        got = getattr(labels, "shape", type(labels).__name__)
        raise ValueError(f"labels must be a 1-D numpy array. Got: {got}")
    return torch.from_numpy(labels.astype(np.int64))

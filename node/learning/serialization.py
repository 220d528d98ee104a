"""Model weights on the wire: safetensors bytes, byte-deterministic, parsed defensively.

Writing (:func:`weights_to_bytes`) goes through ``safetensors.torch.save`` on contiguous CPU copies.
Its tensor layout is deterministic whatever the dict's key order (it sorts by dtype alignment and
name), so the same weights always give the same bytes, hence the same CID. Its **metadata** is not:
safetensors keeps it in a Rust ``HashMap`` and writes it in a per-process random order as soon as
there are two keys. We therefore re-encode the JSON header with sorted metadata keys (still a
standard safetensors file any reader accepts), so weights + metadata → bytes is a function.

Reading (:func:`weights_from_bytes`) treats the bytes as hostile (DESIGN.md: every byte from
outside is hostile). Before any tensor is materialised it checks, in order: the total size against
``max_bytes``; the 8-byte little-endian header length against a fixed bound and the buffer (a header
that declares an absurd size is refused without allocating it); that the header is UTF-8 JSON
without duplicate keys; each entry's dtype, shape (at most 16 dimensions) and ``data_offsets``
(inside the buffer, sized ``numel × itemsize``, tiling the data section exactly, so no overlaps,
gaps or trailing bytes); then the expected keys, shapes and dtypes. Only then does ``safetensors.torch.load`` build the tensors,
which are finally checked for NaN and infinity. Every refusal is a :class:`WeightsFormatError` whose
message names the problem and the key.

Helpers split a full state dict into its ``extractor.`` / ``head.`` parts, and handle BatchNorm's
``num_batches_tracked`` int64 counters, which must be copied, never averaged (learning.md P4).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import safetensors.torch
import torch
from torch import Tensor

from ..errors import FLNodeError
from ..strictjson import loads_strict

__all__ = [
    "BATCH_COUNTER",
    "MAX_HEADER_BYTES",
    "WeightsFormatError",
    "WeightsHeader",
    "check_against",
    "copy_batch_counters",
    "drop_batch_counters",
    "extractor_state",
    "head_state",
    "is_batch_counter",
    "max_weights_bytes",
    "merge_states",
    "parse_header",
    "read_metadata",
    "select_part",
    "split_state",
    "weights_from_bytes",
    "weights_to_bytes",
]

MAX_HEADER_BYTES = 4 * 1024 * 1024
"""Largest JSON header accepted (a model with tens of thousands of tensors fits; safetensors
itself allows 100 MB). Checked before the header is sliced, so a forged length costs nothing."""

_MAX_KEY_CHARS = 1024
_MAX_DIMS = 16
"""Most dimensions a tensor may declare (flnode's models use at most 4). torch refuses more than
64 in many operations, and a shape of 65 zero-length dimensions passed every size check (it has
no elements) and then made the finiteness check raise a bare ``RuntimeError``."""
_MAX_METADATA_CHARS = 64 * 1024
_METADATA_KEY = "__metadata__"

BATCH_COUNTER = "num_batches_tracked"
"""Name of BatchNorm's int64 step counter buffer (last component of its state-dict key)."""

# safetensors dtype names ↔ torch dtypes that flnode accepts. Unsigned 16/32/64-bit and float8 are
# left out on purpose: torch supports few operations on them and no flnode model uses them.
_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "I32": torch.int32,
        "I64": torch.int64,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
    }
)
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_ITEMSIZES = {v: torch.empty((), dtype=v).element_size() for v in _DTYPES.values()}

ShapeLike = Sequence[int] | torch.Size
Expected = Mapping[str, tuple[ShapeLike, torch.dtype]]


class WeightsFormatError(FLNodeError, ValueError):
    """Weights bytes (or a state dict to be written) are malformed or do not match what is expected."""


@dataclass(frozen=True, slots=True)
class WeightsHeader:
    """The parsed, validated header of a safetensors buffer (no tensor data touched).

    ``tensors`` maps each key (sorted) to ``(shape, dtype)``; ``metadata`` is the free-text
    ``__metadata__`` table; ``data_start`` is where the data section begins in the buffer.
    """

    tensors: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    metadata: Mapping[str, str]
    data_start: int

    @property
    def nbytes(self) -> int:
        """Size of the data section (sum of the tensors' raw sizes)."""
        return sum(math.prod(s) * _itemsize(d) for s, d in self.tensors.values())


# ----------------------------------------------------------------------------------------------
# Writing


def weights_to_bytes(
    state: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise ``state`` (and optional text ``metadata``) as safetensors bytes.

    Deterministic: equal tensors (same keys, shapes, dtypes, values) and equal metadata give equal
    bytes, whatever the order of either mapping. Tensors are copied to contiguous CPU memory (so
    views, shared storage and ``requires_grad`` do not matter). Refuses non-finite floats: an honest
    node never publishes NaN or infinity, and a reader would refuse them anyway.
    """
    if not isinstance(state, Mapping):
        raise WeightsFormatError(
            f"state must be a mapping of names to tensors, not {type(state).__name__}"
        )
    if not state:
        raise WeightsFormatError("state is empty: there are no tensors to serialise")
    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        _check_key(key)
        if not isinstance(value, Tensor):
            raise WeightsFormatError(f"{key!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided:
            raise WeightsFormatError(
                f"{key!r} is a {value.layout} tensor; only dense tensors are supported"
            )
        if value.dtype not in _DTYPE_NAMES:
            raise WeightsFormatError(f"{key!r} has unsupported dtype {value.dtype}")
        if value.dim() > _MAX_DIMS:
            raise WeightsFormatError(
                f"{key!r} has {value.dim()} dimensions; at most {_MAX_DIMS} are supported"
            )
        t = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsFormatError(f"{key!r} contains NaN or infinity")
        tensors[key] = t
    meta = _check_metadata(metadata)
    try:
        raw = safetensors.torch.save(tensors, metadata=meta or None)
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsFormatError(f"safetensors could not serialise the state: {exc}") from exc
    return _canonical_header(raw)


def _canonical_header(raw: bytes) -> bytes:
    """Re-encode safetensors' header with sorted metadata keys; the data section is untouched."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    if _METADATA_KEY in header:
        header[_METADATA_KEY] = dict(sorted(header[_METADATA_KEY].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise WeightsFormatError(f"tensor names must be non-empty strings, got {key!r}")
    if key == _METADATA_KEY:
        raise WeightsFormatError(f"{_METADATA_KEY!r} is reserved and cannot name a tensor")
    if len(key) > _MAX_KEY_CHARS:
        raise WeightsFormatError(
            f"tensor name longer than {_MAX_KEY_CHARS} characters: {key[:40]!r}..."
        )


def _check_metadata(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise WeightsFormatError(
            f"metadata must be a mapping of str to str, not {type(metadata).__name__}"
        )
    total = 0
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise WeightsFormatError(f"metadata must map str to str; got {k!r}: {v!r:.40}")
        total += len(k) + len(v)
    if total > _MAX_METADATA_CHARS:
        raise WeightsFormatError(f"metadata of {total} characters exceeds {_MAX_METADATA_CHARS}")
    return dict(metadata)


# ----------------------------------------------------------------------------------------------
# Reading


def parse_header(
    data: bytes | bytearray | memoryview, *, max_bytes: int | None = None
) -> WeightsHeader:
    """Validate the framing and header of safetensors bytes without loading any tensor.

    Raises :class:`WeightsFormatError` (see the module docstring for what is checked).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WeightsFormatError(f"weights must be bytes, not {type(data).__name__}")
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise WeightsFormatError(f"weights of {size} bytes exceed the limit of {max_bytes} bytes")
    if size < 8:
        raise WeightsFormatError(f"truncated: {size} bytes, fewer than the 8-byte header length")
    n = int.from_bytes(bytes(data[:8]), "little")
    if n > MAX_HEADER_BYTES:
        raise WeightsFormatError(f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n > size - 8:
        raise WeightsFormatError(
            f"truncated: the header declares {n} bytes but only {size - 8} follow"
        )
    try:
        header = loads_strict(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, duplicates
        raise WeightsFormatError(f"the header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise WeightsFormatError(f"the header must be a JSON object, not {type(header).__name__}")

    metadata = header.pop(_METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsFormatError("the header's __metadata__ must map strings to strings")

    data_len = size - 8 - n
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        if len(key) > _MAX_KEY_CHARS or not key:
            raise WeightsFormatError(f"bad tensor name {key[:40]!r}")
        shape, dtype, begin, end = _check_entry(key, entry, data_len)
        tensors[key] = (shape, dtype)
        spans.append((begin, end, key))

    # The entries must tile the data section exactly: no overlap (two keys aliasing the same
    # bytes), no gap, no trailing bytes that a CID would cover but no tensor explains.
    pos = 0
    for begin, end, key in sorted(spans):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap at byte {pos}"
            raise WeightsFormatError(f"{key!r}: data_offsets [{begin}, {end}] {what}")
        pos = end
    if pos != data_len:
        raise WeightsFormatError(
            f"the tensors cover {pos} bytes of a {data_len}-byte data section (trailing bytes)"
        )
    return WeightsHeader(
        tensors=MappingProxyType(dict(sorted(tensors.items()))),
        metadata=MappingProxyType(dict(sorted(metadata.items()))),
        data_start=8 + n,
    )


def _check_entry(
    key: str, entry: object, data_len: int
) -> tuple[tuple[int, ...], torch.dtype, int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise WeightsFormatError(
            f"{key!r}: a header entry must have exactly 'dtype', 'shape' and 'data_offsets'"
        )
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise WeightsFormatError(
            f"{key!r}: unsupported dtype {entry['dtype']!r}; supported: {', '.join(_DTYPES)}"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_nat(s) for s in shape):
        raise WeightsFormatError(
            f"{key!r}: shape must be a list of non-negative integers, got {shape!r:.80}"
        )
    if len(shape) > _MAX_DIMS:
        raise WeightsFormatError(
            f"{key!r}: a shape of {len(shape)} dimensions; at most {_MAX_DIMS} are supported"
        )
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_nat(o) for o in offsets)):
        raise WeightsFormatError(
            f"{key!r}: data_offsets must be two non-negative integers, got {offsets!r:.80}"
        )
    begin, end = offsets
    if not begin <= end <= data_len:
        raise WeightsFormatError(
            f"{key!r}: data_offsets [{begin}, {end}] lie outside the {data_len}-byte data section"
        )
    need = math.prod(shape) * _itemsize(dtype)  # Python ints: a huge shape cannot overflow
    if end - begin != need:
        raise WeightsFormatError(
            f"{key!r}: shape {tuple(shape)} of {entry['dtype']} needs {need} bytes, "
            f"data_offsets give {end - begin}"
        )
    return tuple(shape), dtype, begin, end


def weights_from_bytes(
    data: bytes | bytearray | memoryview,
    *,
    expected: Expected | None = None,
    max_bytes: int | None = None,
) -> dict[str, Tensor]:
    """Parse safetensors bytes into ``{key: tensor}`` (sorted by key), refusing anything off.

    ``expected`` (e.g. :meth:`ModelSpec.weight_specs`) fixes the exact key set and each key's
    shape and dtype; it is checked on the header, before any tensor is built. ``max_bytes`` caps
    the input size. Float tensors must be finite. Raises :class:`WeightsFormatError`.
    """
    header = parse_header(data, max_bytes=max_bytes)
    if expected is not None:
        check_against(header.tensors, expected)
    try:
        loaded = safetensors.torch.load(bytes(data))
    except Exception as exc:  # SafetensorError and friends: refuse, never crash
        raise WeightsFormatError(f"safetensors refused the data: {exc}") from exc
    out: dict[str, Tensor] = {}
    for key, (shape, dtype) in header.tensors.items():
        t = loaded.get(key)
        if t is None or tuple(t.shape) != shape or t.dtype != dtype:  # defensive: never expected
            raise WeightsFormatError(f"{key!r}: safetensors disagrees with the validated header")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsFormatError(f"{key!r} contains NaN or infinity")
        out[key] = t
    if len(loaded) != len(out):
        raise WeightsFormatError("safetensors returned tensors the header does not list")
    return out


def read_metadata(
    data: bytes | bytearray | memoryview, *, max_bytes: int | None = None
) -> dict[str, str]:
    """The ``__metadata__`` table of (validated) safetensors bytes."""
    return dict(parse_header(data, max_bytes=max_bytes).metadata)


def check_against(
    actual: Mapping[str, tuple[tuple[int, ...], torch.dtype]], expected: Expected
) -> None:
    """Refuse unless ``actual`` has exactly ``expected``'s keys, shapes and dtypes."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected key(s): {_names(unexpected)}")
        raise WeightsFormatError("; ".join(parts))
    for key in sorted(expected):
        want_shape, want_dtype = expected[key]
        shape, dtype = actual[key]
        if tuple(shape) != tuple(int(s) for s in want_shape):
            raise WeightsFormatError(f"{key!r}: shape {tuple(shape)}, expected {tuple(want_shape)}")
        if dtype != want_dtype:
            raise WeightsFormatError(f"{key!r}: dtype {dtype}, expected {want_dtype}")


def max_weights_bytes(expected: Expected, *, metadata_bytes: int = 4096) -> int:
    """A tight upper bound on the serialised size of weights matching ``expected``.

    Raw tensor bytes, plus a header allowance (per key: its name and ~100 bytes of JSON; plus
    ``metadata_bytes``): the natural ``max_bytes`` for :func:`weights_from_bytes`.
    """
    raw = sum(
        math.prod(int(s) for s in shape) * _itemsize(dtype) for shape, dtype in expected.values()
    )
    header = 64 + metadata_bytes + sum(len(k.encode()) + 100 for k in expected)
    return 8 + header + raw


def _names(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _is_nat(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _itemsize(dtype: torch.dtype) -> int:
    size = _ITEMSIZES.get(dtype)
    return size if size is not None else torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------
# State-dict helpers


def select_part(
    state: Mapping[str, Tensor], part: Literal["head", "extractor"]
) -> dict[str, Tensor]:
    """The entries of ``part`` (keys starting with ``head.`` / ``extractor.``; prefixes are kept)."""
    if part not in ("head", "extractor"):
        raise WeightsFormatError(f"part must be 'head' or 'extractor', got {part!r}")
    prefix = part + "."
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def head_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The head's entries of a full state dict (what a device uploads in the bottleneck design)."""
    return select_part(state, "head")


def extractor_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The extractor's entries of a full state dict."""
    return select_part(state, "extractor")


def split_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(extractor part, head part)``; a key in neither part is an error, not silently dropped."""
    stray = sorted(k for k in state if not k.startswith(("head.", "extractor.")))
    if stray:
        raise WeightsFormatError(f"key(s) outside 'extractor.' and 'head.': {_names(stray)}")
    return extractor_state(state), head_state(state)


def merge_states(*states: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Union of state dicts with disjoint keys (e.g. a frozen extractor + an aggregated head)."""
    out: dict[str, Tensor] = {}
    for s in states:
        dup = sorted(set(out) & set(s))
        if dup:
            raise WeightsFormatError(f"key(s) present in more than one state: {_names(dup)}")
        out.update(s)
    return out


def is_batch_counter(key: str) -> bool:
    """Whether ``key`` is a BatchNorm ``num_batches_tracked`` counter (copy it, never average it)."""
    return key == BATCH_COUNTER or key.endswith("." + BATCH_COUNTER)


def drop_batch_counters(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without its ``num_batches_tracked`` counters (e.g. before averaging floats)."""
    return {k: v for k, v in state.items() if not is_batch_counter(k)}


def copy_batch_counters(
    state: Mapping[str, Tensor], source: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``state`` with every ``num_batches_tracked`` counter of ``source`` copied in (cloned).

    The counters only drive BatchNorm's momentum when ``momentum=None``; averaging them across
    devices would give a meaningless float for an int64 buffer (learning.md P4), so an aggregate
    takes them from one reference state instead (e.g. the previous global model).
    """
    out = dict(state)
    for k in _counter_keys(source):
        out[k] = source[k].detach().clone()
    return out


def _counter_keys(state: Iterable[str]) -> list[str]:
    return sorted(k for k in state if is_batch_counter(k))

"""Fuzzing the safetensors reader (model updates, offload jobs): only ``WeightsFormatError``.

Every model update, aggregate and offload job arrives from a peer as safetensors bytes and goes
through :func:`weights_from_bytes`. Whatever the bytes, the reader either returns finite tensors
that match the header it validated (and the model spec, when one is given), or raises
:class:`WeightsFormatError`; it never lets a ``RuntimeError`` of torch, a ``SafetensorError``,
a ``KeyError``... escape, and it refuses absurd declared sizes before building any tensor.
"""

from __future__ import annotations

import contextlib
import json
import math
import tracemalloc
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from flnode.learning.models import ModelSpec, build_model
from flnode.learning.serialization import (
    MAX_HEADER_BYTES,
    WeightsFormatError,
    head_state,
    max_weights_bytes,
    parse_header,
    read_metadata,
    weights_from_bytes,
    weights_to_bytes,
)

from ...fuzz_profiles import fuzz

SPEC = ModelSpec.create(conv1_channels=4, conv2_channels=8, head_hidden=16)
HEAD_SPECS = SPEC.weight_specs("head")
HEAD_LIMIT = max_weights_bytes(HEAD_SPECS)
HEAD_STATE = head_state(build_model(SPEC, 0).state_dict())
HEAD_BYTES = weights_to_bytes(HEAD_STATE, {"task": "1", "round": "2"})

DTYPES = {
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
ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}
FLOATS = ("F16", "BF16", "F32", "F64")


def _frame(header: bytes, body: bytes, length: int | None = None) -> bytes:
    return (len(header) if length is None else length).to_bytes(8, "little") + header + body


def read(data: bytes, **kw: Any) -> dict[str, torch.Tensor] | None:
    """The tensors, or None when refused; anything but ``WeightsFormatError`` fails the test."""
    try:
        out = weights_from_bytes(data, **kw)
    except WeightsFormatError:
        return None
    header = parse_header(data, max_bytes=kw.get("max_bytes"))
    assert list(out) == list(header.tensors)
    for key, t in out.items():
        assert (tuple(t.shape), t.dtype) == header.tensors[key]
        if t.is_floating_point():
            assert bool(torch.isfinite(t).all()), key
    expected = kw.get("expected")
    if expected is not None:
        assert {k: (tuple(t.shape), t.dtype) for k, t in out.items()} == {
            k: (tuple(s), d) for k, (s, d) in expected.items()
        }
    return out


# ---------------------------------------------------------------------------------------------
# Headers built from the format's own parts, some of them wrong
# ---------------------------------------------------------------------------------------------

_dims = st.integers(0, 6) | st.sampled_from([2**31, 2**40, 2**63, 2**64 + 1])
_shape = st.lists(_dims, max_size=4) | st.lists(st.just(0), min_size=15, max_size=70)
_bad_value = st.sampled_from([None, True, -1, 1.5, "1", [1], {"a": 1}])
_dtype = st.sampled_from(sorted(DTYPES)) | st.sampled_from(
    ["F8_E4M3", "F8_E5M2", "U16", "U32", "U64", "C64", "f32", "", "F32 "]
)


@st.composite
def _entry(draw: st.DrawFn, start: int) -> tuple[dict[str, Any], int]:
    """A header entry whose offsets start at ``start`` (usually), and the length it covers."""
    dtype = draw(_dtype | _bad_value)
    shape = draw(_shape | st.lists(st.integers(-3, 3) | _bad_value, max_size=3) | _bad_value)
    size = 0
    if isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape):
        size = math.prod(shape) * ITEMSIZE.get(dtype, 4) if isinstance(dtype, str) else 0
    if size > 64:  # an absurd declared size: the offsets cannot cover it
        size = draw(st.integers(0, 64))
    size += draw(st.sampled_from([0, 0, 0, 1, -1, 4]))
    begin = start + draw(st.sampled_from([0, 0, 0, 0, -4, 4]))
    offsets: Any = [begin, begin + size]
    offsets = draw(
        st.just(offsets)
        | st.just(offsets[::-1])
        | st.lists(st.integers(-2, 2**64), max_size=3)
        | _bad_value
    )
    entry: dict[str, Any] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    if draw(st.integers(0, 9)) == 0:
        entry.pop(draw(st.sampled_from(sorted(entry))))
    if draw(st.integers(0, 9)) == 0:
        entry["extra"] = 1
    return entry, max(size, 0)


@st.composite
def crafted(draw: st.DrawFn) -> bytes:
    """A safetensors-like buffer: header entries, metadata, a data section, a length prefix."""
    header: dict[str, Any] = {}
    pos = 0
    for i in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([f"t{i}", f"head.fc{i}.weight", "", "x" * 1100, "t0"]))
        entry, size = draw(_entry(pos))
        header[name] = entry
        pos += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=3)
            | st.dictionaries(st.text(max_size=4), _bad_value, min_size=1, max_size=2)
            | _bad_value
        )
    text = json.dumps(header).encode()
    text = draw(
        st.just(text)
        | st.just(text + b" " * draw(st.integers(0, 7)))
        | st.builds(lambda cut: text[:cut], st.integers(0, len(text)))
        | st.sampled_from([b"", b"[]", b"null", b"\xff\xfe{}", b'{"a":NaN}', b"[" * 5000])
    )
    body_len = max(pos + draw(st.sampled_from([0, 0, 0, 1, -1, 8])), 0)
    body = draw(st.binary(min_size=body_len, max_size=body_len))
    length = draw(
        st.just(len(text))
        | st.sampled_from([0, 1, 2**64 - 1, MAX_HEADER_BYTES + 1])
        | st.integers(0, len(text) + len(body) + 16)
    )
    return _frame(text, body, length)


@fuzz(150)
@given(crafted())
def test_crafted_headers_only_raise_weights_format_error(data: bytes) -> None:
    read(data)
    with contextlib.suppress(WeightsFormatError):
        read_metadata(data)


@fuzz(100)
@given(crafted())
def test_crafted_headers_against_a_model_spec(data: bytes) -> None:
    assert read(data, expected=HEAD_SPECS, max_bytes=HEAD_LIMIT) is None


@fuzz(200)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_weights_format_error(data: bytes) -> None:
    read(data)


# ---------------------------------------------------------------------------------------------
# A real model update, mutated
# ---------------------------------------------------------------------------------------------


@st.composite
def mutated_update(draw: st.DrawFn) -> bytes:
    data = bytearray(HEAD_BYTES)
    n = int.from_bytes(data[:8], "little")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["header", "header", "data", "insert", "delete", "truncate"]))
        # Mostly inside the header (the data section's bytes are any floats, or NaN/inf).
        low, high = (8 + n, len(data) - 1) if op == "data" else (0, min(8 + n, len(data)) - 1)
        if high < low:
            continue
        pos = draw(st.integers(low, high))
        if op in ("header", "data"):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete":
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


@fuzz(150)
@given(mutated_update())
def test_mutated_update_is_refused_or_still_matches_the_spec(data: bytes) -> None:
    out = read(data, expected=HEAD_SPECS, max_bytes=HEAD_LIMIT)
    if out is not None and data != HEAD_BYTES:
        # Only the tensor values (or header whitespace/metadata) may differ: keys, shapes and
        # dtypes were checked by read().
        assert sorted(out) == sorted(HEAD_SPECS)


@fuzz(100)
@given(
    key=st.sampled_from(sorted(HEAD_SPECS)),
    value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    where=st.floats(0, 1, exclude_max=True),
)
def test_nan_and_inf_weights_are_refused(
    key: str, value: float, dtype: torch.dtype, where: float
) -> None:
    if not HEAD_STATE[key].is_floating_point() or HEAD_STATE[key].numel() == 0:
        return
    state = {k: v.clone() for k, v in HEAD_STATE.items()}
    flat = state[key].to(dtype).flatten()
    # Written through safetensors directly: flnode's own writer refuses non-finite weights.
    flat[int(where * flat.numel())] = value
    state[key] = flat.reshape(HEAD_STATE[key].shape)
    raw = safetensors.torch.save(state)
    with pytest.raises(WeightsFormatError, match="NaN or infinity"):
        weights_from_bytes(raw)
    with pytest.raises(WeightsFormatError):  # a spec rejects it too (dtype or NaN)
        weights_from_bytes(raw, expected=HEAD_SPECS)


_other_dtypes = st.sampled_from(
    [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8]
)


@fuzz(100)
@given(
    key=st.sampled_from(sorted(HEAD_SPECS)),
    change=st.sampled_from(["shape", "dtype", "drop", "extra", "rename"]),
    dim=st.integers(0, 3),
    delta=st.sampled_from([-1, 1, 7]),
    dtype=_other_dtypes,
)
def test_wrong_shapes_and_dtypes_are_refused_before_any_tensor_is_built(
    key: str, change: str, dim: int, delta: int, dtype: torch.dtype
) -> None:
    state = {k: v.clone() for k, v in HEAD_STATE.items()}
    t = state[key]
    if change == "shape":
        shape = list(t.shape) or [1]
        shape[dim % len(shape)] = max(shape[dim % len(shape)] + delta, 0)
        if dim == 3:
            shape.append(1)  # the same values with one more dimension
        state[key] = torch.zeros(shape, dtype=t.dtype)
    elif change == "dtype":
        if dtype == t.dtype:
            dtype = torch.float32 if t.dtype != torch.float32 else torch.float64
        state[key] = t.to(dtype)
    elif change == "drop":
        del state[key]
    elif change == "extra":
        state[key + ".evil"] = torch.zeros(2)
    else:
        state["head.x" + key.removeprefix("head.")] = state.pop(key)
    raw = weights_to_bytes(state)
    with no_tensors_built(), pytest.raises(WeightsFormatError):
        weights_from_bytes(raw, expected=HEAD_SPECS, max_bytes=2 * HEAD_LIMIT)


# ---------------------------------------------------------------------------------------------
# Absurd declared sizes: refused on the header alone, without allocating
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_tensors_built() -> Iterator[None]:
    """Fail if safetensors is asked to build tensors (the header checks must refuse first)."""
    with mock.patch.object(
        safetensors.torch, "load", side_effect=AssertionError("a tensor was built")
    ):
        yield


@contextlib.contextmanager
def allocates_at_most(limit: int) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes allocated"


@fuzz(100)
@given(
    shape=st.lists(st.integers(1, 2**40), min_size=1, max_size=4).filter(
        lambda s: math.prod(s) > 2**24
    ),
    dtype=st.sampled_from(sorted(DTYPES)),
    offsets=st.sampled_from(["declared", "small", "huge"]),
    length=st.sampled_from(["true", "absurd"]),
)
def test_absurd_declared_sizes_are_refused_without_allocating(
    shape: list[int], dtype: str, offsets: str, length: str
) -> None:
    need = math.prod(shape) * ITEMSIZE[dtype]
    end = {"declared": need, "small": 16, "huge": 2**64 - 1}[offsets]
    header = json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, end]}}).encode()
    data = _frame(header, bytes(16), None if length == "true" else 2**63 + 5)
    with no_tensors_built(), allocates_at_most(256 * 1024), pytest.raises(WeightsFormatError):
        weights_from_bytes(data)


def test_an_absurd_total_size_is_refused_before_parsing() -> None:
    # A declared header of 4 MiB + 1 bytes on a short buffer is refused on the length alone.
    data = _frame(b"{}", b"", MAX_HEADER_BYTES + 1)
    with no_tensors_built(), allocates_at_most(64 * 1024), pytest.raises(WeightsFormatError):
        weights_from_bytes(data)


# ---------------------------------------------------------------------------------------------
# Found by fuzzing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [17, 65, 200])
def test_many_empty_dimensions_are_refused(dims: int) -> None:
    """A shape of 65 zero-length dimensions has no bytes, so it passed every size check, and then
    ``torch.isfinite`` raised a bare ``RuntimeError`` ("only tensors with up to 64 dims")."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [0] * dims, "data_offsets": [0, 0]}})
    with pytest.raises(WeightsFormatError, match="dimensions"):
        weights_from_bytes(_frame(header.encode(), b""))


def test_the_writer_refuses_what_the_reader_would() -> None:
    with pytest.raises(WeightsFormatError, match="dimensions"):
        weights_to_bytes({"w": torch.zeros([1] * 17)})


def test_sixteen_dimensions_still_round_trip() -> None:
    t = torch.arange(2.0).reshape([2] + [1] * 15)
    assert torch.equal(weights_from_bytes(weights_to_bytes({"w": t}))["w"], t)

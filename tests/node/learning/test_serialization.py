"""Weights as safetensors bytes: determinism, strict parsing of hostile input, state-dict helpers."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import safetensors.torch
import torch

from flnode.errors import FLNodeError
from flnode.learning.models import ModelSpec, build_model
from flnode.learning.serialization import (
    MAX_HEADER_BYTES,
    WeightsFormatError,
    copy_batch_counters,
    drop_batch_counters,
    extractor_state,
    head_state,
    is_batch_counter,
    max_weights_bytes,
    merge_states,
    parse_header,
    read_metadata,
    select_part,
    split_state,
    weights_from_bytes,
    weights_to_bytes,
)

SPEC = ModelSpec.create(conv1_channels=4, conv2_channels=8, head_hidden=16)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    return build_model(SPEC, seed).state_dict()


def _craft(header: object, body: bytes, *, length: int | None = None) -> bytes:
    """A safetensors-like buffer from an arbitrary header object (or raw header bytes)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    return n.to_bytes(8, "little") + text + body


def _f32(n: int, value: float = 1.0) -> bytes:
    return torch.full((n,), value).numpy().tobytes()


def test_round_trip_with_expected_shapes() -> None:
    state = _state()
    data = weights_to_bytes(state, {"task": "t1", "round": "3"})
    expected = SPEC.weight_specs()
    out = weights_from_bytes(data, expected=expected, max_bytes=max_weights_bytes(expected))
    assert list(out) == sorted(state)
    for k, v in state.items():
        assert torch.equal(out[k], v) and out[k].dtype == v.dtype
    assert read_metadata(data) == {"round": "3", "task": "t1"}
    # Standard safetensors: the reference loader reads it too.
    plain = safetensors.torch.load(data)
    assert all(torch.equal(plain[k], v) for k, v in state.items())
    assert issubclass(WeightsFormatError, FLNodeError)


def test_same_seed_gives_the_same_bytes_and_sha256() -> None:
    a, b = weights_to_bytes(_state(5)), weights_to_bytes(_state(5))
    assert a == b
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    assert weights_to_bytes(_state(6)) != a


def test_key_order_views_and_grad_flags_do_not_change_the_bytes() -> None:
    state = _state(1)
    items = list(state.items())
    random.Random(0).shuffle(items)
    shuffled = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in items}
    # A non-contiguous view with the same values.
    w = state["head.fc1.weight"]
    shuffled["head.fc1.weight"] = w.t().contiguous().t()
    assert not shuffled["head.fc1.weight"].is_contiguous()
    assert weights_to_bytes(shuffled) == weights_to_bytes(state)


def test_metadata_order_does_not_change_the_bytes() -> None:
    # safetensors itself writes metadata in a random order once there are two keys.
    state = {"w": torch.ones(3)}
    meta = [(f"key{i}", str(i)) for i in range(20)]
    outputs = set()
    for seed in range(5):
        random.Random(seed).shuffle(meta)
        outputs.add(weights_to_bytes(state, dict(meta)))
    assert len(outputs) == 1
    data = outputs.pop()
    assert read_metadata(data) == dict(meta)
    assert safetensors.torch.load(data)["w"].tolist() == [1.0, 1.0, 1.0]


def test_head_only_update_round_trip() -> None:
    head = head_state(_state())
    expected = SPEC.weight_specs("head")
    data = weights_to_bytes(head)
    assert len(data) <= max_weights_bytes(expected)
    out = weights_from_bytes(data, expected=expected)
    assert set(out) == set(expected)


def test_parse_header_reports_keys_shapes_and_dtypes() -> None:
    data = weights_to_bytes({"b": torch.zeros(2, 3), "a": torch.zeros((), dtype=torch.int64)})
    header = parse_header(data)
    assert list(header.tensors) == ["a", "b"]
    assert header.tensors["b"] == ((2, 3), torch.float32)
    assert header.tensors["a"] == ((), torch.int64)
    assert header.nbytes == 2 * 3 * 4 + 8
    assert header.data_start + header.nbytes == len(data)


# -- hostile input ---------------------------------------------------------------------------------


def _good() -> bytes:
    return weights_to_bytes({"x": torch.arange(4.0)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated: 0 bytes"),
        (b"\x10\x00\x00", "truncated: 3 bytes"),
        (_craft(b"{}", b"", length=100), "the header declares 100 bytes but only 2 follow"),
        (_craft(b"", b"", length=2**63), "exceeds the limit"),
        (_craft(b"", b"", length=MAX_HEADER_BYTES + 1), "exceeds the limit"),
        (_craft(b"{not json", b""), "not valid JSON"),
        (_craft(b"\xff\xfe{}", b""), "not valid JSON"),
        (_craft(b"[1,2]", b""), "must be a JSON object"),
        (
            _craft(b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{}}', _f32(1)),
            "duplicate",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [2]}}, _f32(2)),
            "exactly 'dtype', 'shape' and 'data_offsets'",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "y": 1}}, _f32(2)),
            "exactly",
        ),
        (
            _craft({"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, _f32(2)),
            "unsupported dtype 'C64'",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, _f32(1)),
            "shape must be",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, _f32(1)),
            "shape must be",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, _f32(1)),
            "data_offsets must be",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, _f32(2)),
            "outside the 8-byte data section",
        ),
        (_craft({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 2]}}, _f32(2)), "outside"),
        (
            _craft(
                {"x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, _f32(2)
            ),
            "needs",
        ),
        (
            _craft({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, _f32(2)),
            "needs 12 bytes",
        ),
        (
            _craft(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                },
                _f32(2),
            ),
            "overlaps",
        ),
        (_craft({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, _f32(2)), "gap"),
        (
            _craft({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, _f32(2)),
            "trailing bytes",
        ),
        (
            _craft(
                {
                    "__metadata__": {"a": 1},
                    "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                _f32(1),
            ),
            "__metadata__",
        ),
        (
            _craft(
                {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, _f32(1, float("nan"))
            ),
            "'x' contains NaN or infinity",
        ),
        (
            _craft(
                {"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}},
                torch.tensor([float("-inf")], dtype=torch.float64).numpy().tobytes(),
            ),
            "NaN or infinity",
        ),
        (_good()[:-1], "trailing bytes|outside"),
    ],
)
def test_malformed_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(WeightsFormatError, match=message):
        weights_from_bytes(data)


def test_absurd_header_length_is_refused_before_reading_it() -> None:
    # Declares 2**62 bytes of header on a 16-byte buffer: refused on the length alone.
    data = (2**62).to_bytes(8, "little") + b"{}" + b" " * 6
    with pytest.raises(WeightsFormatError, match=f"limit of {MAX_HEADER_BYTES} bytes"):
        parse_header(data)


def test_too_large_is_refused_before_parsing() -> None:
    data = _good()
    with pytest.raises(
        WeightsFormatError, match=f"weights of {len(data)} bytes exceed the limit of 20 bytes"
    ):
        weights_from_bytes(data, max_bytes=20)
    assert weights_from_bytes(data, max_bytes=len(data))["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_not_bytes_is_refused() -> None:
    with pytest.raises(WeightsFormatError, match="must be bytes"):
        weights_from_bytes("text")  # type: ignore[arg-type]


def test_memoryview_and_bytearray_are_accepted() -> None:
    data = _good()
    assert weights_from_bytes(bytearray(data))["x"].shape == (4,)
    assert weights_from_bytes(memoryview(data))["x"].shape == (4,)


def test_unexpected_and_missing_keys() -> None:
    expected = SPEC.weight_specs("head")
    state = head_state(_state())
    extra = {**state, "head.evil": torch.zeros(1)}
    with pytest.raises(WeightsFormatError, match=r"unexpected key\(s\): 'head\.evil'"):
        weights_from_bytes(weights_to_bytes(extra), expected=expected)
    missing = {k: v for k, v in state.items() if k != "head.fc2.bias"}
    with pytest.raises(WeightsFormatError, match=r"missing key\(s\): 'head\.fc2\.bias'"):
        weights_from_bytes(weights_to_bytes(missing), expected=expected)


def test_wrong_shape_and_dtype() -> None:
    expected = SPEC.weight_specs("head")
    state = head_state(_state())
    bad_shape = {**state, "head.fc2.bias": torch.zeros(11)}
    with pytest.raises(
        WeightsFormatError, match=r"'head.fc2.bias': shape \(11,\), expected \(10,\)"
    ):
        weights_from_bytes(weights_to_bytes(bad_shape), expected=expected)
    bad_dtype = {**state, "head.fc2.bias": torch.zeros(10, dtype=torch.float64)}
    with pytest.raises(
        WeightsFormatError,
        match=r"'head\.fc2\.bias': dtype torch\.float64, expected torch\.float32",
    ):
        weights_from_bytes(weights_to_bytes(bad_dtype), expected=expected)
    counter = {**state, "head.norm.num_batches_tracked": torch.tensor(3.0)}
    with pytest.raises(WeightsFormatError, match=r"num_batches_tracked': dtype torch\.float32"):
        weights_from_bytes(weights_to_bytes(counter), expected=expected)


@pytest.mark.parametrize(
    ("state", "metadata", "message"),
    [
        ({}, None, "empty"),
        ({"x": [1.0]}, None, "not a tensor"),
        ({"x": torch.tensor([float("nan")])}, None, "NaN or infinity"),
        ({"x": torch.tensor([float("inf")])}, None, "NaN or infinity"),
        ({"__metadata__": torch.zeros(1)}, None, "reserved"),
        ({"": torch.zeros(1)}, None, "non-empty strings"),
        ({"x": torch.zeros(1, dtype=torch.complex64)}, None, "unsupported dtype"),
        ({"x": torch.zeros(2).to_sparse()}, None, "dense"),
        ({"x": torch.zeros(1)}, {"a": 1}, "str to str"),
        ({"x": torch.zeros(1)}, {"a": "b" * 70_000}, "exceeds"),
    ],
)
def test_writing_refuses_bad_states(state: dict, metadata: dict | None, message: str) -> None:
    with pytest.raises(WeightsFormatError, match=message):
        weights_to_bytes(state, metadata)


# -- helpers ---------------------------------------------------------------------------------------


def test_split_select_and_merge() -> None:
    state = _state()
    extractor, head = split_state(state)
    assert extractor == extractor_state(state) == select_part(state, "extractor")
    assert head == head_state(state) == select_part(state, "head")
    assert set(extractor) | set(head) == set(state)
    assert all(k.startswith("head.") for k in head)
    assert merge_states(extractor, head) == state
    with pytest.raises(WeightsFormatError, match="more than one state"):
        merge_states(head, head)
    with pytest.raises(WeightsFormatError, match=r"outside 'extractor\.' and 'head\.'"):
        split_state({**state, "tail.w": torch.zeros(1)})
    with pytest.raises(WeightsFormatError, match="part must be"):
        select_part(state, "tail")  # type: ignore[arg-type]


def test_batch_counters_are_dropped_and_copied_not_averaged() -> None:
    state = head_state(_state())
    key = "head.norm.num_batches_tracked"
    assert is_batch_counter(key) and is_batch_counter("num_batches_tracked")
    assert not is_batch_counter("head.norm.running_mean")
    floats = drop_batch_counters(state)
    assert key not in floats and len(floats) == len(state) - 1
    assert all(v.is_floating_point() for v in floats.values())
    reference = {**state, key: torch.tensor(42)}
    merged = copy_batch_counters(floats, reference)
    assert merged[key].item() == 42 and merged[key].dtype == torch.int64
    assert merged[key] is not reference[key]
    assert set(merged) == set(state)

"""Fuzzing the offload job an edge receives from a device (safetensors + JSON settings).

:func:`decode_job` must raise only :class:`FederationError` for any bytes. The job is a
safetensors buffer (fuzzed on its own in ``tests/node/learning/test_fuzz_serialization.py``)
whose metadata carries the training settings as JSON; here the metadata and tensors are mutated.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flnode.federation.context import FederationError
from flnode.federation.edge import decode_job, encode_job
from flnode.learning.serialization import weights_to_bytes

from ...fuzz_profiles import fuzz
from .test_edge import _job

JOB = _job()
RAW = encode_job(3, JOB)
TENSORS = {"features": JOB.features, "labels": JOB.labels, **JOB.head_state}
META = {
    "task": "3",
    "release_id": "r1",
    "extractor_version": "v",
    "settings": json.dumps({"epochs": 1, "lr": 0.01, "batch_size": 8, "seed": 5}),
}

_json_text = st.sampled_from(
    ["", "{}", "[]", "null", "NaN", '{"epochs": 1e999}', "[" * 300 + "]" * 300, "{" * 5]
) | st.dictionaries(
    st.sampled_from(["epochs", "lr", "batch_size", "seed", "x"]),
    st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5) | st.none() | st.booleans(),
    max_size=5,
).map(lambda d: json.dumps(d))


@st.composite
def mutated_job(draw: st.DrawFn) -> bytes:
    meta = dict(META)
    tensors = dict(TENSORS)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["meta", "drop_meta", "tensor", "drop_tensor", "extra"]))
        if op == "meta":
            key = draw(st.sampled_from([*META, "x"]))
            meta[key] = draw(_json_text) if key == "settings" else draw(st.text(max_size=25))
        elif op == "drop_meta" and meta:
            meta.pop(draw(st.sampled_from(sorted(meta))))
        elif op == "tensor":
            key = draw(st.sampled_from(sorted(TENSORS)))
            shape = draw(st.lists(st.integers(0, 4), max_size=3))
            dtype = draw(st.sampled_from([torch.float32, torch.int64, torch.uint8, torch.float16]))
            tensors[key] = torch.zeros(shape, dtype=dtype)
        elif op == "drop_tensor" and len(tensors) > 1:
            tensors.pop(draw(st.sampled_from(sorted(tensors))))
        else:
            tensors[draw(st.sampled_from(["evil", "head.extra", "images"]))] = torch.zeros(2)
    return weights_to_bytes(tensors, meta)


@fuzz(150)
@given(mutated_job() | st.binary(max_size=80))
def test_any_job_bytes_decode_or_raise_federation_error(raw: bytes) -> None:
    try:
        task, job = decode_job(raw)
    except FederationError as exc:
        assert str(exc)
        return
    assert isinstance(task, int)
    assert 1 <= job.epochs <= 100 and 1 <= job.batch_size <= 65_536


def test_the_unmutated_job_decodes() -> None:
    task, job = decode_job(RAW)
    assert task == 3 and torch.equal(job.features, JOB.features)


@pytest.mark.slow  # a subprocess importing torch and libp2p: ~15 s on a busy machine
def test_a_deeply_nested_settings_text_cannot_kill_an_edge() -> None:
    code = (
        "import eth\n"
        "from flnode.federation.context import FederationError\n"
        "from flnode.federation.edge import decode_job\n"
        "import safetensors.torch, torch\n"
        "meta = {'task': '3', 'release_id': 'r', 'extractor_version': 'v',\n"
        "        'settings': '[' * 1_000_000}\n"
        "raw = safetensors.torch.save({'features': torch.zeros(2, 2)}, metadata=meta)\n"
        "try:\n"
        "    decode_job(raw)\n"
        "except FederationError:\n"
        "    pass\n"
        "print('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "survived", done.returncode

"""Fuzzing the task spec reader: a device fetches a task's spec by CID from peers and parses it.

:func:`load_task_spec` must return a valid :class:`LearningTaskSpec` or raise
:class:`TaskSpecError` for any bytes; the examples shipped in ``examples/`` are mutated line by
line and value by value.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from flnode.learning.taskspec import LearningTaskSpec, TaskSpecError, load_task_spec

from ...fuzz_profiles import fuzz

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("task-*.toml"))
TEXTS = [p.read_text() for p in EXAMPLES]
DOCS = [tomllib.loads(t) for t in TEXTS]

_values = st.recursive(
    st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.text(max_size=10)
    | st.sampled_from(["frozen", "dpsgd-full", "dpsgd-extractor", "mnist", "multi-krum", "l2"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated_doc(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in draw(st.sampled_from(DOCS)).items()
    }
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*sorted(doc), "extra"]))
        table = doc.get(section)
        if isinstance(table, dict) and table and draw(st.booleans()):
            key = draw(st.sampled_from([*sorted(table), "x"]))
            if draw(st.integers(0, 4)):
                table[key] = draw(_values)
            else:
                table.pop(key, None)
        elif draw(st.booleans()):
            doc.pop(section, None)
        else:
            doc[section] = draw(_values)
    return tomli_w.dumps(doc).encode()


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    lines = draw(st.sampled_from(TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "repeat", "garble"]))
        if op == "delete":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        else:
            lines[i] = draw(st.text(max_size=20))
        if not lines:
            break
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def test_the_examples_load() -> None:
    assert len(EXAMPLES) >= 3
    for text in TEXTS:
        assert isinstance(load_task_spec(text.encode()), LearningTaskSpec)


@fuzz(120)
@given(mutated_doc() | mutated_text() | st.binary(max_size=120))
def test_any_spec_bytes_load_or_raise_task_spec_error(raw: bytes) -> None:
    try:
        spec = load_task_spec(raw)
    except TaskSpecError as exc:
        assert str(exc)
        return
    assert LearningTaskSpec.model_validate(spec.model_dump()) == spec


def test_an_oversized_spec_is_refused_before_parsing() -> None:
    with pytest.raises(TaskSpecError, match="limit"):
        load_task_spec(b"#" * (64 * 1024 + 1))


def test_a_deeply_nested_spec_is_a_task_spec_error() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # py-evm sets 100,000 (a 64 KiB spec then nests too little)
    try:
        with pytest.raises(TaskSpecError):
            load_task_spec(b"a = " + b"[" * 3000 + b"]" * 3000)
    finally:
        sys.setrecursionlimit(limit)

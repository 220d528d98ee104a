"""Fuzzing the config file and ``FLNODE_*`` variables, and strict JSON: only their own errors.

``load_config`` reads ``<datadir>/config.toml`` and the environment; whatever they hold, it
returns a valid :class:`NodeConfig` or raises :class:`ConfigError` (never a ``RecursionError`` of
the TOML parser, a ``TypeError`` of a validator...), and it changes nothing: the file keeps its
bytes, and the next load of a good file gives the same configuration as before.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from flnode.config import CONFIG_FILE, NodeConfig, default_config_toml, load_config
from flnode.errors import ConfigError
from flnode.strictjson import loads_strict, nesting_depth

from ..fuzz_profiles import fuzz

SECTIONS = {name: field.annotation for name, field in NodeConfig.model_fields.items()}
KEYS = sorted(
    (section, key)
    for section, model in SECTIONS.items()
    for key in model.model_fields  # type: ignore[union-attr]
)
DEFAULT_TOML = default_config_toml()
DEFAULTS = NodeConfig()

toml_scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, -(2**63)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=12)
    | st.sampled_from(
        ["debug", "json", "device", "miner", "127.0.0.1", "0.0.0.0", "::1", "/ip4/1.2.3.4/tcp/1"]
    )
    | st.dates()
    | st.datetimes()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def structured_documents(draw: st.DrawFn) -> str:
    """A TOML document of known and unknown sections and keys with values of any TOML type."""
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 5)):
            section, key = draw(st.sampled_from(KEYS))
        else:
            section = draw(st.sampled_from([*SECTIONS, "nope", "Node", ""]))
            key = draw(st.text(max_size=8))
        value = draw(toml_values)
        if draw(st.integers(0, 12)) == 0:
            doc[section] = value  # a section that is not a table
        elif isinstance(doc.get(section, {}), dict):
            doc.setdefault(section, {})[key] = value
    return tomli_w.dumps(doc)


@st.composite
def mutated_default(draw: st.DrawFn) -> str:
    """The generated default file with lines deleted, repeated or given another value."""
    lines = DEFAULT_TOML.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "repeat", "value", "garble"]))
        if op == "delete":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "value" and " = " in lines[i]:
            key = lines[i].split(" = ")[0]
            lines[i] = tomli_w.dumps({key: draw(toml_values)}).strip()
        else:
            lines[i] = draw(st.text(max_size=20))
        if not lines:
            break
    return "\n".join(lines)


documents = (
    structured_documents()
    | mutated_default()
    | st.text(max_size=200)
    | st.sampled_from(
        [
            "a = " + "[" * 3000 + "]" * 3000,
            "[node]\nx = " + "{a=" * 1500 + "1" + "}" * 1500,
            "[" + "a." * 3000 + "a]",
            "[node]\nroles = [" + ", ".join(['"device"'] * 2000) + "]",
            "\x00",
            "[node]\nroles = []",
            "[api]\nport = 1e400",
            "[api]\nport = nan",
        ]
    )
)


@contextlib.contextmanager
def datadir_with(text: str | bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="flnode-fuzz-config-") as d:
        path = Path(d) / CONFIG_FILE
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        yield Path(d)


def _all_finite(value: Any, where: str = "") -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _all_finite(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, tuple | list):
        for item in value:
            _all_finite(item, where)
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} is {value}"


def load_or_error(datadir: Path, env: dict[str, str] | None = None) -> NodeConfig | None:
    path = datadir / CONFIG_FILE
    before = path.read_bytes() if path.exists() else None
    try:
        cfg = load_config(datadir, env=env or {})
    except ConfigError as exc:
        assert str(exc)  # a message for people
        cfg = None
    assert (path.read_bytes() if path.exists() else None) == before  # the file is untouched
    if cfg is not None:
        assert isinstance(cfg, NodeConfig)
        _all_finite(cfg)
        assert NodeConfig.model_validate(cfg.model_dump()) == cfg  # valid as it stands
    return cfg


@fuzz(120)
@given(documents)
def test_any_config_file_loads_or_raises_config_error(text: str) -> None:
    with datadir_with(text) as datadir:
        load_or_error(datadir)
    # Nothing leaked into the next load (no module state, no cache).
    with datadir_with(DEFAULT_TOML) as datadir:
        assert load_config(datadir, env={}) == DEFAULTS


@fuzz(100)
@given(st.binary(max_size=200))
def test_any_config_bytes_load_or_raise_config_error(raw: bytes) -> None:
    with datadir_with(raw) as datadir:
        load_or_error(datadir)


_env_names = st.sampled_from([f"FLNODE_{s.upper()}_{k.upper()}" for s, k in KEYS]) | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", max_size=20
).map(lambda s: "FLNODE_" + s)
_env_values = (
    st.text(max_size=20)
    | st.sampled_from(["", ",", "nan", "inf", "-1", "1e400", "99999999999999999999999", "true"])
    | st.integers().map(str)
    | st.lists(st.sampled_from(["device", "miner", "x", " "]), max_size=4).map(",".join)
)


@fuzz(100)
@given(st.dictionaries(_env_names, _env_values, max_size=4))
def test_any_environment_loads_or_raises_config_error(env: dict[str, str]) -> None:
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    with datadir_with(DEFAULT_TOML) as datadir:
        load_or_error(datadir, env)


def test_deeply_nested_toml_is_a_config_error() -> None:
    """Found by fuzzing: tomllib parses nesting recursively, so ``a = [[[[...`` 3,000 deep made
    ``load_config`` raise ``RecursionError`` (the CLI would print a traceback)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # py-evm, once imported, raises it to 100,000
    try:
        with (
            datadir_with("a = " + "[" * 3000 + "]" * 3000) as datadir,
            pytest.raises(ConfigError, match="nested too deeply"),
        ):
            load_config(datadir, env={})
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    "line",
    [
        "[p2p]\nmax_clock_skew_s = inf",
        "[p2p]\nban_threshold = -inf",
        "[api]\ncall_timeout_s = inf",
        "[storage]\ngc_interval_s = nan",
    ],
)
def test_non_finite_numbers_are_a_config_error(line: str) -> None:
    """Found by fuzzing: ``inf`` passed ``gt=0``, and ``p2p.max_clock_skew_s = inf`` then
    crashed the P2P service at start with ``OverflowError`` (``int(inf * 1000)``)."""
    with datadir_with(line) as datadir, pytest.raises(ConfigError, match="finite"):
        load_config(datadir, env={})
    with pytest.raises(ConfigError, match="finite"):
        load_config(None, env={"FLNODE_P2P_MAX_CLOCK_SKEW_S": "inf"})


# ---------------------------------------------------------------------------------------------
# Strict JSON (network files, model specs, privacy ledgers, safetensors headers)
# ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=15,
)


@fuzz(100)
@given(json_values)
def test_strict_json_round_trips_ordinary_documents(value: Any) -> None:
    assert loads_strict(json.dumps(value)) == value


def _text_mutations(draw: st.DrawFn) -> str:
    text = json.dumps(draw(json_values))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "[", "{", '"', ","]))
        text = text[:pos] + piece + text[pos:]
    return text


@fuzz(120)
@given(
    st.text(max_size=60)
    | st.binary(max_size=60)
    | st.composite(_text_mutations)()
    | st.sampled_from(["[" * 100_000, '{"a":' * 50_000, "1e400", "-1e400", '{"a":1,"a":2}'])
)
def test_strict_json_raises_only_value_error_and_never_returns_nan_or_inf(
    data: str | bytes,
) -> None:
    try:
        value = loads_strict(data)
    except ValueError:
        return
    _finite(value)


def _finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, list):
        for item in value:
            _finite(item)
    elif isinstance(value, dict):
        for item in value.values():
            _finite(item)


@pytest.mark.parametrize("text", ["1e400", "[-1e400]", '{"x": 1.5e308, "y": 2e308}'])
def test_numbers_beyond_a_float_are_refused(text: str) -> None:
    """Found by fuzzing: ``1e400`` parsed to ``inf`` although the module refuses ``Infinity``."""
    with pytest.raises(ValueError, match="out of range"):
        loads_strict(text)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 50_000, "[" * 513 + "]" * 513])
def test_deep_nesting_is_a_value_error(text: str) -> None:
    """Found by fuzzing: a ``RecursionError`` escaped, and callers catching ``ValueError`` (the
    network file loader) let it through."""
    with pytest.raises(ValueError, match="nested deeper than 512"):
        loads_strict(text)


@fuzz(100)
@given(json_values, st.integers(0, 3))
def test_nesting_depth_matches_the_structure(value: Any, extra: int) -> None:
    def depth(v: Any) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    wrapped = value
    for _ in range(extra):
        wrapped = {"[{": [wrapped, "]]]"]}
    assert nesting_depth(json.dumps(wrapped)) == depth(wrapped)
    assert loads_strict(json.dumps(wrapped), max_depth=depth(wrapped)) == wrapped


def test_deep_nesting_cannot_crash_a_process_with_py_evm_loaded() -> None:
    """Found by fuzzing: py-evm raises the recursion limit to 100,000 when imported (every node
    with a ledger), and then ``json``'s C scanner overflowed the C stack on ``[[[[...`` and the
    process died with SIGSEGV (the first fuzz run of this file crashed pytest)."""
    code = (
        "import eth, sys\n"
        "assert sys.getrecursionlimit() >= 100_000\n"
        "from flnode.strictjson import loads_strict\n"
        "for text in ('[' * 1_000_000, '{\"a\":' * 300_000):\n"
        "    try:\n"
        "        loads_strict(text)\n"
        "    except ValueError:\n"
        "        pass\n"
        "print('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "survived", done


def test_ordinary_numbers_still_parse() -> None:
    assert loads_strict("[1.5e308, -0.0, 1e-400, 12345678901234567890]") == [
        1.5e308,
        -0.0,
        0.0,
        12345678901234567890,
    ]

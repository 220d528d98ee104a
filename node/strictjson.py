"""JSON parsing for bytes from outside: no NaN/Infinity, no duplicate keys, bounded nesting.

Python's ``json`` accepts ``NaN`` and lets a later duplicate key silently win; both let two
parsers disagree about the same bytes, which a signed or hashed document must never allow. A
number too large for a float (``1e999``) would become infinity the same way, so it is refused too.

Nesting is bounded *before* ``json`` sees the text. ``json``'s C scanner recurses once per level
and relies on Python's recursion limit to stop, and py-evm raises that limit to 100,000 when it is
imported (every node with a ledger): then ``[[[[...`` 100,000 deep overflows the C stack and kills
the process with a segmentation fault instead of raising ``RecursionError``. The depth is counted
by a flat scan over the brackets outside strings, so it cannot overflow anything.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

MAX_DEPTH = 512
"""Deepest nesting of arrays and objects accepted (flnode's documents nest a few levels)."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range for a float")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON ``text``, brackets inside strings not counted.

    Linear time, no recursion. On malformed text (an unterminated string) it may over-count,
    never under-count, which only matters for text the parser refuses anyway.
    """
    if text.count("[") + text.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(0, max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0))


def loads_strict(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``ValueError`` on NaN/Infinity (written as such or as a number
    out of a float's range), on duplicate keys and on nesting deeper than ``max_depth``."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    if not isinstance(text, str):
        raise ValueError(f"JSON must be text or bytes, not {type(data).__name__}")
    # Cheap bound first: the depth cannot exceed the number of opening brackets.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except RecursionError:  # only if the interpreter's own limit is below max_depth
        raise ValueError("JSON nested too deeply") from None

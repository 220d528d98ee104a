"""JSON parsing for bytes from outside: no NaN/Infinity constants, no duplicate keys.

Python's ``json`` accepts ``NaN`` and lets a later duplicate key silently win; both let two
parsers disagree about the same bytes, which a signed or hashed document must never allow.
"""

from __future__ import annotations

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_strict(data: str | bytes) -> Any:
    """``json.loads`` that raises ``ValueError`` on NaN/Infinity and on duplicate keys."""
    return json.loads(data, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)

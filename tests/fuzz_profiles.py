"""Hypothesis settings shared by the fuzz tests (``tests/**/test_fuzz_*.py``).

The default suite runs each fuzzer with a small, fixed number of examples, so the whole set adds
well under a minute. To fuzz harder, select a profile with ``FLNODE_FUZZ``::

    FLNODE_FUZZ=deep .venv/bin/pytest tests -k test_fuzz_     # 20x the examples
    FLNODE_FUZZ=soak .venv/bin/pytest tests -k test_fuzz_     # 200x
    FLNODE_FUZZ=50 .venv/bin/pytest tests/node/p2p/test_fuzz_envelope.py  # any factor

Deeper profiles also print hypothesis' statistics with ``--hypothesis-show-statistics``. The
examples that failed once are replayed first on the next run (hypothesis' example database in
``.hypothesis/``), so a found bug stays found while it is being fixed.

This is not ``tests/conftest.py``: each fuzz module imports :func:`fuzz` explicitly.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

ENV = "FLNODE_FUZZ"
PROFILES = {"default": 1, "deep": 20, "soak": 200}


def scale() -> int:
    """The factor on every fuzzer's example count, from ``FLNODE_FUZZ`` (default 1)."""
    value = os.environ.get(ENV, "default").strip().lower() or "default"
    if value in PROFILES:
        return PROFILES[value]
    try:
        factor = int(value)
    except ValueError:
        raise ValueError(
            f"{ENV}={value!r}: use one of {', '.join(PROFILES)} or a positive integer"
        ) from None
    if factor < 1:
        raise ValueError(f"{ENV}={value!r}: the factor must be at least 1")
    return factor


def fuzz(max_examples: int, **kwargs: object) -> settings:
    """Settings for one fuzzer: ``max_examples`` times the profile's factor, no deadline (the
    machine is shared and busy), and no health check that only complains about slow input
    generation or large inputs, which fuzzers produce on purpose."""
    kwargs.setdefault(
        "suppress_health_check",
        [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    return settings(
        max_examples=max_examples * scale(),
        deadline=None,
        **kwargs,  # type: ignore[arg-type]
    )

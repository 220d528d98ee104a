"""Differential test: flnode's FedAvg, Krum, Multi-Krum, median and trimmed mean against Flower's.

The comparisons, the parameter mapping between the two libraries and the tolerance live in
``bench/aggregation_vs_flower.py`` (read its docstring); this runs them under pytest (Flower,
``flwr==1.42.0``, is a dev dependency for it). ``python -m bench.aggregation_vs_flower`` records
the same check into ``bench/results/aggregation_vs_flower.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from bench import aggregation_vs_flower as diff  # noqa: E402


@pytest.mark.parametrize("case", diff.CASES, ids=lambda c: c.name)
def test_same_result_as_flower(case: diff.Case) -> None:
    """Where the definitions coincide, both of Flower's implementations give our aggregate."""
    record = diff.compare(case)
    assert record["max_rel_error_vs_legacy"] <= diff.TOLERANCE, record
    assert record["max_rel_error_vs_message_api"] <= diff.TOLERANCE, record
    if "same_selection" in record:
        assert record["same_selection"], record
        assert record["flnode_matches_exact"], record


@pytest.mark.parametrize("finding", diff.FINDINGS, ids=lambda f: f[0].name)
def test_findings_still_hold(finding: tuple[diff.Case, str, str]) -> None:
    """Each recorded difference shows what its explanation says (and flnode is the exact one
    where Flower's arithmetic is at fault): if Flower fixes it, this fails and the record goes."""
    case, _kind, _why = finding
    assert diff.finding_holds(diff.compare(case))


def test_flnode_krum_is_exact_on_realistic_rounds() -> None:
    """On near-global updates (a round's real shape) flnode's Krum is the exact Krum choice."""
    for seed in diff.KRUM_SEEDS:
        record = diff.compare(diff.Case("krum", {"f": 2}, "near-global", 10, seed, 2))
        assert record["flnode_matches_exact"], record
        assert record["agree_legacy"], record

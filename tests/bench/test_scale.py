"""The pure logic of ``bench/scale.py``: the growth fit, the memory estimate and the skip decision.

No devnet is started here; ``python -m bench.scale`` runs the benchmark itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from bench import scale  # noqa: E402


def test_fit_of_a_line_recovers_slope_intercept_and_exponent_one() -> None:
    fit = scale.fit_growth([10, 20, 40], [5.0, 10.0, 20.0])
    assert fit is not None
    assert fit["points"] == 3
    assert fit["slope_s_per_device"] == pytest.approx(0.5)
    assert fit["intercept_s"] == pytest.approx(0.0, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["loglog_exponent"] == pytest.approx(1.0)
    assert fit["loglog_coefficient_s"] == pytest.approx(0.5)


def test_fit_of_a_constant_has_exponent_zero_and_quadratic_growth_two() -> None:
    flat = scale.fit_growth([10, 50, 100], [3.0, 3.0, 3.0])
    assert flat is not None
    assert flat["slope_s_per_device"] == pytest.approx(0.0, abs=1e-9)
    assert flat["loglog_exponent"] == pytest.approx(0.0, abs=1e-9)
    assert flat["r2"] == 1.0  # no variance to explain
    square = scale.fit_growth([10, 50, 100], [x * x / 100 for x in (10, 50, 100)])
    assert square is not None
    assert square["loglog_exponent"] == pytest.approx(2.0)
    assert square["r2"] < 1.0  # a line does not fit a parabola exactly


def test_fit_leaves_out_missing_and_non_positive_values() -> None:
    fit = scale.fit_growth([10, 25, 50, 100], [2.0, None, 8.0, 0.0])
    assert fit is not None
    assert fit["devices"] == [10, 50]
    assert fit["points"] == 2


@pytest.mark.parametrize(
    ("xs", "ys"), [([], []), ([10], [1.0]), ([10, 10], [1.0, 2.0]), ([10, 20], [1.0, None])]
)
def test_fit_needs_two_distinct_sizes(xs: list[int], ys: list[float | None]) -> None:
    assert scale.fit_growth(xs, ys) is None


def test_memory_needed_counts_miners_and_manufacturer() -> None:
    need = scale.memory_needed_gib(10, per_device_gib=0.5, per_other_gib=1.0)
    assert need == pytest.approx(10 * 0.5 + (scale.MINERS + scale.MANUFACTURERS) * 1.0)


def test_a_size_that_fits_is_not_skipped() -> None:
    reason = scale.skip_reason(
        10, available_gib=20.0, per_device_gib=0.5, per_other_gib=0.5, reserve_gib=1.0
    )
    assert reason is None


def test_a_size_beyond_the_available_memory_is_skipped_with_the_numbers() -> None:
    reason = scale.skip_reason(
        50, available_gib=20.0, per_device_gib=0.5, per_other_gib=0.5, reserve_gib=1.0
    )
    assert reason is not None
    assert "27.5 GiB" in reason and "20.0 GiB" in reason


def test_the_reserve_counts_against_the_available_memory() -> None:
    kwargs = {"per_device_gib": 1.0, "per_other_gib": 1.0, "reserve_gib": 2.0}
    assert scale.skip_reason(10, available_gib=17.0, **kwargs) is None  # 15 <= 17 - 2
    assert scale.skip_reason(10, available_gib=16.9, **kwargs) is not None


def test_a_size_beyond_the_node_limit_is_skipped() -> None:
    reason = scale.skip_reason(
        60, available_gib=1000.0, per_device_gib=0.1, per_other_gib=0.1, reserve_gib=0.0
    )
    assert reason is not None and "limit" in reason
    fits = scale.skip_reason(
        59, available_gib=1000.0, per_device_gib=0.1, per_other_gib=0.1, reserve_gib=0.0
    )
    assert fits is None


def test_estimate_uses_defaults_until_a_size_ran_then_its_largest_process() -> None:
    records: list[dict] = [{"devices": 10, "status": "skipped", "reason": "x"}]
    device, other, source = scale.estimate_per_process(records, 0.7, 0.6)
    assert (device, other) == (0.7, 0.6) and "default" in source
    records.append(
        {
            "devices": 10,
            "status": "ok",
            "peak_pss_per_role_gib": {"device": 0.5, "miner": 0.4, "manufacturer": 0.45},
        }
    )
    device, other, source = scale.estimate_per_process(records, 0.7, 0.6)
    assert device == pytest.approx(0.5 * scale.ESTIMATE_MARGIN)
    assert other == pytest.approx(0.45 * scale.ESTIMATE_MARGIN)
    assert "10 devices" in source


def test_largest_fitting_fills_the_room_left_after_the_other_nodes() -> None:
    others = (scale.MINERS + scale.MANUFACTURERS) * 0.5
    n = scale.largest_fitting(
        available_gib=10.0 + others + 1.0,
        per_device_gib=0.5,
        per_other_gib=0.5,
        reserve_gib=1.0,
        limit=59,
    )
    assert n == 20
    assert (
        scale.skip_reason(
            n,
            available_gib=10.0 + others + 1.0,
            per_device_gib=0.5,
            per_other_gib=0.5,
            reserve_gib=1.0,
        )
        is None
    )
    assert (
        scale.skip_reason(
            n + 1,
            available_gib=10.0 + others + 1.0,
            per_device_gib=0.5,
            per_other_gib=0.5,
            reserve_gib=1.0,
        )
        is not None
    )


def test_largest_fitting_respects_the_limit_and_a_full_machine() -> None:
    kwargs = {"per_device_gib": 0.5, "per_other_gib": 0.5, "reserve_gib": 1.0}
    assert scale.largest_fitting(available_gib=1000.0, limit=59, **kwargs) == 59
    assert scale.largest_fitting(available_gib=2.0, limit=59, **kwargs) == 0


def test_fill_adds_a_size_only_beyond_every_size_that_ran() -> None:
    import argparse

    args = argparse.Namespace(reserve_gib=0.0, shards=120)
    ran = {
        "devices": 10,
        "status": "ok",
        "peak_pss_per_role_gib": {"device": 1.0, "miner": 1.0, "manufacturer": 1.0},
    }
    per = scale.ESTIMATE_MARGIN  # 1.1 GiB per process once 10 devices ran
    others = (scale.MINERS + scale.MANUFACTURERS) * per
    assert scale.fill_size([ran], args, available=others + 20 * per + 0.01) == 20
    assert scale.fill_size([ran], args, available=others + 10 * per + 0.01) is None
    failed = {"devices": 20, "status": "failed", "reason": "x"}
    assert scale.fill_size([ran, failed], args, available=1000.0) is None
    assert scale.fill_size([], args, available=1000.0) is None


def test_merge_keeps_earlier_sizes_not_measured_again_tagged_with_their_run() -> None:
    earlier = {
        "date": "2026-12-07T02:00:00+00:00",
        "command": "python -m bench.scale",
        "records": [
            {"devices": 10, "status": "ok", "round_s": 11.0},
            {"devices": 25, "status": "skipped", "reason": "memory"},
            {"devices": 21, "status": "ok", "round_s": 20.0},
        ],
    }
    records, run = scale.merge_records(earlier, [25])
    assert [r["devices"] for r in records] == [10, 21]
    assert all(r["run"]["command"] == "python -m bench.scale" for r in records)
    assert run["date"] == "2026-12-07T02:00:00+00:00"
    again, _ = scale.merge_records({**earlier, "date": "later", "records": records}, [])
    assert all(r["run"]["date"] == "2026-12-07T02:00:00+00:00" for r in again)  # kept


def test_a_bounded_layout_bounds_the_devices_only() -> None:
    full = scale.devnet_layout(6, 120, None)
    bounded = scale.devnet_layout(6, 120, 3)
    assert sorted(n.name for n in full.nodes) == sorted(n.name for n in bounded.nodes)
    for node in bounded.nodes:
        peers = node.config.get("p2p", {}).get("max_peers")
        assert peers == (3 if node.roles == ("device",) else None), node
    assert all("p2p" not in n.config for n in full.nodes)
    assert bounded.config == full.config == {"federation": {"shard_count": 120}}

"""The round report's critical-path split (pure arithmetic over the nodes' records)."""

from __future__ import annotations

import tomllib

import pytest

from flnode.devnet.training import DEFAULT_TASK_SPEC, critical_path, edit_spec

T0 = 1_000.0


def _miner(**over: float | None) -> dict[str, float | None]:
    record: dict[str, float | None] = {
        "seen_open_at": T0,
        "closable_at": T0 + 14.0,
        "fetched_at": T0 + 14.5,
        "judged_at": T0 + 14.75,
        "commit_seen_at": T0 + 16.0,
    }
    record.update(over)
    return record


def _device(start: float, train: float, submitted: float) -> dict[str, float]:
    return {
        "training_started_at": T0 + start,
        "train_s": train,
        "head_s": 0.0,
        "submitted_at": T0 + submitted,
    }


def test_the_split_follows_the_device_that_submitted_last_and_adds_up() -> None:
    devices = {
        "fast": _device(start=1.0, train=12.0, submitted=13.25),  # trained longest, not last
        "late": _device(start=2.0, train=10.0, submitted=13.5),
    }
    path = critical_path(_miner(), devices)
    assert path is not None
    assert path["train_s"] == pytest.approx(10.0), "train_s must be the last submitter's"
    assert path["max_train_s"] == pytest.approx(12.0)
    assert path["round_s"] == pytest.approx(16.0)
    assert path["overhead_s"] == pytest.approx(6.0)
    assert path["start_s"] == pytest.approx(2.0)
    assert path["store_s"] == pytest.approx(1.5)
    assert path["inclusion_s"] == pytest.approx(0.5)
    assert path["transfer_s"] == pytest.approx(0.5)
    assert path["aggregation_s"] == pytest.approx(0.25)
    assert path["consensus_s"] == pytest.approx(1.25)
    parts = ("start_s", "store_s", "inclusion_s", "transfer_s", "aggregation_s", "consensus_s")
    assert sum(path[p] for p in parts) == pytest.approx(path["overhead_s"])


def test_updates_fetched_before_the_round_closed_cost_no_transfer_time() -> None:
    path = critical_path(
        _miner(fetched_at=T0 + 5.0), {"d": _device(start=1.0, train=10.0, submitted=12.0)}
    )
    assert path is not None
    assert path["transfer_s"] == 0.0
    assert path["aggregation_s"] == pytest.approx(0.75)


@pytest.mark.parametrize("missing", ["seen_open_at", "closable_at", "judged_at", "commit_seen_at"])
def test_records_without_the_moments_give_no_split(missing: str) -> None:
    devices = {"d": _device(start=1.0, train=10.0, submitted=12.0)}
    assert critical_path(_miner(**{missing: None}), devices) is None


def test_a_round_nobody_submitted_to_gives_no_split() -> None:
    assert critical_path(_miner(), {}) is None
    assert critical_path(_miner(), {"d": {"refused": "budget"}}) is None


def test_edit_spec_sets_the_named_keys_and_nothing_else() -> None:
    spec = tomllib.loads(edit_spec(rounds=3, rule="multikrum", deadline_s=45.0))
    default = tomllib.loads(DEFAULT_TASK_SPEC)
    assert spec["training"]["rounds"] == 3
    assert spec["aggregation"]["rule"] == "multikrum"
    assert spec["round"]["deadline_s"] == 45.0
    default["training"]["rounds"] = 3
    default["aggregation"]["rule"] = "multikrum"
    default["round"]["deadline_s"] = 45.0
    assert spec == default


def test_edit_spec_refuses_a_key_the_spec_lacks() -> None:
    with pytest.raises(KeyError, match="'roundz' is on 0 lines"):
        edit_spec(roundz=3)

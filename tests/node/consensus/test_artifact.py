"""The checked-in compiled contract is exactly what the Vyper sources compile to, and is installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flnode.consensus.artifact import (
    ARTIFACT_FILE,
    compile_artifact,
    load_artifact,
    render_artifact,
)

ROOT = Path(__file__).resolve().parents[3]


def test_artifact_is_reproducible_from_the_sources() -> None:
    assert ARTIFACT_FILE.read_text(encoding="utf-8") == render_artifact(compile_artifact()), (
        "contracts/ledger.json is stale: run `make contracts`"
    )


def test_artifact_is_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["flnode.consensus"]
    assert "contracts/*.vy" in patterns and "contracts/*.json" in patterns


def test_artifact_exposes_the_storage_slots_genesis_writes() -> None:
    artifact = load_artifact()
    slots = {
        artifact.slot("miners", "stake"),
        artifact.slot("miners", "min_stake"),
        artifact.slot("miners", "leave_delay"),
        artifact.slot("miners", "total_staked"),
        artifact.slot("idle_close_blocks"),
    }
    assert len(slots) == 5
    assert artifact.vyper_version.startswith("0.4.3")
    assert len(artifact.runtime) < 24_576  # EIP-170, even though genesis code is not bound by it

"""`flnode devnet run` on its defaults (what `make run` does): 14 real processes, 10 rounds.

Slow (several minutes on 2 cores): run with `make test-all` or `pytest -m slow`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_default_devnet_task_meets_its_accuracy_targets(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    d = tmp_path / "devnet"
    try:
        done = subprocess.run(
            [*flnode_exe, "devnet", "run", "--dir", str(d), "--timeout", "2000"],
            capture_output=True,
            text=True,
            env=clean_env,
            timeout=2300,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        report = json.loads((d / "report.json").read_text())
        # Every round committed, every node holds the same final model.
        assert [r["round"] for r in report["rounds"]] == list(range(1, 11))
        assert report["all_nodes_agree_on_final_model"], report["nodes"]
        # The targets: >= 94 % clean test accuracy, >= 5 points above the public-only model.
        assert report["final_accuracy"] >= 0.94, report["final_accuracy"]
        assert report["gain_points"] >= 5.0, report["gain_points"]
        # Privacy: every device within the per-sample budget of the task.
        devices = report["devices"]
        assert len(devices) == 8
        assert all(0 < dev["epsilon_spent"] <= 10.0 for dev in devices.values()), devices
        # The ledger: reputations moved, and rewards credited equal what the rounds paid out.
        assert all(dev["reputation"] != 0.5 for dev in devices.values()), devices
        assert int(report["owed_total_wei"]) == int(report["paid_wei"]) > 0
        assert int(report["paid_wei"]) <= int(report["deposit_wei"])
        assert (d / "report.md").read_text().startswith("# flnode devnet run")
        assert (d / "accuracy.png").stat().st_size > 1000
    finally:
        subprocess.run(
            [*flnode_exe, "devnet", "down", "--dir", str(d), "--grace", "3"],
            capture_output=True,
            env=clean_env,
            timeout=120,
        )

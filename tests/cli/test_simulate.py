"""`flnode simulate` as a user runs it (a small real-MNIST task)."""

from __future__ import annotations

import json
import subprocess


def test_simulate_json(flnode_exe: list[str], clean_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [
            *flnode_exe,
            "simulate",
            "--devices",
            "3",
            "--rounds",
            "2",
            "--public-size",
            "300",
            "--pretrain-epochs",
            "2",
            "--max-samples-per-device",
            "300",
            "--epsilon",
            "100",
            "--threads",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["config"]["n_devices"] == 3
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    assert "ε=100 per sample" in out["privacy"]
    assert out["epsilon_spent"] == [100.0, 100.0, 100.0]
    assert out["final_head_cid"].startswith("bafkrei")
    assert 0.0 <= out["rounds"][-1]["clean"] <= 1.0
    assert "round 2" in proc.stderr  # progress is shown on stderr


def test_simulate_rejects_bad_values(flnode_exe: list[str]) -> None:
    for args, fragment in (
        (["--epsilon", "zero"], "--epsilon"),
        (["--rule", "bogus"], "unknown aggregation rule"),
        (["--attack", "bribe"], "unknown attack"),
        (["--rule", "multikrum", "--rule-param", "f"], "KEY=VALUE"),
    ):
        proc = subprocess.run(
            [*flnode_exe, "simulate", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert fragment in proc.stderr
        assert "Traceback" not in proc.stderr

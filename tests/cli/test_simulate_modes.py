"""`flnode simulate --mode/--spec` as a user runs it: DP-SGD presets, task spec files, errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SMALL = [
    "--devices", "2",
    "--rounds", "1",
    "--public-size", "100",
    "--pretrain-epochs", "1",
    "--max-samples-per-device", "300",
    "--threads", "1",
]  # fmt: skip


def _simulate(
    flnode_exe: list[str], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*flnode_exe, "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_dpsgd_full_preset_with_overrides(flnode_exe: list[str], clean_env: dict[str, str]) -> None:
    proc = _simulate(
        flnode_exe, clean_env, "--mode", "dpsgd-full", "--epsilon", "3", *SMALL, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "dpsgd-full"
    assert out["config"]["n_devices"] == 2 and out["config"]["epsilon"] == 3.0
    assert out["config"]["dp_lr"] == 4.0  # from the preset: not given on the command line
    assert len(out["accuracy_per_round"]) == 1
    assert all(2.5 < e <= 3.0 for e in out["epsilon_spent"])
    assert "δ=1e-05 per sample over the whole task" in out["privacy"]


def test_spec_file_runs_and_reports(
    flnode_exe: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "task.toml"
    spec.write_text('name = "t"\n[privacy]\nmode = "dpsgd-extractor"\nepsilon = 8.0\n')
    proc = _simulate(flnode_exe, clean_env, "--spec", str(spec), *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "mode dpsgd-extractor, 2 devices" in proc.stdout
    assert "public-only:" in proc.stdout and "round 1:" in proc.stdout
    assert "features: ε=" in proc.stdout  # the feature release is reported per sample


def test_bad_spec_and_conflicting_options_are_usage_errors(
    flnode_exe: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text("[privacy]\nepsilon = -1\n")
    proc = _simulate(flnode_exe, clean_env, "--spec", str(spec))
    assert proc.returncode == 2
    assert "privacy.epsilon" in proc.stderr
    good = tmp_path / "good.toml"
    good.write_text('[privacy]\nmode = "dpsgd-full"\n')
    proc = _simulate(flnode_exe, clean_env, "--spec", str(good), "--mode", "frozen")
    assert proc.returncode == 2 and "--mode comes from the spec" in proc.stderr
    proc = _simulate(flnode_exe, clean_env, "--mode", "dpsgd-full", "--epsilon", "inf")
    assert proc.returncode == 2 and "needs a finite epsilon" in proc.stderr

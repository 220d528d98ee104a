"""`flnode task ...` and `flnode devnet run` refuse bad input before touching any node."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(exe: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=env, timeout=120)


def test_publish_refuses_a_bad_spec_naming_the_field(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[privacy]\nmode = "dpsgd-full"\nepsilon = -1\n', encoding="utf-8")
    done = _run(
        flnode_exe, clean_env, "task", "publish", "--datadir", str(tmp_path), "--spec", str(spec)
    )
    assert done.returncode != 0
    assert "epsilon" in done.stderr


def test_status_of_a_node_that_is_not_running_says_so(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    done = _run(flnode_exe, clean_env, "task", "status", "1", "--datadir", str(tmp_path / "none"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()


def test_task_ids_start_at_one(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    done = _run(flnode_exe, clean_env, "task", "join", "0", "--datadir", str(tmp_path))
    assert done.returncode == 2
    assert "0" in done.stderr


def test_devnet_run_refuses_a_bad_spec_before_starting_anything(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text("[round]\nmin_updates = 9\nupdates_per_round = 8\n", encoding="utf-8")
    d = tmp_path / "devnet"
    done = _run(flnode_exe, clean_env, "devnet", "run", "--dir", str(d), "--spec", str(spec))
    assert done.returncode != 0
    assert "min_updates" in done.stderr
    assert not d.exists()


def test_devnet_run_shows_its_default_spec(
    flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    done = _run(flnode_exe, clean_env, "devnet", "run", "--show-spec")
    assert done.returncode == 0
    assert 'mode = "dpsgd-full"' in done.stdout
    assert "[round]" in done.stdout

"""The `flnode` commands as a user runs them: real executable, real files, exit codes, one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from flnode import __version__


def run(
    cmd: list[str], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line of error, got: {proc.stderr!r}"
    assert lines[0].startswith("flnode: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_commands(flnode_exe: list[str]) -> None:
    proc = run(flnode_exe, "--help")
    assert proc.returncode == 0
    for command in ("init", "keys", "cid", "start"):
        assert command in proc.stdout


def test_no_arguments_shows_help(flnode_exe: list[str]) -> None:
    proc = run(flnode_exe)
    assert "Usage: flnode" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_version(flnode_exe: list[str]) -> None:
    proc = run(flnode_exe, "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"flnode, version {__version__}"


def test_cid_of_hello_world(flnode_exe: list[str], tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello world")
    proc = run(flnode_exe, "cid", str(path))
    assert proc.returncode == 0
    assert proc.stdout == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e\n"


def test_cid_of_several_files_names_each(flnode_exe: list[str], tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    proc = run(flnode_exe, "cid", str(tmp_path / "a"), str(tmp_path / "b"))
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(str(tmp_path / "a")) and lines[0].startswith("bafkrei")


def test_init_then_keys_show(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    d = tmp_path / "node"
    proc = run(flnode_exe, "init", "--datadir", str(d), env=clean_env)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((d / "node.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "api.token").stat().st_mode) == 0o600
    shown = run(flnode_exe, "keys", "show", "--datadir", str(d), "--json", env=clean_env)
    assert shown.returncode == 0
    info = json.loads(shown.stdout)
    assert info["peer_id"].startswith("16Uiu2")
    assert info["address"].startswith("0x") and len(info["address"]) == 42
    assert info["peer_id"] in proc.stdout and info["address"] in proc.stdout
    text = run(flnode_exe, "keys", "show", "--datadir", str(d), env=clean_env).stdout
    assert info["peer_id"] in text and info["address"] in text


def test_datadir_from_environment(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    env = {**clean_env, "FLNODE_DATADIR": str(tmp_path / "envnode")}
    assert run(flnode_exe, "init", env=env).returncode == 0
    assert (tmp_path / "envnode" / "node.key").exists()


def test_init_refuses_to_overwrite_key(flnode_exe: list[str], tmp_path: Path) -> None:
    assert run(flnode_exe, "init", "--datadir", str(tmp_path)).returncode == 0
    key = (tmp_path / "node.key").read_text()
    proc = run(flnode_exe, "init", "--datadir", str(tmp_path))
    assert_one_line_error(proc, "already exists", "--force")
    assert (tmp_path / "node.key").read_text() == key
    assert run(flnode_exe, "init", "--datadir", str(tmp_path), "--force").returncode == 0
    assert (tmp_path / "node.key").read_text() != key


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["start", "--role", "pilot"], ["--role", "'pilot' is not a role"]),
        (["start", "--log-level", "loud"], ["--log-level", "'loud'"]),
        (["start", "--bogus"], ["--bogus"]),
        (["frobnicate"], ["frobnicate"]),
        (["cid", "/no/such/file"], ["/no/such/file", "does not exist"]),
        (["cid"], ["FILES"]),
    ],
)
def test_bad_flags_are_one_line_errors(
    flnode_exe: list[str], tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    assert_one_line_error(run(flnode_exe, *args), *fragments)


def test_start_on_uninitialised_datadir(flnode_exe: list[str], tmp_path: Path) -> None:
    proc = run(flnode_exe, "start", "--datadir", str(tmp_path / "empty"))
    assert_one_line_error(proc, "does not exist", "flnode init")


def test_keys_show_on_uninitialised_datadir(flnode_exe: list[str], tmp_path: Path) -> None:
    assert_one_line_error(
        run(flnode_exe, "keys", "show", "--datadir", str(tmp_path)), "no node key"
    )


def test_bad_config_value_is_a_one_line_error(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    assert run(flnode_exe, "init", "--datadir", str(tmp_path)).returncode == 0
    (tmp_path / "config.toml").write_text("[storage]\nmax_blob_size = 0\n")
    proc = run(flnode_exe, "start", "--datadir", str(tmp_path), env=clean_env)
    assert_one_line_error(proc, "storage.max_blob_size", "config.toml")


def test_bad_env_value_is_a_one_line_error(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    assert run(flnode_exe, "init", "--datadir", str(tmp_path)).returncode == 0
    env = {**clean_env, "FLNODE_LOG_FORMAT": "xml"}
    proc = run(flnode_exe, "start", "--datadir", str(tmp_path), env=env)
    assert_one_line_error(proc, "log.format", "FLNODE_LOG_FORMAT")


def test_corrupt_key_file_is_a_clear_error(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    assert run(flnode_exe, "init", "--datadir", str(tmp_path)).returncode == 0
    (tmp_path / "node.key").write_text("not a key")
    proc = run(flnode_exe, "start", "--datadir", str(tmp_path), env=clean_env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"flnode: error: node key {tmp_path / 'node.key'} is not hex"

"""Data dir initialisation and the one-daemon-per-data-dir lock."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flnode.datadir import DataDir, init_datadir
from flnode.errors import DataDirError
from flnode.identity import NodeIdentity


def test_init_creates_config_key_and_token(tmp_path: Path) -> None:
    result = init_datadir(tmp_path / "d")
    dd = result.datadir
    assert dd.config_file.is_file() and dd.key_file.is_file() and dd.token_file.is_file()
    assert stat.S_IMODE(dd.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(dd.token_file.stat().st_mode) == 0o600
    assert len(dd.read_token()) >= 40
    assert NodeIdentity.load(dd.key_file).address == result.identity.address


def test_init_refuses_existing_key_unless_forced(tmp_path: Path) -> None:
    first = init_datadir(tmp_path)
    token = first.datadir.read_token()
    with pytest.raises(DataDirError, match="--force"):
        init_datadir(tmp_path)
    assert NodeIdentity.load(first.datadir.key_file).address == first.identity.address
    second = init_datadir(tmp_path, force=True)
    assert second.identity.address != first.identity.address
    assert second.datadir.read_token() != token


def test_init_keeps_user_config(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.toml").write_text('[log]\nlevel = "debug"\n')
    result = init_datadir(tmp_path)
    assert not result.wrote_config
    assert (tmp_path / "config.toml").read_text() == '[log]\nlevel = "debug"\n'


def test_check_initialised_explains(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        DataDir(tmp_path / "nope").check_initialised()
    with pytest.raises(DataDirError, match="no node key"):
        DataDir(tmp_path).check_initialised()


def test_lock_excludes_a_second_process(tmp_path: Path) -> None:
    dd = init_datadir(tmp_path).datadir
    probe = textwrap.dedent(
        f"""
        from flnode.datadir import DataDir
        from flnode.errors import DataDirError
        try:
            with DataDir(__import__("pathlib").Path({str(dd.path)!r})).lock():
                print("acquired")
        except DataDirError as exc:
            print(exc)
        """
    )
    with dd.lock():
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        assert "in use by another flnode process" in out.stdout
        assert str(__import__("os").getpid()) in out.stdout
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "acquired"

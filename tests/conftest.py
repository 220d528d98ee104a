"""Fixtures shared by the whole suite: real data dirs and the real `flnode` executable."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from flnode.datadir import InitResult, init_datadir
from flnode.devnet.zygote import node_env


@pytest.fixture
def datadir(tmp_path: Path) -> InitResult:
    """A freshly initialised node data dir (config, key, token)."""
    return init_datadir(tmp_path / "node")


@pytest.fixture(scope="session")
def flnode_exe() -> list[str]:
    """The command that runs the installed `flnode` console script."""
    exe = shutil.which("flnode", path=str(Path(sys.executable).parent))
    assert exe is not None, "the flnode console script is not installed in this environment"
    return [exe]


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment without FLNODE_* variables, for subprocesses (as a devnet gives its nodes)."""
    return node_env()

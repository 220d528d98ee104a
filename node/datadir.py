"""The node's data directory: what lives where, initialisation, and the one-process lock.

::

    <datadir>/config.toml   settings (see config.py)
    <datadir>/node.key      secp256k1 secret, hex, mode 0600 (see identity.py)
    <datadir>/api.token     control-API token, mode 0600
    <datadir>/node.lock     flock()ed by the running daemon: one daemon per data dir
    <datadir>/node.json     written when the daemon is ready, removed when it stops
    <datadir>/blobs/        the content-addressed blob store
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CONFIG_FILE, default_config_toml
from .errors import DataDirError
from .identity import KEY_FILE, NodeIdentity

TOKEN_FILE = "api.token"
LOCK_FILE = "node.lock"
STATE_FILE = "node.json"
BLOB_DIR = "blobs"
PRIVACY_DIR = "privacy"


@dataclass(frozen=True, slots=True)
class DataDir:
    """Paths inside one node's data directory."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @property
    def token_file(self) -> Path:
        return self.path / TOKEN_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def blob_dir(self) -> Path:
        return self.path / BLOB_DIR

    @property
    def privacy_dir(self) -> Path:
        """Privacy ledgers, one file per task: ``privacy/<task id>.json``."""
        return self.path / PRIVACY_DIR

    def check_initialised(self) -> None:
        if not self.path.is_dir():
            raise DataDirError(
                f"data dir {self.path} does not exist; create it with "
                f"`flnode init --datadir {self.path}`"
            )
        if not self.key_file.exists():
            raise DataDirError(
                f"data dir {self.path} has no node key; run `flnode init --datadir {self.path}`"
            )

    def read_token(self) -> str:
        return self.token_file.read_text(encoding="ascii").strip()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the data dir for this process; fail clearly if another daemon holds it."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise DataDirError(
                    f"data dir {self.path} is in use by another flnode process (pid {holder})"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_file)

    def clear_state(self) -> None:
        self.state_file.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class InitResult:
    """What :func:`init_datadir` created."""

    datadir: DataDir
    identity: NodeIdentity
    wrote_config: bool
    wrote_key: bool
    wrote_token: bool


def init_datadir(path: str | Path, *, force: bool = False) -> InitResult:
    """Create a data dir with a default config, a new node key and an API token.

    An existing ``config.toml`` is never replaced (it is the user's). An existing key is kept and
    the call fails unless ``force`` is given, in which case a new key and token replace the old.
    """
    datadir = DataDir(Path(path))
    if datadir.key_file.exists() and not force:
        raise DataDirError(
            f"{datadir.key_file} already exists; refusing to replace the node's identity "
            "(use --force to generate a new key)"
        )
    datadir.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    wrote_config = False
    if not datadir.config_file.exists():
        datadir.config_file.write_text(default_config_toml(), encoding="utf-8")
        wrote_config = True
    identity = NodeIdentity.generate()
    identity.save(datadir.key_file, overwrite=force)
    wrote_token = force or not datadir.token_file.exists()
    if wrote_token:
        fd = os.open(datadir.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        os.chmod(datadir.token_file, 0o600)
    return InitResult(datadir, identity, wrote_config, True, wrote_token)

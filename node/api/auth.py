"""The API token: a random secret in ``<datadir>/api.token`` that every connection must present.

The token is compared with :func:`hmac.compare_digest` (time independent of where the strings
differ), so timing a wrong guess leaks nothing about the right one. The file is created with mode
0600 when missing (``flnode init`` writes it too) and a token readable by others is reported.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from ..errors import FLNodeError

TOKEN_BYTES = 32


class TokenFileError(FLNodeError):
    """The token file exists but cannot be used (unreadable or empty)."""


def ensure_token(path: Path) -> tuple[str, bool]:
    """Read the token at ``path``, creating it (0600) if missing; returns (token, created)."""
    created = False
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it just now: read theirs
        else:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
            created = True
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the API token {path}: {exc}") from None
    if not token:
        raise TokenFileError(f"the API token file {path} is empty; delete it to get a new token")
    return token, created


def token_is_private(path: Path) -> bool:
    """Whether only the owner can read the token file."""
    return not (path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def tokens_match(expected: str, presented: object) -> bool:
    """Constant-time comparison; anything but a string is simply wrong."""
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))

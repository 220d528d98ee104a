"""Errors of the devnet launcher; messages say what to run next."""

from __future__ import annotations

from ..errors import FLNodeError


class DevnetError(FLNodeError):
    """A devnet could not be created, started, inspected or stopped."""


class LayoutError(DevnetError):
    """A devnet layout (flags or TOML file) is invalid."""

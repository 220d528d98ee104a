"""The root of flnode's exceptions.

Every error that flnode raises on purpose derives from :class:`FLNodeError`, so the CLI can turn any
of them into a one-line message instead of a traceback. Each package adds its own leaves.
"""


class FLNodeError(Exception):
    """Base class for every error flnode raises on purpose."""


class ConfigError(FLNodeError):
    """A configuration value, file or variable is invalid; the message names the key and its source."""


class IdentityError(FLNodeError):
    """The node key is missing, unreadable or malformed."""


class DataDirError(FLNodeError):
    """The data directory is missing, not initialised, or already in use by another process."""

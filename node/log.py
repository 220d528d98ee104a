"""Structured logging with structlog: key=value on a terminal, one JSON object per line otherwise.

Everything goes through the standard library's ``logging`` so that libraries' records (libp2p,
py-evm) come out in the same format. libp2p clears the handlers of its ``libp2p`` logger and sets
``propagate = False`` when it is imported (stack.md P8), so its records would bypass our handler and
end up on stderr unformatted: :func:`configure_logging` imports it first, then attaches our handler to
that logger explicitly.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_handler: logging.Handler | None = None


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr by default) in one format.

    ``fmt`` is ``console``, ``json`` or ``auto`` (console when ``stream`` is a terminal). Calling it
    again replaces the previous set-up.
    """
    global _handler
    import libp2p  # noqa: F401  (imported for its side effect on the "libp2p" logger; see above)

    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    # libp2p sets INFO on some of its own loggers (its auto-connector chatters); keep libp2p at
    # WARNING and above unless we run at debug.
    handler.addFilter(_QuietLibp2p(_LEVELS[level]))
    root = logging.getLogger()
    libp2p_logger = logging.getLogger("libp2p")
    for lg in (root, libp2p_logger):
        if _handler is not None:
            lg.removeHandler(_handler)
        lg.addHandler(handler)
    _handler = handler
    root.setLevel(_LEVELS[level])
    # libp2p logs harmless ERRORs for early dials and teardown; keep its chatter at WARNING+.
    libp2p_logger.setLevel(max(_LEVELS[level], logging.WARNING))


class _QuietLibp2p(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.floor = max(level, logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("libp2p") or record.levelno >= self.floor


def get_logger(name: str, **bound: Any) -> Any:
    """A logger named ``name`` with ``bound`` key-values on every line.

    Safe at import time: the logger is a lazy proxy that picks up :func:`configure_logging`'s
    set-up on first use (binding values up front would freeze the configuration of that moment).
    """
    return structlog.stdlib.get_logger(name, **bound)

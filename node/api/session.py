"""What the server knows about one API connection while it is open."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..events import Subscription


@dataclass(slots=True, eq=False)
class Session:
    """One websocket connection: whether it proved the token, and its event subscriptions."""

    remote: str
    authenticated: bool = False
    failed_auth: int = 0
    close_requested: bool = False
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    nursery: trio.Nursery | None = None
    #: Sends one text frame to this connection (used to push subscription events).
    send: Callable[[str], Awaitable[None]] | None = None

    def close(self) -> None:
        for sub in self.subscriptions.values():
            sub.close()
        self.subscriptions.clear()


_current: contextvars.ContextVar[Session] = contextvars.ContextVar("flnode_api_session")


def current_session() -> Session:
    """The session of the call being served (connection-scoped methods such as ``subscribe``)."""
    return _current.get()


def set_current_session(session: Session) -> contextvars.Token[Session]:
    return _current.set(session)

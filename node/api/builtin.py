"""Methods every API serves, whatever the node runs: ``auth``, ``rpc_*``, ``subscribe``.

These are connection-scoped (they read or change the calling :class:`~.session.Session`), so
they live with the server rather than with a layer.

Subscriptions push notifications shaped like Ethereum's ``eth_subscription``::

    {"jsonrpc": "2.0", "method": "subscription",
     "params": {"subscription": "<id>", "event": "peer_joined", "data": {...},
                "time": 1700000000.1, "seq": 7, "dropped": 0}}

``dropped`` counts the events this subscription lost because the client read too slowly.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import trio
from pydantic import Field

from ..events import Event, EventBus, Subscription, UnknownTopicError
from ..log import get_logger
from ..rpc import (
    INVALID_PARAMS,
    LIMIT_EXCEEDED,
    UNAUTHORIZED,
    NoParams,
    Params,
    RpcError,
    RpcMethod,
)
from .auth import tokens_match
from .registry import MethodRegistry
from .session import Session, current_session

log = get_logger("flnode.api")

#: Failed ``auth`` calls after which the connection is closed.
MAX_FAILED_AUTH = 3


class AuthParams(Params):
    token: str = Field(description="The token from <datadir>/api.token.")


class HelpParams(Params):
    method: str = Field(description="Name of the method to describe.")


class SubscribeParams(Params):
    events: list[str] = Field(
        default_factory=list,
        description="Event topics to receive (see rpc_events); empty = all of them.",
    )


class UnsubscribeParams(Params):
    subscription: str = Field(description="The id subscribe returned.")


def builtin_methods(
    registry: MethodRegistry,
    bus: EventBus,
    token: Callable[[], str],
    *,
    max_subscriptions: int,
    event_queue: int,
) -> list[RpcMethod]:
    """The connection-scoped methods, bound to this server's registry, bus and token."""

    async def auth(params: AuthParams) -> dict[str, bool]:
        session = current_session()
        if tokens_match(token(), params.token):
            session.authenticated = True
            return {"authenticated": True}
        session.failed_auth += 1
        log.warning("api auth failed", remote=session.remote, attempt=session.failed_auth)
        if session.failed_auth >= MAX_FAILED_AUTH:
            session.close_requested = True
        raise RpcError(UNAUTHORIZED, "wrong token; use the one in <datadir>/api.token")

    async def rpc_methods(params: NoParams) -> list[dict[str, object]]:
        return registry.describe_all()

    async def rpc_help(params: HelpParams) -> dict[str, object]:
        return registry.describe(params.method)

    async def rpc_events(params: NoParams) -> list[dict[str, str]]:
        return [{"event": t, "description": d} for t, d in bus.topics().items()]

    async def subscribe(params: SubscribeParams) -> dict[str, object]:
        session = current_session()
        if len(session.subscriptions) >= max_subscriptions:
            raise RpcError(
                LIMIT_EXCEEDED,
                f"this connection already has {max_subscriptions} subscriptions "
                "(api.max_subscriptions); unsubscribe from one first",
            )
        if session.nursery is None or session.send is None:
            raise RpcError(INVALID_PARAMS, "subscriptions need a websocket connection")
        try:
            sub = bus.subscribe(params.events, max_queued=event_queue)
        except UnknownTopicError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        sid = secrets.token_hex(8)
        session.subscriptions[sid] = sub
        session.nursery.start_soon(_forward, session, sid, sub)
        return {"subscription": sid, "events": sorted(sub.topics)}

    async def unsubscribe(params: UnsubscribeParams) -> bool:
        session = current_session()
        sub = session.subscriptions.pop(params.subscription, None)
        if sub is None:
            raise RpcError(
                INVALID_PARAMS, f"no subscription {params.subscription!r} on this connection"
            )
        sub.close()
        return True

    return [
        RpcMethod("auth", auth, "Prove you hold the API token.", AuthParams, '{"authenticated": true}'),
        RpcMethod("rpc_methods", rpc_methods, "List every method with its parameters.", result="list of method descriptions"),
        RpcMethod("rpc_help", rpc_help, "Describe one method: summary, parameters, result.", HelpParams, "a method description"),
        RpcMethod("rpc_events", rpc_events, "List the event topics one can subscribe to.", result="list of {event, description}"),
        RpcMethod("subscribe", subscribe, "Stream events to this connection as notifications.", SubscribeParams, '{"subscription": id, "events": [...]}'),
        RpcMethod("unsubscribe", unsubscribe, "Stop a subscription.", UnsubscribeParams, "true"),
    ]  # fmt: skip


async def _forward(session: Session, sid: str, sub: Subscription) -> None:
    """Push one subscription's events to the connection until it is closed."""
    assert session.send is not None
    try:
        async for event in sub.receive:
            await session.send(notification(sid, event, sub.dropped))
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass
    finally:
        sub.close()


def notification(sid: str, event: Event, dropped: int) -> str:
    params = {"subscription": sid, **event.to_json(), "dropped": dropped}
    return json.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": params}, separators=(",", ":")
    )

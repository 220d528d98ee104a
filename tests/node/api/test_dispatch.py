"""The dispatcher and registry alone: how handler failures map to JSON-RPC errors."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from flnode.api.builtin import builtin_methods
from flnode.api.dispatch import Dispatcher, handler_may_wait
from flnode.api.registry import MethodRegistry
from flnode.api.session import Session
from flnode.errors import FLNodeError
from flnode.events import EventBus
from flnode.rpc import NoParams, Params, RpcError, RpcMethod, StaticProvider


class EchoParams(Params):
    text: str = Field(description="What to echo.")
    times: int = Field(1, ge=1, le=3, description="How often.")


async def _echo(p: EchoParams) -> str:
    return p.text * p.times


async def _boom(p: NoParams) -> None:
    raise ZeroDivisionError("secret detail")


async def _refused(p: NoParams) -> None:
    raise FLNodeError("the task registry is not running yet; try again after start-up")


async def _slow(p: NoParams) -> None:
    await trio.sleep(10)


async def _unencodable(p: NoParams) -> object:
    return {1, 2}


def _dispatcher() -> Dispatcher:
    registry = MethodRegistry()
    registry.add_provider(
        StaticProvider(
            "test",
            (
                RpcMethod("test_echo", _echo, "Echo.", EchoParams),
                RpcMethod("test_boom", _boom, "Raise."),
                RpcMethod("test_refused", _refused, "Refuse."),
                RpcMethod("test_slow", _slow, "Sleep."),
                RpcMethod("test_set", _unencodable, "Return a set."),
            ),
        )
    )
    for method in builtin_methods(
        registry, EventBus(), lambda: "secret", max_subscriptions=2, event_queue=4
    ):
        registry.add(method)
    return Dispatcher(registry, call_timeout_s=0.2)


async def _call(method: str, params: object = None) -> dict:
    request: dict = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        request["params"] = params
    reply = await _dispatcher().handle_frame(json.dumps(request), Session("t", authenticated=True))
    assert reply is not None
    return json.loads(reply)


async def test_params_by_name_and_position() -> None:
    assert (await _call("test_echo", {"text": "ab", "times": 2}))["result"] == "abab"
    assert (await _call("test_echo", ["ab", 3]))["result"] == "ababab"
    wrong = (await _call("test_echo", {"text": "a", "times": 9}))["error"]
    assert (
        wrong["code"] == -32602
        and "times: Input should be less than or equal to 3" in wrong["message"]
    )
    assert wrong["data"][0]["loc"] == ["times"]
    extra = (await _call("test_echo", {"text": "a", "txt": "b"}))["error"]
    assert "unknown parameter 'txt' (parameters: text, times)" in extra["message"]


async def test_handler_failures_map_to_codes() -> None:
    internal = (await _call("test_boom"))["error"]
    assert internal["code"] == -32603
    assert "ZeroDivisionError" in internal["message"] and "secret" not in internal["message"]
    refused = (await _call("test_refused"))["error"]
    assert refused == {"code": -32000, "message": str(FLNodeError(refused["message"]))}
    assert "try again" in refused["message"]
    timeout = (await _call("test_slow"))["error"]
    assert timeout["code"] == -32003 and "0.2 s" in timeout["message"]
    assert (await _call("test_set"))["error"]["code"] == -32603


async def test_call_timeout_reaches_only_handlers_that_wait() -> None:
    """A deadline cancels at a checkpoint; a handler that never waits runs to its end."""
    import time

    async def busy(p: NoParams) -> str:
        end = time.monotonic() + 0.3  # longer than call_timeout_s, without a checkpoint
        while time.monotonic() < end:
            pass
        return "done"

    async def waits(p: NoParams) -> str:
        await trio.sleep(0.3)
        return "done"

    dispatcher = Dispatcher(MethodRegistry(), call_timeout_s=0.2)
    dispatcher.registry.add_provider(
        StaticProvider("t", (RpcMethod("t_busy", busy, "x"), RpcMethod("t_waits", waits, "x")))
    )
    session = Session("t", authenticated=True)
    for method, expected in (("t_busy", {"result": "done"}), ("t_waits", {"code": -32003})):
        frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method})
        reply = json.loads(await dispatcher.handle_frame(frame, session) or "")
        assert expected.items() <= {**reply, **reply.get("error", {})}.items()


def test_handler_may_wait() -> None:
    async def plain(p: object) -> int:
        return 1

    async def awaits(p: object) -> None:
        if p:
            await trio.sleep(0)

    async def with_block(p: object) -> None:
        async with trio.open_nursery():
            pass

    async def for_loop(p: Any) -> None:
        async for _ in p:
            pass

    async def comprehension(p: Any) -> list[object]:
        return [x async for x in p]

    def returns_awaitable(p: object) -> Any:
        return plain(p)

    class Methods:
        async def plain(self, p: object) -> int:
            return 2

        async def awaits(self, p: object) -> None:
            await trio.sleep(0)

    assert not handler_may_wait(plain) and not handler_may_wait(Methods().plain)
    for handler in (
        awaits, with_block, for_loop, comprehension, returns_awaitable,
        functools.partial(plain), Methods().awaits,
    ):  # fmt: skip
        assert handler_may_wait(handler), handler


async def test_methods_without_params_take_none() -> None:
    for params in (None, {}, []):
        assert (await _call("test_set", params))["error"]["code"] == -32603  # the handler ran
    extra = (await _call("test_boom", {"x": 1}))["error"]
    assert (
        extra["code"] == -32602 and "unknown parameter 'x' (parameters: none)" in extra["message"]
    )
    positional = (await _call("test_boom", [1]))["error"]
    assert (
        positional["code"] == -32602
        and "takes at most 0 parameter(s) none" in positional["message"]
    )


@pytest.mark.parametrize("request_id", [0, -7, 2**70, "", 'ä"\n</', None])
async def test_reply_ids_are_the_request_ids(request_id: object) -> None:
    frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "test_echo", "params": ["x"]})
    reply = await _dispatcher().handle_frame(frame, Session("t", authenticated=True))
    assert reply is not None
    assert json.loads(reply) == {"jsonrpc": "2.0", "id": request_id, "result": "x"}


def test_registry_keeps_namespaces_apart() -> None:
    registry = MethodRegistry()
    method = RpcMethod("chain_head", _boom, "x")
    with pytest.raises(ValueError, match="outside its provider's namespace"):
        registry.add_provider(StaticProvider("node", (method,)))
    registry.add_provider(StaticProvider("chain", (method,)))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(method)
    with pytest.raises(ValueError, match="lower_snake_case"):
        registry.add(RpcMethod("Chain-Head", _boom, "x"))
    with pytest.raises(RpcError, match="did you mean chain_head"):
        registry.get("chain_haed")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_param_names = st.sampled_from(["text", "times", "token", "method", "events", "subscription", "x"])
_requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]) | _json,
        "id": st.none() | st.integers() | st.text(max_size=5) | _json,
        "method": st.sampled_from(
            ["test_echo", "test_boom", "nope", "auth", "subscribe", "rpc_help", "unsubscribe"]
        )
        | _json,
        "params": st.dictionaries(_param_names, _json, max_size=3)
        | st.lists(_json, max_size=3)
        | _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(frame=_json | _requests | st.lists(_requests, max_size=5) | st.binary(max_size=64))
async def test_any_frame_gets_a_well_formed_reply_or_none(frame: object) -> None:
    """Hostile input never escapes as an exception; replies are JSON-RPC 2.0 objects."""
    raw = frame if isinstance(frame, bytes) else json.dumps(frame)
    for authenticated in (False, True):
        reply = await _dispatcher().handle_frame(raw, Session("fuzz", authenticated=authenticated))
        if reply is None:
            continue
        decoded = json.loads(reply)
        for item in decoded if isinstance(decoded, list) else [decoded]:
            assert item["jsonrpc"] == "2.0" and "id" in item
            assert ("result" in item) != ("error" in item)
            if "error" in item:
                assert isinstance(item["error"]["code"], int) and item["error"]["message"]
            if not authenticated:
                # Nothing but envelope errors, "unauthorized", or auth's own parameter errors:
                # never a result and never whether a method exists.
                assert item["error"]["code"] in (-32700, -32600, -32001, -32602)

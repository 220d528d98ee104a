"""The control API end to end: real nodes, real websockets, every method's success and errors."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url, serve_websocket

from flnode.api import ApiClient, ApiConnectionError, ApiEndpoint, ApiService
from flnode.config import ApiSection
from flnode.events import EventBus
from flnode.identity import NodeIdentity
from flnode.rpc import RpcError, RpcMethod, StaticProvider


def _url(node: Any, query: str = "") -> str:
    return ApiEndpoint.from_datadir(node.datadir.path).url + query


async def _raw(ws: Any, frame: str | bytes) -> Any:
    await ws.send_message(frame)
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


# -- authentication ---------------------------------------------------------------------------


async def test_calls_before_auth_get_only_an_unauthorized_error(running_node: Any) -> None:
    async with running_node() as node, open_websocket_url(_url(node)) as ws:
        for method in ("node_info", "rpc_methods", "no_such_method", "subscribe"):
            reply = await _raw(ws, json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}))
            assert reply == {
                "jsonrpc": "2.0",
                "id": 1,
                "error": {"code": -32001, "message": reply["error"]["message"]},
            }
            assert "api.token" in reply["error"]["message"]
        token = node.datadir.read_token()
        reply = await _raw(
            ws, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "auth", "params": [token]})
        )
        assert reply["result"] == {"authenticated": True}
        reply = await _raw(ws, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "node_info"}))
        assert reply["result"]["peer_id"] == node.identity.peer_id


async def test_wrong_token_is_refused_and_three_strikes_close(running_node: Any) -> None:
    async with running_node() as node, open_websocket_url(_url(node)) as ws:
        for i in range(3):
            reply = await _raw(
                ws,
                json.dumps(
                    {"jsonrpc": "2.0", "id": i, "method": "auth", "params": {"token": "guess"}}
                ),
            )
            assert reply["error"]["code"] == -32001
        with pytest.raises(ConnectionClosed), trio.fail_after(5):
            await ws.get_message()
        assert ws.closed is not None and ws.closed.code == 1008


async def test_unauthenticated_connections_are_closed_after_a_while(
    running_node: Any, connect: Any
) -> None:
    async with running_node(api={"auth_timeout_s": 0.3, "max_connections": 1}) as node:
        async with open_websocket_url(_url(node)) as ws:
            with pytest.raises(ConnectionClosed), trio.fail_after(5):
                await ws.get_message()
            assert ws.closed is not None and ws.closed.code == 1008
        async with connect(node) as c:  # the slot is free again; authenticated ones stay
            await trio.sleep(0.5)
            assert (await c.call("node_info"))["peer_id"] == node.identity.peer_id


async def test_token_in_query_string(running_node: Any) -> None:
    async with running_node() as node:
        token = node.datadir.read_token()
        async with open_websocket_url(_url(node, f"?token={token}")) as ws:
            reply = await _raw(ws, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_info"}))
            assert reply["result"]["address"] == node.identity.address
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(_url(node, "?token=wrong")):
                pass
        assert rejected.value.status_code == 401
        ep = ApiEndpoint(_url(node), token)
        async with ApiClient.open(ep, token_in_url=True) as c:
            assert (await c.call("node_info"))["peer_id"] == node.identity.peer_id


async def test_token_file_is_created_private_when_missing(running_node: Any, tmp_path: Any) -> None:
    async with running_node("first") as node:
        token_file = node.datadir.token_file
    token_file.unlink()
    from flnode.api.auth import ensure_token

    token, created = ensure_token(token_file)
    assert created and len(token) >= 40
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert ensure_token(token_file) == (token, False)


async def test_api_client_reports_a_node_that_is_not_running(tmp_path: Any) -> None:
    with pytest.raises(ApiConnectionError, match="flnode start --datadir"):
        ApiEndpoint.from_datadir(tmp_path)
    with pytest.raises(ApiConnectionError, match="cannot connect"):
        async with ApiClient.open(ApiEndpoint("ws://127.0.0.1:9/", "t"), connect_timeout=2):
            pass


async def test_errors_inside_a_client_block_come_out_as_raised(
    running_node: Any, connect: Any
) -> None:
    async with running_node() as node:
        with pytest.raises(KeyError, match="mine"):
            async with connect(node):
                raise KeyError("mine")


async def test_api_client_call_times_out_without_a_reply() -> None:
    async def silent(request: Any) -> None:
        ws = await request.accept()
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.get_message()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, silent, "127.0.0.1", 0, ssl_context=None)
        )
        endpoint = ApiEndpoint(f"ws://127.0.0.1:{server.port}/", None)
        async with ApiClient.open(endpoint) as client:
            with trio.fail_after(5):
                with pytest.raises(ApiConnectionError, match=r"no reply within 0\.2 s"):
                    await client.call("node_info", timeout=0.2)
                with pytest.raises(ApiConnectionError, match=r"no reply within 0\.1 s"):
                    await client.send_raw("{}", 99, timeout=0.1)
            assert not client._pending
        nursery.cancel_scope.cancel()


async def _scripted_server(request: Any) -> None:
    """Replies by method: fast now, slow after 0.5 s, never not at all; subscribe also sends an
    event; close closes the connection."""
    ws = await request.accept()

    async def answer(message: dict[str, Any]) -> None:
        method = message["method"]
        if method == "slow":
            await trio.sleep(0.5)
        if method == "close":
            await ws.aclose(code=1000, reason="bye")
            return
        result: Any = method
        if method == "subscribe":
            result = {"subscription": "s1", "events": ["e"]}
        if method != "never":
            await ws.send_message(
                json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
            )
        if method == "subscribe":
            params = {"subscription": "s1", "event": "e", "data": {}}
            await ws.send_message(
                json.dumps({"jsonrpc": "2.0", "method": "subscription", "params": params})
            )

    with contextlib.suppress(ConnectionClosed):
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(answer, json.loads(await ws.get_message()))


@contextlib.asynccontextmanager
async def _scripted_client() -> Any:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, _scripted_server, "127.0.0.1", 0, ssl_context=None)
        )
        async with ApiClient.open(ApiEndpoint(f"ws://127.0.0.1:{server.port}/", None)) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_api_client_concurrent_calls_reading_hand_over_and_close() -> None:
    async with _scripted_client() as client:
        order: list[str] = []

        async def call(method: str, timeout: float = 5) -> None:
            try:
                order.append(await client.call(method, timeout=timeout))
            except ApiConnectionError as exc:
                order.append(f"{method}: {exc}")

        with trio.fail_after(4):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "slow")
                await trio.sleep(0.05)
                nursery.start_soon(call, "fast")  # answered while the first call still waits
            assert order == ["fast", "slow"]
            order.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "never", 0.2)  # times out while it reads...
                await trio.sleep(0.05)
                nursery.start_soon(call, "slow")  # ...and this call reads on: no 5 s wait
            assert order == ["never: no reply within 0.2 s", "slow"]
            order.clear()
            async with trio.open_nursery() as nursery:  # readers leave, by reply or timeout
                for i in range(60):
                    method = ("fast", "slow", "never")[i % 3]
                    nursery.start_soon(call, method, 5 if method == "slow" else 0.1 + i / 200)
                    if i % 7 == 0:
                        await trio.sleep(0.01)
            nevers = [f"never: no reply within {0.1 + i / 200} s" for i in range(2, 60, 3)]
            assert sorted(order) == sorted(["fast"] * 20 + ["slow"] * 20 + nevers)
            order.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "slow")
                nursery.start_soon(call, "never")
                await trio.sleep(0.05)
                sub = await client.subscribe("e")  # a reader task takes over from the callers
                assert (await sub.next(timeout=2))["event"] == "e"
                while not order:
                    await trio.sleep(0.01)
                nursery.start_soon(call, "close")  # the server closes: every waiting call ends
            assert order[0] == "slow" and sorted(order[1:]) == [
                "close: the API connection closed: CloseReason<code=1000, name=NORMAL_CLOSURE, reason=bye>",
                "never: the API connection closed: CloseReason<code=1000, name=NORMAL_CLOSURE, reason=bye>",
            ]
            with pytest.raises(ApiConnectionError, match="closed"):
                await client.call("fast")
            assert [e async for e in sub] == []  # the subscription ended with the connection


# -- node_* methods ---------------------------------------------------------------------------


async def test_node_methods_connect_peers_and_info(running_node: Any, connect: Any) -> None:
    async with running_node("a") as a, running_node("b") as b, connect(a) as ca:
        info = await ca.call("node_info")
        assert info["peer_id"] == a.identity.peer_id
        assert info["roles"] == ["device"] and info["peers"] == 0
        assert info["p2p_addrs"][0].endswith(a.identity.peer_id)
        assert await ca.call("node_peers") == {"connected": 0, "peers": []}

        b_addr = (await _info(b, connect))["p2p_addrs"][0]
        assert await ca.call("node_connect", {"addr": b_addr}) == {
            "peer_id": b.identity.peer_id,
            "connected": True,
        }
        peers = await ca.call("node_peers")
        assert peers["connected"] == 1
        assert peers["peers"][0]["peer_id"] == b.identity.peer_id
        assert peers["peers"][0]["connected"] is True
        assert (await ca.call("node_info"))["peers"] == 1

        with pytest.raises(RpcError) as bad:
            await ca.call("node_connect", {"addr": "/ip4/127.0.0.1/tcp/1"})
        assert bad.value.code == -32602 and "PEER_ID" in bad.value.message
        with pytest.raises(RpcError) as bad:
            await ca.call("node_connect", {"addr": "not a multiaddr"})
        assert bad.value.code == -32602 and "not a multiaddr" in bad.value.message
        # A well-formed address where nobody listens: a clear server error, not a hang.
        dead = f"/ip4/127.0.0.1/tcp/9/p2p/{NodeIdentity.generate().peer_id}"
        with pytest.raises(RpcError) as unreachable:
            await ca.call("node_connect", [dead])
        assert unreachable.value.code == -32000
        assert "could not connect" in unreachable.value.message
        everyone = await ca.call("node_peers", {"all": True})
        assert {p["peer_id"] for p in everyone["peers"]} >= {b.identity.peer_id}
        assert everyone["connected"] == 1


async def _info(node: Any, connect: Any) -> dict[str, Any]:
    async with connect(node) as c:
        return await c.call("node_info")


# -- rpc_* and the JSON-RPC envelope -----------------------------------------------------------


async def test_help_methods_and_unknown_names(running_node: Any, connect: Any) -> None:
    async with running_node() as node, connect(node) as c:
        methods = {m["name"]: m for m in await c.call("rpc_methods")}
        assert {"auth", "node_info", "node_peers", "node_connect", "subscribe"} <= set(methods)
        assert {"rpc_methods", "rpc_help", "rpc_events", "unsubscribe"} <= set(methods)
        connect_help = await c.call("rpc_help", ["node_connect"])
        assert connect_help["params"] == [
            {
                "name": "addr",
                "type": "string",
                "required": True,
                "description": "Full multiaddr: /ip4/HOST/tcp/PORT/p2p/PEER_ID.",
            }
        ]
        with pytest.raises(RpcError) as unknown:
            await c.call("rpc_help", {"method": "node_peer"})
        assert unknown.value.code == -32601 and "node_peers" in unknown.value.message
        with pytest.raises(RpcError) as unknown:
            await c.call("chain_head")
        assert unknown.value.code == -32601
        events = await c.call("rpc_events")
        assert {e["event"] for e in events} >= {"peer_joined", "peer_left"}
        with pytest.raises(RpcError) as wrong:
            await c.call("node_peers", {"all": "sometimes"})
        assert wrong.value.code == -32602 and "all:" in wrong.value.message
        with pytest.raises(RpcError) as wrong:
            await c.call("node_info", [1])
        assert wrong.value.code == -32602 and "at most 0" in wrong.value.message


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{not json", -32700, "not valid JSON"),
        (b"\xff\xfe binary garbage", -32700, "not valid JSON"),
        ("42", -32600, "JSON object"),
        ("[]", -32600, "empty batch"),
        ('{"id": 1, "method": "node_info"}', -32600, '"jsonrpc" must be "2.0"'),
        ('{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600, '"method" must be a string'),
        ('{"jsonrpc": "2.0", "id": 1, "method": "node_info", "params": 3}', -32600, "params"),
        ('{"jsonrpc": "2.0", "id": true, "method": "node_info"}', -32600, "id must be"),
    ],
)
async def test_malformed_requests_get_errors(
    running_node: Any, frame: str | bytes, code: int, words: str
) -> None:
    async with running_node() as node:
        token = node.datadir.read_token()
        async with open_websocket_url(_url(node, f"?token={token}")) as ws:
            reply = await _raw(ws, frame)
            assert reply["error"]["code"] == code
            assert words in reply["error"]["message"]
            ok = await _raw(ws, '{"jsonrpc": "2.0", "id": 7, "method": "node_info"}')
            assert ok["id"] == 7 and "result" in ok


async def test_batches_and_notifications(running_node: Any) -> None:
    async with running_node(api={"max_batch": 5}) as node:
        token = node.datadir.read_token()
        async with open_websocket_url(_url(node, f"?token={token}")) as ws:
            batch = [
                {"jsonrpc": "2.0", "id": "a", "method": "node_info"},
                {"jsonrpc": "2.0", "method": "node_info"},  # notification: no reply
                {"jsonrpc": "2.0", "id": "c", "method": "nope"},
                "garbage",
                {"jsonrpc": "2.0", "id": "e", "method": "rpc_help", "params": ["node_info"]},
            ]
            replies = await _raw(ws, json.dumps(batch))
            assert [r["id"] for r in replies] == ["a", "c", None, "e"]
            assert "result" in replies[0] and replies[1]["error"]["code"] == -32601
            assert replies[2]["error"]["code"] == -32600
            too_many = await _raw(ws, json.dumps([batch[0]] * 6))
            assert (
                too_many["error"]["code"] == -32600
                and "api.max_batch" in too_many["error"]["message"]
            )
            # Only notifications: nothing comes back; the next call is answered normally.
            await ws.send_message(json.dumps([batch[1], batch[1]]))
            await ws.send_message(json.dumps(batch[1]))
            reply = await _raw(ws, json.dumps({"jsonrpc": "2.0", "id": 5, "method": "node_info"}))
            assert reply["id"] == 5


async def test_oversized_and_garbage_frames_are_survived(running_node: Any, connect: Any) -> None:
    async with running_node(api={"max_frame_bytes": 4096}) as node:
        token = node.datadir.read_token()
        async with open_websocket_url(_url(node, f"?token={token}")) as ws:
            big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_info", "pad": "x" * 8000})
            reply = await _raw(ws, big)
            assert (
                reply["error"]["code"] == -32002
                and "api.max_frame_bytes" in reply["error"]["message"]
            )
            for garbage in (
                b"\x00" * 100,
                os.urandom(3000),
                "\ud800".encode("utf-8", "surrogatepass"),
            ):
                assert (await _raw(ws, garbage))["error"]["code"] == -32700
            ok = await _raw(ws, '{"jsonrpc": "2.0", "id": 2, "method": "node_info"}')
            assert ok["id"] == 2
        # Beyond 4x the limit the socket is closed (code 1009); the server goes on.
        async with open_websocket_url(_url(node, f"?token={token}"), max_message_size=2**20) as ws:
            await ws.send_message("x" * 20_000)
            with pytest.raises(ConnectionClosed), trio.fail_after(5):
                await ws.get_message()
            assert ws.closed is not None and ws.closed.code == 1009
        async with connect(node) as c:
            assert (await c.call("node_info"))["peer_id"] == node.identity.peer_id


async def test_connection_limit(running_node: Any, connect: Any) -> None:
    async with running_node(api={"max_connections": 2}) as node:
        async with connect(node), connect(node):
            with pytest.raises(ApiConnectionError, match="HTTP 503"):
                async with connect(node):
                    pass
        async with connect(node) as c:  # slots are freed when clients leave
            await c.call("node_info")


async def test_slow_calls_hold_up_nothing_until_max_inflight(tmp_path: Any) -> None:
    """Calls on one connection run side by side, up to api.max_inflight; then reading waits."""
    release = trio.Event()
    started: list[int] = []

    async def test_slow(params: Any) -> str:
        started.append(1)
        await release.wait()
        return "slow"

    async def test_fast(params: Any) -> str:
        return "fast"

    provider = StaticProvider(
        "test",
        (RpcMethod("test_slow", test_slow, "Wait."), RpcMethod("test_fast", test_fast, "Answer.")),
    )
    api = ApiService(ApiSection(port=0, max_inflight=3), tmp_path / "t", EventBus(), [provider])
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        token = (tmp_path / "t").read_text().strip()
        async with ApiClient.open(ApiEndpoint(str(api.url), token)) as client:
            slow: list[str] = []

            async def call_slow() -> None:
                slow.append(await client.call("test_slow"))

            with trio.fail_after(10):
                async with trio.open_nursery() as calls:
                    calls.start_soon(call_slow)
                    calls.start_soon(call_slow)
                    while len(started) < 2:
                        await trio.sleep(0.01)
                    assert await client.call("test_fast") == "fast"  # a third slot is free
                    calls.start_soon(call_slow)
                    while len(started) < 3:
                        await trio.sleep(0.01)
                    fast: list[str] = []

                    async def call_fast() -> None:
                        fast.append(await client.call("test_fast"))

                    calls.start_soon(call_fast)
                    await trio.sleep(0.3)
                    assert fast == [] and slow == []  # every slot is taken: nothing is read
                    release.set()
                assert fast == ["fast"] and slow == ["slow"] * 3
        nursery.cancel_scope.cancel()


async def test_200_concurrent_calls_from_20_clients(running_node: Any, connect: Any) -> None:
    async with running_node() as node:
        answers: list[str] = []

        async def one_client(i: int) -> None:
            async with connect(node) as c, trio.open_nursery() as nursery:
                for j in range(10):
                    nursery.start_soon(call, c, i, j)

        async def call(c: ApiClient, i: int, j: int) -> None:
            method = ("node_info", "node_peers", "rpc_events")[(i + j) % 3]
            result = await c.call(method)
            answers.append(method if result is not None else "none")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one_client, i)
        assert len(answers) == 200 and "none" not in answers
        api = node.service("api")
        assert sum(api.stats.calls.values()) >= 200  # type: ignore[attr-defined]


# -- subscriptions -----------------------------------------------------------------------------


async def test_subscriptions_deliver_peer_events(running_node: Any, connect: Any) -> None:
    async with running_node("a") as a, connect(a) as ca:
        sub = await ca.subscribe("peer_joined", "peer_left")
        assert sub.events == ["peer_joined", "peer_left"]
        everything = await ca.subscribe()
        assert set(everything.events) >= {"peer_joined", "peer_left"}
        async with running_node("b") as b:
            b_addr = b.service("p2p").addrs[0]  # type: ignore[attr-defined]
            await ca.call("node_connect", [b_addr])
            joined = await sub.next(timeout=10)
            assert joined["event"] == "peer_joined" and joined["subscription"] == sub.id
            assert joined["data"] == {"peer_id": b.identity.peer_id}
            assert (await everything.next(timeout=10))["event"] == "peer_joined"
            await ca.unsubscribe(everything)
        left = await sub.next(timeout=10)
        assert left["event"] == "peer_left" and left["data"]["peer_id"] == b.identity.peer_id
        assert left["dropped"] == 0

        with pytest.raises(RpcError) as unknown:
            await ca.subscribe("peer_joind")
        assert unknown.value.code == -32602 and "peer_joined" in unknown.value.message
        with pytest.raises(RpcError) as gone:
            await ca.call("unsubscribe", {"subscription": everything.id})
        assert gone.value.code == -32602


async def test_subscription_limit_per_connection(running_node: Any, connect: Any) -> None:
    async with running_node(api={"max_subscriptions": 2}) as node, connect(node) as c:
        await c.subscribe("peer_joined")
        await c.subscribe("peer_left")
        with pytest.raises(RpcError) as limit:
            await c.subscribe("peer_left")
        assert limit.value.code == -32004 and "api.max_subscriptions" in limit.value.message


async def test_clients_that_reset_mid_handshake_never_stop_the_server(
    running_node: Any, connect: Any
) -> None:
    # A client that resets its connection right after its upgrade request (as a paused and
    # resumed peer, or a port scanner, does) leaves the server a socket whose peer address is
    # gone (getpeername: ENOTCONN); that must end the connection, not the node's API.
    import socket
    import struct

    async with running_node("n") as node:
        port = urlsplit(_url(node)).port
        token = node.datadir.read_token()
        request = (
            f"GET /?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        for _ in range(60):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            await sock.send(request)
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            await trio.sleep(0)
        await trio.sleep(0.5)
        async with connect(node) as client:
            info = await client.call("node_info")
        assert info["peer_id"] == node.identity.peer_id


def test_remote_address_of_a_reset_socket_is_gone_not_an_error() -> None:
    import errno

    from flnode.api.server import remote_address

    class ResetConnection:  # what trio-websocket does once the peer reset: getpeername fails
        @property
        def remote(self) -> str:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    class Connected:
        remote = "127.0.0.1:5555"

    assert remote_address(ResetConnection()) == "gone"  # type: ignore[arg-type]
    assert remote_address(Connected()) == "127.0.0.1:5555"  # type: ignore[arg-type]

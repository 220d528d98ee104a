"""``node_ban`` / ``node_unban`` on two real nodes: a banned peer is cut off and stays off until
the ban is lifted, then it is dialled again."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from flnode.rpc import RpcError


async def _connected(client: Any, peer: str, want: bool, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while True:
            peers = await client.call("node_peers", {"all": True})
            now = {p["peer_id"]: p["connected"] for p in peers["peers"]}
            if now.get(peer, False) is want:
                return
            await trio.sleep(0.1)


async def test_ban_cuts_a_peer_off_until_it_is_lifted(running_node: Any, connect: Any) -> None:
    async with running_node("a") as a, running_node("b") as b, connect(a) as ca, connect(b) as cb:
        b_peer = b.identity.peer_id
        b_addr = (await cb.call("node_info"))["p2p_addrs"][0]
        await ca.call("node_connect", {"addr": b_addr})
        await _connected(ca, b_peer, True)

        banned = await ca.call("node_ban", {"peer_id": b_peer, "seconds": 600})
        assert banned == {"peer_id": b_peer, "banned": True, "seconds": 600}
        await _connected(ca, b_peer, False)
        await _connected(cb, a.identity.peer_id, False)
        # b keeps dialling a (a is its known peer): a refuses it for as long as the ban lasts
        await trio.sleep(2)
        view = await ca.call("node_peers", {"all": True})
        (entry,) = [p for p in view["peers"] if p["peer_id"] == b_peer]
        assert entry["banned"] is True and entry["connected"] is False
        with pytest.raises(RpcError) as refused:
            await ca.call("node_connect", {"addr": b_addr})
        assert refused.value.code == -32000 and "is banned on this node" in refused.value.message

        assert await ca.call("node_unban", {"peer_id": b_peer}) == {
            "peer_id": b_peer,
            "banned": False,
        }
        await _connected(ca, b_peer, True)
        view = await ca.call("node_peers")
        assert [p["banned"] for p in view["peers"] if p["peer_id"] == b_peer] == [False]


async def test_ban_and_unban_explain_bad_requests(running_node: Any, connect: Any) -> None:
    async with running_node("a") as a, connect(a) as ca:
        me = a.identity.peer_id
        for params, code, words in [
            ({"peer_id": "not-a-peer"}, -32602, "is not a peer id"),
            ({"peer_id": me, "seconds": 0}, -32602, "greater than 0"),
            ({"peer_id": me, "seconds": 10**9}, -32602, "less than or equal"),
            ({"peer_id": me}, -32000, "cannot ban itself"),
        ]:
            with pytest.raises(RpcError) as bad:
                await ca.call("node_ban", params)
            assert bad.value.code == code and words in bad.value.message, bad.value.message
        with pytest.raises(RpcError) as nobody:
            await ca.call("node_unban", {"peer_id": me})
        assert nobody.value.code == -32000 and "is not banned" in nobody.value.message

"""The py-libp2p work-arounds of ``flnode.p2p._libp2p_fixes`` on a real host."""

from __future__ import annotations

import libp2p.pubsub.gossipsub as gossipsub_module
import libp2p.pubsub.pubsub as pubsub_module
import pytest
from libp2p.peer.envelope import consume_envelope

from flnode.p2p import _libp2p_fixes

from .conftest import running_services


async def test_the_signed_peer_record_sent_with_each_rpc_is_built_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_services(1) as (service,):
        # Installed with the other work-arounds before the service's pubsub was built.
        assert pubsub_module.env_to_send_in_RPC is _libp2p_fixes._env_to_send_cached
        assert gossipsub_module.env_to_send_in_RPC is _libp2p_fixes._env_to_send_cached
        host = service.host
        assert host is not None
        built: list[bytes] = []
        original = _libp2p_fixes._original_env_to_send

        def counting(h: object) -> tuple[bytes, bool]:
            envelope, created = original(h)
            built.append(envelope)
            return envelope, created

        monkeypatch.setattr(_libp2p_fixes, "_original_env_to_send", counting)
        _libp2p_fixes._records_to_send.pop(host, None)
        first, _ = _libp2p_fixes._env_to_send_cached(host)
        assert [_libp2p_fixes._env_to_send_cached(host)[0] for _ in range(50)] == [first] * 50
        assert len(built) == 1
        # What is sent is the host's own valid signed record, as py-libp2p would send it.
        _, record = consume_envelope(first, "libp2p-peer-record")  # checks the signature
        assert record.peer_id == host.get_id()
        assert [str(a) for a in record.addrs] == [str(a) for a in host.get_addrs()]
        # After the interval the record is built again (an address change shows up).
        monkeypatch.setattr(_libp2p_fixes, "_RECORD_TTL_S", 0.0)
        _libp2p_fixes._env_to_send_cached(host)
        assert len(built) == 2

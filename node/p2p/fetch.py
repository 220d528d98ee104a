"""Fetch-by-CID: a request/response protocol that moves blobs too large for gossip.

Protocol ``/flnode/fetch/1.0.0`` (libp2p request/response: one varint-length-prefixed message each
way on a fresh stream)::

    request   the binary CID (36 bytes: CIDv1, raw, sha2-256)
    response  one status byte, then for status 0 the blob itself
              0 = found, 1 = not found, 2 = bad request

The requester names a CID and candidate providers (the announcer first), asks them one after the
other with a timeout, and accepts the first response whose bytes hash to the CID. The response
length prefix is checked against ``max_size`` before the body is read, so an oversized response is
cut off while it is being read, not after. A provider that serves bytes which do not hash to the
CID, or an oversized response, is penalised; the next provider is tried. Fetches of the same CID
in flight share one transfer, and at most ``max_concurrent`` fetches run at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.request_response import (
    BytesCodec,
    RequestContext,
    RequestResponse,
    RequestResponseConfig,
)
from libp2p.request_response.exceptions import (
    MessageTooLargeError,
    ProtocolNotSupportedError,
    RequestResponseError,
    RequestTimeoutError,
)

from ..cid import Cid, InvalidCidError
from ..log import get_logger
from .errors import P2PError
from .scoring import PeerScoreBook

FETCH_PROTOCOL = "/flnode/fetch/1.0.0"
STATUS_FOUND = 0
STATUS_NOT_FOUND = 1
STATUS_BAD_REQUEST = 2
DEFAULT_MAX_FETCH_SIZE = 16 * 2**20

BlobSource = Callable[[Cid], Awaitable[bytes | None]]
"""Looks a blob up in the local store: its bytes, or None. Supplied by the node."""

log = get_logger("flnode.p2p.fetch")


class FetchError(P2PError):
    """No provider delivered the blob; ``attempts`` says what each one did."""

    def __init__(self, cid: Cid, attempts: Sequence[tuple[str, str]]) -> None:
        self.cid = cid
        self.attempts = tuple(attempts)
        tried = ", ".join(f"{peer[-8:]}: {why}" for peer, why in attempts) or "no providers"
        super().__init__(f"could not fetch {cid} ({tried})")


@dataclass(slots=True)
class FetchStatistics:
    """Counters for the metrics endpoint."""

    served: int = 0
    served_bytes: int = 0
    served_not_found: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    failed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    result: bytes | None = None


class BlobFetcher:
    """Both sides of fetch-by-CID on one host."""

    def __init__(
        self,
        host: IHost,
        source: BlobSource,
        scores: PeerScoreBook,
        *,
        max_size: int = DEFAULT_MAX_FETCH_SIZE,
        timeout_s: float = 30.0,
        max_concurrent: int = 8,
        max_concurrent_inbound: int = 16,
    ) -> None:
        self.host = host
        self.source = source
        self.scores = scores
        self.max_size = max_size
        self.timeout_s = timeout_s
        self.stats = FetchStatistics()
        self._limit = trio.Semaphore(max_concurrent)
        self._inflight: dict[Cid, _Pending] = {}
        self._config = RequestResponseConfig(
            timeout=timeout_s,
            max_request_size=64,
            max_response_size=max_size + 1,
            max_concurrent_inbound=max_concurrent_inbound,
        )
        self._rr = RequestResponse(host)
        self._rr.set_handler(FETCH_PROTOCOL, self._serve, BytesCodec(), self._config)

    async def _serve(self, request: bytes, context: RequestContext) -> bytes:
        peer = context.peer_id.to_base58()
        if self.scores.is_banned(peer):
            return bytes([STATUS_BAD_REQUEST])
        try:
            cid = Cid.parse(bytes(request))
        except InvalidCidError:
            self.scores.penalise(peer, "malformed")
            return bytes([STATUS_BAD_REQUEST])
        data = await self.source(cid)
        if data is None or len(data) > self.max_size:
            self.stats.served_not_found += 1
            return bytes([STATUS_NOT_FOUND])
        self.stats.served += 1
        self.stats.served_bytes += len(data)
        return bytes([STATUS_FOUND]) + data

    async def fetch(self, cid: Cid, providers: Sequence[str]) -> bytes:
        """The verified bytes of ``cid`` from the first provider that has them.

        ``providers`` are peer IDs in the order to try (the announcer first). Raises
        :class:`FetchError` listing each provider's failure when none delivers.
        """
        while (pending := self._inflight.get(cid)) is not None:
            await pending.done.wait()  # someone is already fetching it: share the transfer
            if pending.result is not None:
                return pending.result
            # that attempt failed (perhaps with other providers): make our own
        pending = self._inflight[cid] = _Pending()
        try:
            async with self._limit:
                pending.result = await self._fetch_from_providers(cid, providers)
            return pending.result
        finally:
            pending.done.set()
            if self._inflight.get(cid) is pending:
                del self._inflight[cid]

    async def _fetch_from_providers(self, cid: Cid, providers: Sequence[str]) -> bytes:
        attempts: list[tuple[str, str]] = []
        own = self.host.get_id().to_base58()
        for peer in dict.fromkeys(providers):
            if peer == own:
                continue
            if self.scores.is_banned(peer):
                attempts.append((peer, "banned"))
                continue
            why = await self._try(cid, peer)
            if isinstance(why, bytes):
                self.stats.fetched += 1
                self.stats.fetched_bytes += len(why)
                return why
            attempts.append((peer, why))
            self.stats.rejected[why] = self.stats.rejected.get(why, 0) + 1
        self.stats.failed += 1
        raise FetchError(cid, attempts)

    async def _try(self, cid: Cid, peer: str) -> bytes | str:
        """The blob, or a short reason why this provider did not deliver it."""
        try:
            response = await self._rr.send_request(
                ID.from_base58(peer), [FETCH_PROTOCOL], cid.to_bytes(), BytesCodec(), self._config
            )
        except MessageTooLargeError:
            self.scores.penalise(peer, "fetch_oversized")
            log.warning("fetch response oversized", cid=str(cid), peer=peer, limit=self.max_size)
            return "oversized"
        except RequestTimeoutError:
            self.scores.penalise(peer, "fetch_error")
            return "timeout"
        except ProtocolNotSupportedError:
            return "unsupported"
        except (RequestResponseError, OSError, trio.BrokenResourceError) as exc:
            self.scores.penalise(peer, "fetch_error")
            return f"error: {type(exc).__name__}"
        except Exception as exc:  # libp2p raises assorted types when a dial fails
            return f"unreachable: {type(exc).__name__}"
        if not response:
            self.scores.penalise(peer, "fetch_error")
            return "empty response"
        status, data = response[0], bytes(response[1:])
        if status == STATUS_NOT_FOUND:
            return "not found"
        if status != STATUS_FOUND:
            return f"status {status}"
        if hashlib.sha256(data).digest() != cid.digest:
            self.scores.penalise(peer, "fetch_cid_mismatch")
            log.warning("provider served bytes that do not match the CID", cid=str(cid), peer=peer)
            return "cid mismatch"
        return data

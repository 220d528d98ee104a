"""A trio client for the control API, used by ``flnode console``, the devnet and the tests.

``ApiEndpoint.from_datadir(D)`` finds a running node's URL (``<D>/node.json``) and token
(``<D>/api.token``). ``ApiClient.open(endpoint)`` connects, authenticates with an ``auth`` call
(the token stays out of URLs and proxy logs), matches replies to calls by ``id`` and routes
subscription notifications to their :class:`ClientSubscription`, so several calls may be in flight
at once from different tasks.

Who reads the connection: while there is no subscription, a task waiting for a reply reads it
itself, one such task at a time (the others wait until it hands their reply, or the reading, on),
so a reply reaches its caller without a hop through another task. The first ``subscribe`` starts a
reader task that from then on reads everything, since events arrive whether or not a call waits.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from ..datadir import DataDir
from ..errors import FLNodeError
from ..rpc import RpcError

DEFAULT_TIMEOUT_S = 30.0
MAX_MESSAGE = 64 * 2**20


class ApiConnectionError(FLNodeError):
    """The API could not be reached, refused the connection, or the connection dropped."""


@dataclass(frozen=True, slots=True)
class ApiEndpoint:
    """Where a node's API is and the token it wants."""

    url: str
    token: str | None

    @classmethod
    def from_datadir(cls, path: str | Path) -> ApiEndpoint:
        datadir = DataDir(Path(path))
        try:
            state = json.loads(datadir.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ApiConnectionError(
                f"no node is running with data dir {datadir.path} ({datadir.state_file} is "
                f"missing); start one with `flnode start --datadir {datadir.path}`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ApiConnectionError(f"cannot read {datadir.state_file}: {exc}") from None
        url = state.get("api_url")
        if not url:
            raise ApiConnectionError(
                f"the node with data dir {datadir.path} does not serve the API (api.enabled)"
            )
        try:
            token = datadir.read_token()
        except OSError as exc:
            raise ApiConnectionError(f"cannot read the API token: {exc}") from None
        return cls(url, token)


class ClientSubscription:
    """Events of one subscription; iterate it (``async for event in sub``)."""

    def __init__(self, client: ApiClient, sid: str, receive: trio.MemoryReceiveChannel[dict]):
        self.client = client
        self.id = sid
        self.events: list[str] = []
        self._receive = receive

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._receive.__aiter__()

    async def next(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        with trio.fail_after(timeout):
            return await self._receive.receive()

    async def close(self) -> None:
        await self.client.unsubscribe(self)


class _Waiter:
    """A call waiting for its reply; ``wake`` is set when the reply (or the reading) is its turn."""

    __slots__ = ("following", "reply", "wake")

    def __init__(self) -> None:
        self.reply: list[dict[str, Any]] = []
        self.wake = trio.Event()
        self.following = False  # waiting on wake while another task reads


class ApiClient:
    """An open, authenticated API connection. Use :meth:`open`."""

    def __init__(self, ws: WebSocketConnection, nursery: trio.Nursery | None = None) -> None:
        self.ws = ws
        self._nursery = nursery
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self._subs: dict[str, tuple[trio.MemorySendChannel[dict], trio.MemoryReceiveChannel[dict]]]
        self._subs = {}
        self._closed: str | None = None
        self._reading = False  # a caller is reading the connection (see the module docstring)
        self._reader_started = False  # the reader task reads from now on

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        endpoint: ApiEndpoint,
        *,
        token_in_url: bool = False,
        connect_timeout: float = 10.0,
    ) -> AsyncIterator[ApiClient]:
        url = endpoint.url
        if token_in_url and endpoint.token is not None:
            url = f"{url}{'&' if '?' in url else '?'}token={endpoint.token}"
        connected = False
        try:
            async with open_websocket_url(
                url,
                max_message_size=MAX_MESSAGE,
                receive_buffer_size=2**18,
                connect_timeout=connect_timeout,
            ) as ws:
                connected = True
                try:
                    async with trio.open_nursery() as nursery:
                        client = cls(ws, nursery)
                        try:
                            if endpoint.token is not None and not token_in_url:
                                await client.call("auth", {"token": endpoint.token})
                            yield client
                        finally:
                            nursery.cancel_scope.cancel()
                            client._release_all()
                except BaseExceptionGroup as group:
                    # The caller's own exception (the reader never raises): hand it back as
                    # raised, not wrapped in the group of this context manager's nursery.
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
        except (OSError, HandshakeError) as exc:
            if connected:
                raise
            raise ApiConnectionError(
                f"cannot connect to the API at {endpoint.url}: {_reason(exc)}; is the node running?"
            ) from None

    async def call(
        self, method: str, params: dict[str, Any] | list[Any] | None = None, *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Any:  # fmt: skip
        """Call ``method``; return its result or raise :class:`~flnode.rpc.RpcError`."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        reply = await self.send_raw(json.dumps(request), request_id, timeout=timeout)
        if "error" in reply:
            err = reply["error"]
            raise RpcError(int(err.get("code", 0)), str(err.get("message")), err.get("data"))
        return reply.get("result")

    async def send_raw(
        self, frame: str | bytes, request_id: int, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a frame and wait for the reply whose id is ``request_id`` (for odd requests)."""
        if self._closed is not None:
            raise ApiConnectionError(self._closed)
        waiter = _Waiter()
        self._pending[request_id] = waiter
        try:
            await self.ws.send_message(frame)
            if not waiter.reply:
                # A bare deadline scope rather than trio.fail_after: the same, but cheaper.
                with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                    await self._wait_for(waiter)
                if scope.cancelled_caught:
                    raise ApiConnectionError(f"no reply within {timeout} s")
        except ConnectionClosed as exc:
            raise ApiConnectionError(f"the API connection closed: {exc.reason}") from None
        finally:
            self._pending.pop(request_id, None)
        if not waiter.reply:
            raise ApiConnectionError(self._closed or "the API connection closed")
        return waiter.reply[0]

    async def _wait_for(self, waiter: _Waiter) -> None:
        """Until ``waiter`` has its reply or the connection closed; reads when nobody else does."""
        while not waiter.reply and self._closed is None:
            if self._reading or self._reader_started:
                waiter.following = True
                try:
                    await waiter.wake.wait()  # the reply, the close, or the reading is ours now
                finally:
                    waiter.following = False
                waiter.wake = trio.Event()
                continue
            self._reading = True
            try:
                while not waiter.reply and self._closed is None and not self._reader_started:
                    await self._read_one()
            finally:
                self._reading = False
                # Hand the reading on to a call that waits for it (this one may have been
                # cancelled or timed out, while others wait for replies only a reader routes).
                # Not to one still sending: it reads once sent, but its send may wait for the
                # server, which may wait for the replies nobody would be reading meanwhile.
                if not self._reader_started:
                    for other in self._pending.values():
                        if other.following and not other.reply:
                            other.wake.set()
                            break

    async def subscribe(self, *events: str) -> ClientSubscription:
        if not self._reader_started and self._nursery is not None:
            # Events come whether or not a call waits: a task reads from now on. A caller in
            # the middle of a read finishes it (receivers are served in order) and then waits.
            self._reader_started = True
            self._nursery.start_soon(self._reader)
        result = await self.call("subscribe", {"events": list(events)})
        sid = result["subscription"]
        _, receive = self._channel(sid)
        sub = ClientSubscription(self, sid, receive)
        sub.events = result["events"]
        return sub

    async def unsubscribe(self, sub: ClientSubscription) -> None:
        await self.call("unsubscribe", {"subscription": sub.id})
        send, _ = self._subs.pop(sub.id, (None, None))
        if send is not None:
            send.close()

    def _channel(
        self, sid: str
    ) -> tuple[trio.MemorySendChannel[dict], trio.MemoryReceiveChannel[dict]]:
        # Created on first use by either side: a notification may arrive before the reply
        # to subscribe has been handed to the caller.
        if sid not in self._subs:
            self._subs[sid] = trio.open_memory_channel[dict](1024)
        return self._subs[sid]

    async def _reader(self) -> None:
        try:
            while self._closed is None:
                await self._read_one()
        finally:
            self._release_all()

    async def _read_one(self) -> None:
        """Read one frame and route it; on a closed connection, wake every waiting call."""
        try:
            frame = await self.ws.get_message()
        except ConnectionClosed as exc:
            self._closed = f"the API connection closed: {exc.reason}"
            self._release_all()
            return
        try:
            message = json.loads(frame)
        except ValueError:
            return
        self._route(message)

    def _release_all(self) -> None:
        """Wake every waiting call and end every subscription (the connection is done)."""
        for waiter in self._pending.values():
            waiter.wake.set()
        for send, _ in self._subs.values():
            send.close()

    def _route(self, message: Any) -> None:
        if isinstance(message, list):
            for item in message:
                self._route(item)
            return
        if not isinstance(message, dict):
            return
        if message.get("method") == "subscription":
            params = message.get("params") or {}
            send, _ = self._channel(str(params.get("subscription")))
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                send.send_nowait(params)
            return
        waiter = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if waiter is not None:
            waiter.reply.append(message)
            waiter.wake.set()
        elif message.get("id") is None and "error" in message:
            # An error the server could not tie to a request (parse error, frame too large):
            # wake every caller, since one of them sent the offending frame.
            for waiter in list(self._pending.values()):
                waiter.reply.append(message)
                waiter.wake.set()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    status = getattr(exc, "status_code", None)
    if status is not None:
        body = getattr(exc, "body", b"") or b""
        return f"HTTP {status} {body.decode(errors='replace').strip()}".strip()
    return str(exc) or type(exc).__name__

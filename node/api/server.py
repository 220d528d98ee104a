"""The API service: a trio-websocket server speaking JSON-RPC 2.0 to authenticated clients.

Per connection: the handshake is refused (HTTP 503) beyond ``api.max_connections`` and (HTTP 401)
when a ``?token=`` query parameter is wrong; without one, the connection is open but every call
except ``auth`` is refused until ``auth`` succeeds, and three wrong tokens close it. Frames are read
one at a time and each is served in its own task (at most ``api.max_inflight`` at once per
connection, which also pushes back on a client that floods), so a slow call such as
``node_connect`` does not hold up the rest; replies may therefore come out of order and are matched
by ``id``, as JSON-RPC intends.

Frame sizes: up to ``api.max_frame_bytes`` a frame is served; up to four times that it is answered
with ``-32002``; beyond, trio-websocket closes the connection with code 1009 (it buffers the whole
message first, so some hard bound is needed). None of these stops the server.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from ..config import ApiSection, is_loopback_host
from ..events import EventBus
from ..log import get_logger
from ..rpc import MethodProvider
from ..service import Service
from .auth import ensure_token, token_is_private, tokens_match
from .builtin import builtin_methods
from .dispatch import ApiStatistics, Dispatcher
from .registry import MethodRegistry
from .session import Session

log = get_logger("flnode.api")

#: Frames up to this multiple of max_frame_bytes get an error reply instead of a closed socket.
HARD_LIMIT_FACTOR = 4
RECEIVE_BUFFER = 2**18  # stack notes §4: the 4 KiB default is slow for large frames
#: A TCP connection that has not finished the websocket handshake by then is dropped (the
#: library's default is 60 s, long enough for a trickle of half-open sockets to pile up).
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


class ApiService(Service):
    """The control API of one node. See the module docstring."""

    name = "api"

    def __init__(
        self,
        settings: ApiSection,
        token_file: Path,
        bus: EventBus,
        providers: list[MethodProvider] | None = None,
    ) -> None:
        self.settings = settings
        self.token_file = token_file
        self.bus = bus
        self.registry = MethodRegistry()
        self.stats = ApiStatistics()
        self._token = ""
        for method in builtin_methods(
            self.registry,
            bus,
            lambda: self._token,
            max_subscriptions=settings.max_subscriptions,
            event_queue=settings.event_queue,
        ):
            self.registry.add(method)
        for provider in providers or []:
            self.add_provider(provider)
        self.dispatcher = Dispatcher(
            self.registry,
            max_frame_bytes=settings.max_frame_bytes,
            max_batch=settings.max_batch,
            call_timeout_s=settings.call_timeout_s,
            stats=self.stats,
        )
        self.port: int | None = None

    def add_provider(self, provider: MethodProvider) -> None:
        """Serve a namespace of methods (before :meth:`run`, or while running)."""
        self.registry.add_provider(provider)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = self.settings.listen_host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/"

    def describe(self) -> dict[str, object]:
        return {"api_url": self.url}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token, created = ensure_token(self.token_file)
        if created:
            log.info("api token created", path=str(self.token_file))
        if not token_is_private(self.token_file):
            log.warning(
                "api token is readable by other users; run chmod 600 on it",
                path=str(self.token_file),
            )
        host = self.settings.listen_host
        if not is_loopback_host(host):
            log.warning(
                "api listening beyond loopback: anyone who can reach it may try the token",
                host=host,
            )
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve_websocket,
                    self._handle,
                    host,
                    self.settings.port,
                    ssl_context=None,
                    max_message_size=self.settings.max_frame_bytes * HARD_LIMIT_FACTOR,
                    receive_buffer_size=RECEIVE_BUFFER,
                    connect_timeout=HANDSHAKE_TIMEOUT_S,
                    disconnect_timeout=CLOSE_TIMEOUT_S,
                )
            )
            self.port = server.port
            log.info("api listening", url=self.url, methods=len(self.registry.names()))
            task_status.started()
            await trio.sleep_forever()

    async def _handle(self, request: WebSocketRequest) -> None:
        if self.stats.connections >= self.settings.max_connections:
            self.stats.rejected_connections += 1
            log.warning("api connection refused: api.max_connections reached")
            await request.reject(503, body=b"too many API connections (api.max_connections)\n")
            return
        # Take the slot before any await, so concurrent handshakes cannot overshoot the limit.
        self.stats.connections += 1
        try:
            query = parse_qs(urlsplit(request.path).query)
            presented = query.get("token")
            if presented is not None and not tokens_match(self._token, presented[0]):
                self.stats.rejected_connections += 1
                log.warning("api connection refused: wrong token", remote=remote_address(request))
                await request.reject(401, body=b"wrong token; use the one in <datadir>/api.token\n")
                return
            try:
                ws = await request.accept()
            except ConnectionClosed:
                return
            self.stats.connections_total += 1
            session = Session(remote=remote_address(ws), authenticated=presented is not None)
            try:
                await self._serve(ws, session)
            except (OSError, trio.BrokenResourceError) as exc:
                # The client's socket failed under us (reset, timed out): that ends this
                # connection, never the server.
                log.debug("api connection lost", remote=session.remote, error=repr(exc))
            finally:
                session.close()
        finally:
            self.stats.connections -= 1

    async def _serve(self, ws: WebSocketConnection, session: Session) -> None:
        async def send(frame: str) -> None:
            try:
                await ws.send_message(frame)
            except ConnectionClosed:
                raise trio.ClosedResourceError("the API connection closed") from None

        session.send = send
        inflight = trio.Semaphore(self.settings.max_inflight)
        async with trio.open_nursery() as nursery:
            session.nursery = nursery
            if not session.authenticated:
                nursery.start_soon(self._close_unless_authenticated, ws, session)

            async def read_and_serve() -> None:
                # Each frame is served in its own task, but not in a task spawned for it: the
                # task that read the frame serves it, after starting the task that reads the
                # next one. The reply then goes out in the same scheduler pass the frame came in
                # (a spawned task would run a pass later), and a slow call still holds up nothing.
                try:
                    frame = await ws.get_message()
                except ConnectionClosed:
                    # The client left (or sent a frame beyond the hard limit: code 1009).
                    nursery.cancel_scope.cancel()
                    return
                try:  # get_message was the checkpoint; wait here only at the limit
                    inflight.acquire_nowait()
                except trio.WouldBlock:
                    await inflight.acquire()  # nobody reads meanwhile: that is the push-back
                nursery.start_soon(read_and_serve)
                try:
                    reply = await self.dispatcher.handle_frame(frame, session)
                    if reply is not None:
                        await send(reply)
                    if session.close_requested:
                        await ws.aclose(code=1008, reason="too many failed auth attempts")
                except trio.ClosedResourceError:
                    pass
                except Exception as exc:  # no frame may take the node down (the dispatcher
                    # answers every error it knows; this is for the ones it does not)
                    log.error("api frame failed", error=repr(exc))
                finally:
                    inflight.release()

            nursery.start_soon(read_and_serve)

    async def _close_unless_authenticated(self, ws: WebSocketConnection, session: Session) -> None:
        """Free the slot of a connection that never proves the token (api.auth_timeout_s)."""
        await trio.sleep(self.settings.auth_timeout_s)
        if not session.authenticated:
            await ws.aclose(code=1008, reason="not authenticated in time")


def remote_address(connection: WebSocketRequest | WebSocketConnection) -> str:
    """The client's ``host:port``, or ``"gone"`` when its socket was reset already.

    trio-websocket asks the socket (``getpeername``), which raises ENOTCONN once the peer has
    reset the connection; that happened to a node that was paused (SIGSTOP) while clients
    waited, and it took the whole API server down.
    """
    try:
        return str(connection.remote)
    except OSError:
        return "gone"

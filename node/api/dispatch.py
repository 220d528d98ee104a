"""JSON-RPC 2.0 over text frames: parsing, validation, batches, errors, authentication gate.

:class:`Dispatcher` turns one received frame into at most one frame to send back; it knows nothing
about websockets, so it can be tested (and benchmarked) on its own. The order of checks is chosen
so that an unauthenticated client learns nothing: after the envelope is checked, every method but
``auth`` is refused with ``-32001`` before the method is even looked up.

Failure of a handler never escapes: :class:`~flnode.rpc.RpcError` keeps its code, other
:class:`~flnode.errors.FLNodeError` become ``-32000`` with their message (they are written for
people), and anything else is logged with its traceback and answered with ``-32603``.

A call that runs longer than ``call_timeout_s`` is cancelled and answered with ``-32003``. Trio
delivers a cancellation only where the handler waits, so a handler that never waits (no ``await``,
``async with`` or ``async for`` in its body, like ``node_info``) cannot be cancelled at all; its
call skips the deadline scope, which is most of the dispatcher's own cost per call.
"""

from __future__ import annotations

import dis
import inspect
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio
from pydantic import BaseModel, ValidationError

from ..errors import FLNodeError
from ..log import get_logger
from ..rpc import (
    CALL_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    REQUEST_TOO_LARGE,
    SERVER_ERROR,
    UNAUTHORIZED,
    NoParams,
    RpcError,
    RpcMethod,
)
from ..strictjson import MAX_DEPTH, nesting_depth
from .registry import MethodRegistry
from .session import Session, set_current_session

log = get_logger("flnode.api")

#: Methods an unauthenticated connection may call.
OPEN_METHODS = frozenset({"auth"})
UNAUTHORIZED_MESSAGE = (
    "not authenticated: call auth with the token from <datadir>/api.token first "
    "(or connect with ?token=...)"
)


@dataclass(slots=True)
class ApiStatistics:
    """Counters for the metrics endpoint: calls per method and errors per JSON-RPC code."""

    frames: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[int] = field(default_factory=Counter)
    connections: int = 0
    connections_total: int = 0
    rejected_connections: int = 0


def _error(code: int, message: str, request_id: Any = None, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": RpcError(code, message, data).to_json()}


#: One encoder for every reply: ``json.dumps`` with keyword arguments builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _dumps(obj: Any) -> str:
    return _encode(obj)


def _dumps_id(request_id: str | int | None) -> str:
    # An int (bool was refused before) encodes as its decimal digits.
    return str(request_id) if type(request_id) is int else _encode(request_id)


def _jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result


class Dispatcher:
    """Serves frames against a :class:`MethodRegistry`. See the module docstring."""

    def __init__(
        self,
        registry: MethodRegistry,
        *,
        max_frame_bytes: int = 2**20,
        max_batch: int = 100,
        call_timeout_s: float = 30.0,
        stats: ApiStatistics | None = None,
    ) -> None:
        self.registry = registry
        self.max_frame_bytes = max_frame_bytes
        self.max_batch = max_batch
        self.call_timeout_s = call_timeout_s
        self.stats = stats or ApiStatistics()
        self._may_wait: dict[Any, bool] = {}  # by handler; see handler_may_wait

    async def handle_frame(self, frame: str | bytes, session: Session) -> str | None:
        """The reply to one frame, or None when nothing is to be sent (notifications only)."""
        self.stats.frames += 1
        if len(frame) > self.max_frame_bytes:
            self.stats.errors[REQUEST_TOO_LARGE] += 1
            return _dumps(
                _error(
                    REQUEST_TOO_LARGE,
                    f"request of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes} "
                    "bytes (api.max_frame_bytes)",
                )
            )
        try:
            text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
            # json's C scanner recurses once per level, and under py_ecc's recursion limit (any
            # node with a ledger) a frame of "[[[[…" overflows the C stack: bound the depth
            # first. Counting brackets is cheap; the exact scan runs only past the bound.
            if text.count("[") + text.count("{") > MAX_DEPTH and nesting_depth(text) > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            request = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self.stats.errors[PARSE_ERROR] += 1
            return _dumps(_error(PARSE_ERROR, f"parse error: not valid JSON ({exc})"))
        if isinstance(request, list):
            return await self._batch(request, session)
        return await self.handle_request(request, session)

    async def _batch(self, requests: list[Any], session: Session) -> str | None:
        if not requests:
            self.stats.errors[INVALID_REQUEST] += 1
            return _dumps(_error(INVALID_REQUEST, "invalid request: empty batch"))
        if len(requests) > self.max_batch:
            self.stats.errors[INVALID_REQUEST] += 1
            return _dumps(
                _error(
                    INVALID_REQUEST,
                    f"invalid request: batch of {len(requests)} exceeds the limit of "
                    f"{self.max_batch} (api.max_batch)",
                )
            )
        replies: list[str | None] = [None] * len(requests)

        async def one(i: int, request: Any) -> None:
            replies[i] = await self.handle_request(request, session)

        async with trio.open_nursery() as nursery:
            for i, request in enumerate(requests):
                nursery.start_soon(one, i, request)
        answered = [r for r in replies if r is not None]
        return f"[{','.join(answered)}]" if answered else None

    async def handle_request(self, request: Any, session: Session) -> str | None:
        """The encoded reply to one decoded request object; None for a notification."""
        if not isinstance(request, dict):
            self.stats.errors[INVALID_REQUEST] += 1
            return _dumps(_error(INVALID_REQUEST, "invalid request: expected a JSON object"))
        request_id = request.get("id")
        if not (request_id is None or isinstance(request_id, str | int)) or isinstance(
            request_id, bool
        ):
            self.stats.errors[INVALID_REQUEST] += 1
            return _dumps(
                _error(INVALID_REQUEST, "invalid request: id must be a string, number or null")
            )
        is_notification = "id" not in request
        try:
            result = await self._call(request, session)
        except RpcError as exc:
            self.stats.errors[exc.code] += 1
            if is_notification:
                return None
            return _dumps({"jsonrpc": "2.0", "id": request_id, "error": exc.to_json()})
        if is_notification:
            return None
        # The result is encoded already (in _call, where a failure is still an error reply).
        return f'{{"jsonrpc":"2.0","id":{_dumps_id(request_id)},"result":{result}}}'

    async def _call(self, request: dict[str, Any], session: Session) -> str:
        if request.get("jsonrpc") != "2.0":
            raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"')
        name = request.get("method")
        if not isinstance(name, str):
            raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string')
        raw_params = request.get("params", {})
        if not isinstance(raw_params, dict | list):
            raise RpcError(
                INVALID_REQUEST, 'invalid request: "params" must be an object or an array'
            )
        if not session.authenticated and name not in OPEN_METHODS:
            raise RpcError(UNAUTHORIZED, UNAUTHORIZED_MESSAGE)
        method = self.registry.get(name)
        params = validate_params(method, raw_params)
        self.stats.calls[name] += 1
        set_current_session(session)
        handler = method.handler
        may_wait = self._may_wait.get(handler)
        if may_wait is None:
            may_wait = self._may_wait[handler] = handler_may_wait(handler)
        try:
            if may_wait:
                # A bare deadline scope rather than trio.fail_after: same effect, without the
                # generator-based context manager around it.
                with trio.CancelScope(deadline=trio.current_time() + self.call_timeout_s) as scope:
                    result = await handler(params)
                if scope.cancelled_caught:
                    raise trio.TooSlowError
            else:
                # It runs to its end without a checkpoint: no deadline could cancel it.
                result = await handler(params)
            return _dumps(_jsonable(result))  # encoded here, so a failure is an error reply
        except RpcError:
            raise
        except trio.TooSlowError:
            raise RpcError(
                CALL_TIMEOUT, f"{name} did not finish within {self.call_timeout_s} s"
            ) from None
        except FLNodeError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None
        except Exception as exc:
            log.exception("api method failed", method=name)
            raise RpcError(
                INTERNAL_ERROR, f"internal error in {name}: {type(exc).__name__} (see the node log)"
            ) from None


#: The instructions through which a coroutine can suspend (await, async for, async with), in
#: the Python versions we run on; a coroutine whose code has none of them never reaches a trio
#: checkpoint, so it runs to its end in one step and no cancellation can reach it.
_SUSPENDING_OPS = frozenset(
    {
        "YIELD_VALUE",
        "YIELD_FROM",
        "SEND",
        "GET_AWAITABLE",
        "GET_AITER",
        "GET_ANEXT",
        "END_ASYNC_FOR",
        "BEFORE_ASYNC_WITH",
        "SETUP_ASYNC_WITH",
    }
)


def handler_may_wait(handler: Any) -> bool:
    """False only for an ``async def`` function whose body has no await, async for or async with.

    Anything else (a partial, an object with ``__call__``, a function that returns an awaitable,
    a decorated handler whose wrapper awaits) counts as possibly waiting.
    """
    code = getattr(handler, "__code__", None)
    if code is None or not code.co_flags & inspect.CO_COROUTINE:
        return True
    return any(ins.opname in _SUSPENDING_OPS for ins in dis.get_instructions(code))


#: What a method without parameters gets when called without any (frozen, so it can be shared).
_NO_PARAMS = NoParams()


def validate_params(method: RpcMethod, raw: dict[str, Any] | list[Any]) -> Any:
    """Build ``method.params`` from named or positional parameters, or raise ``-32602``."""
    if method.params is NoParams and not raw:
        return _NO_PARAMS  # what model_validate({}) gives, without a round through pydantic
    fields = list(method.params.model_fields)
    if isinstance(raw, list):
        if len(raw) > len(fields):
            expected = f"({', '.join(fields)})" if fields else "none"
            raise RpcError(
                INVALID_PARAMS,
                f"invalid params for {method.name}: takes at most {len(fields)} "
                f"parameter(s) {expected}, got {len(raw)}",
            )
        raw = dict(zip(fields, raw, strict=False))
    try:
        return method.params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "params"
            if err["type"] == "extra_forbidden":
                known = ", ".join(fields) or "none"
                problems.append(f"unknown parameter {where!r} (parameters: {known})")
            elif err["type"] == "missing":
                problems.append(f"missing parameter {where!r}")
            else:
                problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise RpcError(
            INVALID_PARAMS,
            f"invalid params for {method.name}: {'; '.join(problems)}",
            data=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
        ) from None

"""Control-API methods as plain declarations, so that any layer can offer some.

The websocket server lives in :mod:`flnode.api`, but the methods it serves come from everywhere:
``node_*`` from the node itself, later ``chain_*`` from consensus, ``task_*``/``round_*`` from
learning. Layers may not import each other (tests/test_packaging.py), so the vocabulary they share
lives here, at the top of the package: a method is an :class:`RpcMethod` (name, typed parameters,
an async handler, one line of help), grouped by namespace into a :class:`MethodProvider`, and a
handler that fails on purpose raises :class:`RpcError` with a JSON-RPC code and a message a person
understands. The Node collects the providers and hands them to the API service.

Parameters are a pydantic model (frozen, unknown keys forbidden), so a wrong call is rejected with
``-32602`` and a message naming the parameter before the handler ever runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from .errors import FLNodeError

# JSON-RPC 2.0 codes (https://www.jsonrpc.org/specification#error_object) ...
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# ... and flnode's own, in the range the specification reserves for servers.
SERVER_ERROR = -32000
UNAUTHORIZED = -32001
REQUEST_TOO_LARGE = -32002
CALL_TIMEOUT = -32003
LIMIT_EXCEEDED = -32004
UNAVAILABLE = -32005


class RpcError(FLNodeError):
    """A call failed in a way the caller should hear about: a JSON-RPC code, a message, data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class Params(BaseModel):
    """Base of every method's parameters: frozen, and unknown parameters are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(Params):
    """For methods that take no parameters."""


Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RpcMethod:
    """One method of the control API.

    ``handler`` is awaited with an instance of ``params`` and returns something JSON can encode
    (dicts, lists, str, int, float, bool, None) or a pydantic model. ``summary`` is the one line
    ``help`` shows; ``result`` says in words what comes back.
    """

    name: str
    handler: Handler
    summary: str
    params: type[Params] = NoParams
    result: str = ""

    @property
    def namespace(self) -> str:
        return self.name.split("_", 1)[0]


@runtime_checkable
class MethodProvider(Protocol):
    """Something that offers a namespace of methods (``<namespace>_<verb>``)."""

    @property
    def rpc_namespace(self) -> str: ...

    def rpc_methods(self) -> Iterable[RpcMethod]: ...


@dataclass(frozen=True, slots=True)
class StaticProvider:
    """A fixed list of methods under one namespace (the simplest :class:`MethodProvider`)."""

    namespace: str
    methods: tuple[RpcMethod, ...]

    @property
    def rpc_namespace(self) -> str:
        return self.namespace

    def rpc_methods(self) -> Iterable[RpcMethod]:
        return self.methods

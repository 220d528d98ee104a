"""The table of methods the API serves, filled namespace by namespace.

Each provider (the node, later consensus and learning) brings a namespace; the registry refuses a
method outside its provider's namespace or a name registered twice, so two services cannot silently
shadow each other's methods. Lookups of unknown names suggest the closest known ones.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from ..rpc import METHOD_NOT_FOUND, MethodProvider, RpcError, RpcMethod

_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_NAMESPACE = re.compile(r"^[a-z][a-z0-9]*$")
#: Namespaces whose method names follow another standard's spelling. Ethereum's JSON-RPC names
#: are camelCase after the namespace (``eth_getBlockByNumber``), and tools call them by exactly
#: that name, so these namespaces may use ``<namespace>_<camelCase>``; every other is snake_case.
FOREIGN_NAMESPACES = frozenset({"eth", "net", "web3"})
_FOREIGN_NAME = re.compile(r"^([a-z][a-z0-9]*)_[a-z][A-Za-z0-9]*$")


class MethodRegistry:
    """Methods by name, with help text generated from their parameter models."""

    def __init__(self) -> None:
        self._methods: dict[str, RpcMethod] = {}

    def add(self, method: RpcMethod) -> None:
        """Register one method; its name must be new and lower_snake_case (see FOREIGN_NAMESPACES)."""
        foreign = _FOREIGN_NAME.match(method.name)
        if not _NAME.match(method.name) and not (foreign and foreign[1] in FOREIGN_NAMESPACES):
            raise ValueError(f"method name {method.name!r} must be lower_snake_case")
        if method.name in self._methods:
            raise ValueError(f"method {method.name!r} is already registered")
        self._methods[method.name] = method

    def add_provider(self, provider: MethodProvider) -> None:
        """Register every method of ``provider``; each must be ``<namespace>_<verb>``."""
        namespace = provider.rpc_namespace
        if not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace {namespace!r} must be one lower-case word")
        for method in provider.rpc_methods():
            if not method.name.startswith(f"{namespace}_"):
                raise ValueError(
                    f"method {method.name!r} is outside its provider's namespace {namespace!r}"
                )
            self.add(method)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def get(self, name: str) -> RpcMethod:
        """The method called ``name``, or an ``-32601`` error suggesting close names."""
        try:
            return self._methods[name]
        except KeyError:
            raise RpcError(METHOD_NOT_FOUND, self._unknown(name)) from None

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._methods, n=3, cutoff=0.6)
        if not close:
            prefix = name.split("_", 1)[0]
            close = [m for m in sorted(self._methods) if m.startswith(f"{prefix}_")][:3]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown method {name!r}{hint} (rpc_methods lists them all)"

    def describe(self, name: str) -> dict[str, Any]:
        """Help for one method: summary, parameters (name, type, required, default), result."""
        return describe_method(self.get(name))

    def describe_all(self) -> list[dict[str, Any]]:
        return [describe_method(self._methods[n]) for n in self.names()]


def describe_method(method: RpcMethod) -> dict[str, Any]:
    params = []
    for pname, field in method.params.model_fields.items():
        entry: dict[str, Any] = {
            "name": pname,
            "type": _type_name(field.annotation),
            "required": field.is_required(),
            "description": field.description or "",
        }
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            entry["default"] = list(default) if isinstance(default, tuple) else default
        params.append(entry)
    return {
        "name": method.name,
        "summary": method.summary,
        "params": params,
        "result": method.result,
    }


def _type_name(annotation: Any) -> str:
    if annotation is None:
        return "null"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")

"""Websocket JSON-RPC 2.0 control API with subscriptions and token auth.

``ApiService`` (server.py) serves the methods in a ``MethodRegistry`` (registry.py) through a
``Dispatcher`` (dispatch.py); ``builtin.py`` holds the connection-scoped methods (``auth``,
``rpc_*``, ``subscribe``), ``node_methods.py`` the ``node_*`` namespace, and ``client.py`` the trio
client used by ``flnode console``, the devnet and the tests. Other layers add namespaces through
:mod:`flnode.rpc` and publish events through :mod:`flnode.events`.
"""

from .client import ApiClient as ApiClient
from .client import ApiConnectionError as ApiConnectionError
from .client import ApiEndpoint as ApiEndpoint
from .node_methods import ConnectOutcome as ConnectOutcome
from .node_methods import NodeInfoSource as NodeInfoSource
from .node_methods import PeerView as PeerView
from .node_methods import node_provider as node_provider
from .registry import MethodRegistry as MethodRegistry
from .server import ApiService as ApiService

__all__ = [
    "ApiClient",
    "ApiConnectionError",
    "ApiEndpoint",
    "ApiService",
    "ConnectOutcome",
    "MethodRegistry",
    "NodeInfoSource",
    "PeerView",
    "node_provider",
]

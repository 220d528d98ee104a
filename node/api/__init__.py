"""Websocket JSON-RPC control API with subscriptions and token auth.

Not built yet: this package is filled by the control-plane issue (#9).
"""

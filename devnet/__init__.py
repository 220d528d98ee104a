"""Launching and supervising local multi-node networks of real processes.

Not built yet: this package is filled by the control-plane issue (#9).
"""

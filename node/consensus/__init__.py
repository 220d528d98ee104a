"""Embedded py-evm chain, Vyper contracts, sortition, BFT votes and block sync.

Not built yet: this package is filled by the ledger (#7) and consensus (#8) issues.
"""

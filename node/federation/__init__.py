"""Federated training on the network: the manufacturer, device, edge and miner roles.

This package wires the layers together (it may import all of them): the learning layer computes
(:mod:`flnode.learning.federated`), the ledger records and pays (:mod:`flnode.consensus`), blobs
move by CID over P2P (:mod:`flnode.p2p`, :mod:`flnode.storage`). See :mod:`.service`.
"""

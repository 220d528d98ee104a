"""Data, models (extractor + head), differential privacy, normalisation, training and aggregation.

Plain synchronous torch/numpy code: it never imports trio or libp2p, so it can be tested and
benchmarked on its own; the node calls it from worker threads.
"""

"""Benchmarks: each writes what it measured to bench/results/<name>.json (not timed tests)."""

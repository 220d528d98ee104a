"""A Flower 1.42 app running flnode's default devnet task, for ``bench/vs_flower.py``.

``bench_server.py`` (the ServerApp) and ``bench_client.py`` (the ClientApp) are the app's
components, imported as top-level modules from this directory (``pyproject.toml`` here is the
Flower app's configuration, which ``flwr run`` packages). Both use ``bench_task.py``: the model,
the data partition and the local DP-SGD training are flnode's own
(:mod:`flnode.learning.federated`), so the two frameworks train exactly the same thing.
"""

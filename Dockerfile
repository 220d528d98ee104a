# flnode node daemon. Build, run one node, run a network: docs/docker.md.
#
#   docker build -t flnode .
#   docker build -t flnode --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> .
#
# pyproject.toml pins torch==2.13.0 exactly. From the default package index that version is the
# CUDA build (several GB of GPU libraries the daemon never uses); PyTorch's CPU-only wheel
# (2.13.0+cpu, which satisfies the same pin) is published on PyTorch's own wheel index. Pass that
# index's URL as the build argument PIP_EXTRA_INDEX_URL to get the small CPU image; without it the
# build still works, only the image is much larger. The argument has no default on purpose.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv with flnode and its pinned dependencies -------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# fastecdsa (a libp2p requirement) may build from source: it needs a compiler and GMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libgmp-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/flnode
WORKDIR /src
COPY pyproject.toml README.md ./
COPY node ./node
COPY cli ./cli
COPY devnet ./devnet
RUN if [ -n "${PIP_EXTRA_INDEX_URL:-}" ]; then export PIP_EXTRA_INDEX_URL; \
    else unset PIP_EXTRA_INDEX_URL; fi \
    && /opt/flnode/bin/pip install . \
    && /opt/flnode/bin/flnode --version

# --- runtime: the virtualenv, GMP, a non-root user and a data volume ---------------------------
FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgmp10 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flnode \
    && useradd --system --uid 10001 --gid flnode --home-dir /data --shell /usr/sbin/nologin flnode \
    && mkdir -p /data /network \
    && chown flnode:flnode /data /network
COPY --from=build /opt/flnode /opt/flnode
ENV PATH=/opt/flnode/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLNODE_DATADIR=/data
USER flnode
WORKDIR /data
# The node's key, API token, blobs and chain live here: keep it on a volume.
VOLUME ["/data"]
# libp2p (TCP). The control API and metrics stay on 127.0.0.1 inside the container: reach the
# API with `docker exec -it <container> flnode console` (see docs/docker.md).
EXPOSE 4001/tcp
ENTRYPOINT ["flnode"]
# A data dir must exist first: `docker run --rm -v flnode-data:/data flnode init --datadir /data`.
CMD ["start", "--datadir", "/data", "--listen", "/ip4/0.0.0.0/tcp/4001"]

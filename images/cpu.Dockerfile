# syntax=docker/dockerfile:1
# w4s CPU image: every pipeline stage except GPU training (settings.IMAGE, ghcr.io/w4s-project/w4s-cpu:<version>)
# and `w4s serve`. Torch comes from the CPU wheel index, so no CUDA libraries are in it; see images/README.md.
# Build from the repository root:
#   docker build -f images/cpu.Dockerfile -t ghcr.io/w4s-project/w4s-cpu:0.1.0 .
#   buildah bud --layers -f images/cpu.Dockerfile -t ghcr.io/w4s-project/w4s-cpu:0.1.0 .
#
# Base: exact tag plus the multi-arch index digest as recorded in several public Dockerfiles; it was not
# pulled from here (no registry reachable), so re-check with `docker buildx imagetools inspect` when bumping.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- builder: a wheel of w4s and a self-contained venv under /opt/venv -------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG W4S_EXTRAS=all
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# CPU torch first, from the CPU index: the extras' `torch>=2.4` is then satisfied, so PyPI's CUDA build
# (and its nvidia-* packages, ~3 GB) never comes in; the last line fails the build if one did.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install "$(ls /wheels/w4s-*.whl)[${W4S_EXTRAS}]" \
    && /opt/venv/bin/python -c "import sys, torch, importlib.metadata as md; sys.exit(torch.version.cuda is not None or any(d.metadata['Name'].lower().startswith('nvidia-') for d in md.distributions()))"

# ---- runtime: python, bubblewrap and the venv; no compilers or headers ------------------------------------------
FROM ${PYTHON_IMAGE}
ARG W4S_VERSION=0.1.0
LABEL org.opencontainers.image.title="w4s-cpu" \
      org.opencontainers.image.description="w4s (Weak-for-Strong harnessing): every CPU pipeline stage and the OpenAI-compatible server (w4s serve)" \
      org.opencontainers.image.version="${W4S_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="w4s-project" \
      org.opencontainers.image.source="https://github.com/w4s-project/w4s" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# bubblewrap gives the workflow sandbox its namespaces; without it w4s falls back (loudly).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap=0.8.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/w4s --shell /usr/sbin/nologin w4s \
    && mkdir -p /var/lib/w4s/home /var/lib/w4s/data \
    && chown -R 10001:10001 /var/lib/w4s

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    W4S_HOME=/var/lib/w4s/home \
    W4S_DATA_DIR=/var/lib/w4s/data \
    HOME=/home/w4s

WORKDIR /home/w4s
USER 10001:10001
EXPOSE 8000
# probes the server only; pipeline tasks override the command and Kubernetes ignores HEALTHCHECK
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["w4s"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

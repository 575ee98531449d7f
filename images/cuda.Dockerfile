# syntax=docker/dockerfile:1
# w4s CUDA image: `w4s train` (the train_rwr stage) on GPU nodes (settings.GPU_IMAGE,
# ghcr.io/w4s-project/w4s-cuda:<version>). Build from the repository root:
#   docker build -f images/cuda.Dockerfile -t ghcr.io/w4s-project/w4s-cuda:0.1.0 .
#   buildah bud --layers -f images/cuda.Dockerfile -t ghcr.io/w4s-project/w4s-cuda:0.1.0 .
#
# The CUDA torch wheel from the PyTorch CUDA index carries its own CUDA runtime, cuBLAS, cuDNN and NCCL
# (the nvidia-* wheels), so the base is the same slim Python as the CPU image rather than nvidia/cuda
# (whose runtime libraries would be a second, unused copy). The node needs an NVIDIA driver new enough
# for TORCH_INDEX's CUDA (cu128: driver >= 570); the NVIDIA container toolkit / device plugin mounts it.
# Base digest: as recorded in several public Dockerfiles, not pulled from here; see images/README.md.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- builder: a wheel of w4s and a self-contained venv under /opt/venv -------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# train brings trl, peft and accelerate; local the in-process models the trainer loads; kfp runs the
# component; mlflow logs and registers the trained meta-agent
ARG W4S_EXTRAS=train,local,mlflow,kfp
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# CUDA torch first, from the CUDA index, so the extras' `torch>=2.4` is already met; the last line fails
# the build if the wheel has no CUDA.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install "$(ls /wheels/w4s-*.whl)[${W4S_EXTRAS}]" \
    && /opt/venv/bin/python -c "import sys, torch, accelerate; sys.exit(torch.version.cuda is None)"

# ---- runtime: python, bubblewrap and the venv; no compilers or headers -----------------------------------
FROM ${PYTHON_IMAGE}
ARG W4S_VERSION=0.1.0
LABEL org.opencontainers.image.title="w4s-cuda" \
      org.opencontainers.image.description="w4s (Weak-for-Strong harnessing): reward-weighted regression training of the meta-agent on NVIDIA GPUs (w4s train)" \
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

# NVIDIA_*: what the NVIDIA container runtime exposes (compute for CUDA, utility for nvidia-smi)
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    W4S_HOME=/var/lib/w4s/home \
    W4S_DATA_DIR=/var/lib/w4s/data \
    HOME=/home/w4s \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /home/w4s
USER 10001:10001
# a training job, not a server: no port, no HEALTHCHECK
ENTRYPOINT ["w4s"]
CMD ["train", "--help"]

"""The one place the pipelines' deployment settings live: the images the components run in and the
Kubernetes secret the executor's key comes from. Read when a pipeline is compiled (environment
variables override the defaults, so a cluster's registry needs no code change)."""

from __future__ import annotations

import os

from w4s import __version__

REGISTRY = os.environ.get("W4S_IMAGE_REGISTRY", "ghcr.io/w4s-project")
#: every CPU stage (and ``w4s serve``): images/cpu.Dockerfile
IMAGE = os.environ.get("W4S_IMAGE", f"{REGISTRY}/w4s-cpu:{__version__}")
#: training on GPU nodes: images/cuda.Dockerfile
GPU_IMAGE = os.environ.get("W4S_GPU_IMAGE", f"{REGISTRY}/w4s-cuda:{__version__}")
#: Kubernetes secret holding the executor's and the meta-agent's API keys (keys ``executor-api-key``,
#: ``meta-api-key``); never a pipeline parameter
SECRET = os.environ.get("W4S_SECRET", "w4s-api-keys")
SECRET_KEYS = {"executor-api-key": "W4S_EXECUTOR_API_KEY", "meta-api-key": "W4S_META_API_KEY"}
#: Kubernetes secret with the MLflow server's address and S3 keys, where it needs them
MLFLOW_SECRET = os.environ.get("W4S_MLFLOW_SECRET", "w4s-mlflow")
MLFLOW_SECRET_KEYS = {
    "tracking-uri": "MLFLOW_TRACKING_URI",
    "s3-endpoint-url": "MLFLOW_S3_ENDPOINT_URL",
    "aws-access-key-id": "AWS_ACCESS_KEY_ID",
    "aws-secret-access-key": "AWS_SECRET_ACCESS_KEY",
}
#: PersistentVolumeClaim mounted into the training task for its checkpoints (a retried task resumes
#: from them); empty: none (then give the pipeline a ``checkpoint_uri`` on S3 to resume across pods)
CHECKPOINT_PVC = os.environ.get("W4S_CHECKPOINT_PVC", "")
CHECKPOINT_MOUNT = "/checkpoints"
#: LLM-calling tasks retry this often on infrastructure failures, with exponential backoff (``w4s
#: pipeline run --local`` compiles with none: a local failure is shown at once)
RETRIES = int(os.environ.get("W4S_TASK_RETRIES", "3"))
RETRY_BACKOFF = os.environ.get("W4S_TASK_RETRY_BACKOFF", "60s")
#: set by ``w4s pipeline run --local`` before the pipelines are built: kfp.local has no nodes to place a
#: task on and cannot resolve resources given by pipeline parameters inside a condition, so the
#: training task's accelerator, requests, node selector and tolerations are left out of a local run
LOCAL = os.environ.get("W4S_PIPELINE_LOCAL", "") == "1"

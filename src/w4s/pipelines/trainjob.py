"""Multi-node training on Kubernetes: a Kubeflow Trainer v2 ``TrainJob`` (or a Training Operator v1
``PyTorchJob``) manifest that runs ``w4s train`` under ``accelerate launch`` on several GPU nodes.

Both operators give every node's trainer container the torchrun variables ``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``; the command
hands them to ``accelerate launch`` through Kubernetes' own ``$(VAR)`` expansion (no shell in
between). The node-local ``output`` is mirrored to ``checkpoint_uri`` (S3) by the main process, and
``resume_if_possible`` makes a restarted job continue from the newest checkpoint there.

Checked offline against the operators' CRD schemas in tests/pipelines/test_trainjob.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Sequence
from pathlib import PurePosixPath

from w4s.errors import ConfigError
from w4s.training.config import TrainConfig

TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
PYTORCHJOB_API = "kubeflow.org/v1"
#: the Kubeflow Trainer runtime that gives a torch job its PET_* variables (installed with Trainer)
DEFAULT_RUNTIME = "torch-distributed"
#: where the w4s-cuda image (images/cuda.Dockerfile: python 3.11, venv /opt/venv) holds w4s
IMAGE_PACKAGE_DIR = "/opt/venv/lib/python3.11/site-packages/w4s"
#: output on the node's disk; the run's lasting copy is checkpoint_uri (or a mounted volume)
DEFAULT_OUTPUT = "/tmp/w4s-train"
DATA_MOUNT = "/data"
#: Kubernetes' DNS-1035 label, the rule the TrainJob CRD sets for metadata.name (at most 63)
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass
class JobSpec:
    """Where and how big: everything the manifest needs besides the training settings."""

    name: str
    trajectories: Sequence[str]
    num_nodes: int = 2
    gpus_per_node: int = 8
    cpu: str = "16"
    memory: str = "160Gi"
    namespace: str | None = None
    image: str | None = None  # default: w4s.pipelines.settings.GPU_IMAGE
    runtime: str = DEFAULT_RUNTIME
    #: a shipped config (single_gpu, multi_gpu_fsdp, deepspeed_zero3) or an absolute path in the image
    accelerate_config: str = "multi_gpu_fsdp"
    #: a ReadWriteMany PersistentVolumeClaim mounted at /data on every node (trajectories, models)
    data_claim: str | None = None
    #: Kubernetes secret whose keys become environment variables (the MLflow/S3 secret by default)
    env_secret: str | None = None
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)


def train_args(config: TrainConfig, trajectories: Sequence[str]) -> list[str]:
    """``w4s train`` arguments that rebuild ``config`` (flags for the fields that differ from the
    defaults, as :func:`w4s.config.add_arguments` names them)."""
    if not trajectories:
        raise ConfigError("a training job needs at least one trajectories file")
    args = ["train", "--trajectories", *trajectories]
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value == field.default or value is None:
            continue
        flag = "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))
        if hints[field.name] is bool or isinstance(value, list):
            text = json.dumps(value)  # true/false and [1, 2]: YAML reads both back
        else:
            text = str(value)
        args += [flag, text]
    return args


def launch_command(spec: JobSpec, config: TrainConfig) -> list[str]:
    """``accelerate launch ... -m w4s.cli train ...`` for one node of the job."""
    path = spec.accelerate_config
    if "/" not in path:
        path = f"{IMAGE_PACKAGE_DIR}/training/accelerate/{path.removesuffix('.yaml')}.yaml"
    elif not PurePosixPath(path).is_absolute():
        raise ConfigError(
            f"accelerate_config {path!r} must be a shipped name or an absolute path in the image"
        )
    command = ["accelerate", "launch", "--config_file", path]
    command += ["--num_machines", str(spec.num_nodes)]
    command += ["--num_processes", str(spec.num_nodes * spec.gpus_per_node)]
    if spec.num_nodes > 1:
        command += [
            "--machine_rank",
            "$(PET_NODE_RANK)",
            "--main_process_ip",
            "$(PET_MASTER_ADDR)",
            "--main_process_port",
            "$(PET_MASTER_PORT)",
        ]
        if "deepspeed" in PurePosixPath(path).name:
            command += ["--deepspeed_multinode_launcher", "standard"]  # not pdsh: each pod launches itself
    return [*command, "-m", "w4s.cli", *train_args(config, spec.trajectories)]


def job_config(config: TrainConfig, spec: JobSpec) -> TrainConfig:
    """``config`` made fit for a job whose pods may be restarted: output on the node unless given,
    resume from checkpoint_uri (or the mounted volume) unless resume is set explicitly."""
    _check(spec)
    if not config.base_model:
        raise ConfigError("a training job needs base_model (a folder on the data volume, or mlflow:...)")
    output = config.output or DEFAULT_OUTPUT
    on_volume = spec.data_claim is not None and output.startswith(DATA_MOUNT + "/")
    if config.checkpoint_uri is None and not on_volume:
        raise ConfigError(
            "a training job's output would be lost with its pods: give checkpoint_uri (s3://...) or an output "
            f"under {DATA_MOUNT}/ with data_claim"
        )
    resume_if_possible = config.resume_if_possible or not config.resume
    return dataclasses.replace(config, output=output, resume_if_possible=resume_if_possible)


def trainjob(config: TrainConfig, spec: JobSpec) -> dict:
    """A Kubeflow Trainer v2 ``TrainJob`` that references the ``spec.runtime`` ClusterTrainingRuntime."""
    from w4s.pipelines import settings

    config = job_config(config, spec)
    trainer: dict = {
        "image": spec.image or settings.GPU_IMAGE,
        "command": launch_command(spec, config),
        "numNodes": spec.num_nodes,
        "numProcPerNode": spec.gpus_per_node,
        "resourcesPerNode": _resources(spec),
        "env": _env(spec, settings),
    }
    pod: dict = {
        "volumes": _volumes(spec),
        "containers": [{"name": "node", "volumeMounts": _mounts(spec)}],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    job: dict = {
        "apiVersion": TRAINJOB_API,
        "kind": "TrainJob",
        "metadata": _metadata(spec),
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": spec.runtime,
            },
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": "w4s.dev/trainjob",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {"name": "node", "template": {"spec": {"template": {"spec": pod}}}}
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }
    return job


def pytorchjob(config: TrainConfig, spec: JobSpec) -> dict:
    """The same job for clusters with the Kubeflow Training Operator v1 (``kubeflow.org/v1``
    ``PyTorchJob``): one Master and ``num_nodes - 1`` Workers, the same command."""
    from w4s.pipelines import settings

    config = job_config(config, spec)
    container: dict = {
        "name": "pytorch",  # the operator finds its container by this name
        "image": spec.image or settings.GPU_IMAGE,
        "command": launch_command(spec, config),
        "env": _env(spec, settings),
        "resources": _resources(spec),
        "volumeMounts": _mounts(spec),
    }
    pod: dict = {"containers": [container], "volumes": _volumes(spec)}
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)

    def replica(count: int) -> dict:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": pod}}

    replicas = {"Master": replica(1)}
    if spec.num_nodes > 1:
        replicas["Worker"] = replica(spec.num_nodes - 1)
    return {
        "apiVersion": PYTORCHJOB_API,
        "kind": "PyTorchJob",
        "metadata": _metadata(spec),
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": replicas,
        },
    }


KINDS = {"trainjob": trainjob, "pytorchjob": pytorchjob}


def manifest(kind: str, config: TrainConfig, spec: JobSpec) -> dict:
    """``kind``: trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator v1)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown job kind {kind!r}; use {' or '.join(KINDS)}")
    return KINDS[kind](config, spec)


def _check(spec: JobSpec) -> None:
    if not (_NAME.match(spec.name) and len(spec.name) <= 63):
        raise ConfigError(
            f"job name {spec.name!r} must be a DNS-1035 label: lower-case letters, digits and '-', starting "
            "with a letter, at most 63 characters"
        )
    if spec.num_nodes < 1 or spec.gpus_per_node < 1:
        raise ConfigError("a training job needs num_nodes >= 1 and gpus_per_node >= 1")


def _metadata(spec: JobSpec) -> dict:
    meta: dict = {
        "name": spec.name,
        "labels": {"app.kubernetes.io/name": "w4s", "app.kubernetes.io/component": "train"},
    }
    if spec.namespace:
        meta["namespace"] = spec.namespace
    return meta


def _resources(spec: JobSpec) -> dict:
    amounts = {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": spec.gpus_per_node}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(spec: JobSpec, settings) -> list[dict]:
    """MLflow and S3 settings (checkpoint_uri's keys) from a secret, each optional."""
    secret = spec.env_secret or settings.MLFLOW_SECRET
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "NCCL_DEBUG", "value": "WARN"}]
    for key, name in settings.MLFLOW_SECRET_KEYS.items():
        env.append(
            {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        )
    return env


def _volumes(spec: JobSpec) -> list[dict]:
    """A memory-backed /dev/shm (NCCL and the data loaders outgrow the container's 64 MiB), and the
    data claim where given."""
    volumes: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if spec.data_claim:
        volumes.append({"name": "w4s-data", "persistentVolumeClaim": {"claimName": spec.data_claim}})
    return volumes


def _mounts(spec: JobSpec) -> list[dict]:
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if spec.data_claim:
        mounts.append({"name": "w4s-data", "mountPath": DATA_MOUNT})
    return mounts

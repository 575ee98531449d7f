"""The multi-node training manifests (w4s.pipelines.trainjob) against the operators' own CRD schemas,
vendored in tests/pipelines/crds/ (see its README): validated offline with jsonschema, strictly (an
object whose schema lists its properties accepts no others, as `kubectl apply` with strict field
validation refuses unknown fields)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

from w4s import cli  # noqa: E402
from w4s.errors import ConfigError  # noqa: E402
from w4s.pipelines import trainjob  # noqa: E402
from w4s.training.config import TrainConfig  # noqa: E402

CRDS = Path(__file__).parent / "crds"
ROOT = Path(__file__).resolve().parents[2]
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _strict(schema):
    """The structural schema as Kubernetes applies it: closed objects, int-or-string fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _validator(name: str):
    crd = json.loads((CRDS / name).read_text())
    schema = _strict(crd["openAPIV3Schema"])
    schema["properties"]["apiVersion"]["enum"] = [f"{crd['group']}/{crd['version']}"]
    schema["properties"]["kind"]["enum"] = [crd["kind"]]
    # ObjectMeta is `type: object` in a CRD; the API server checks the name and namespace
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": DNS_1035.pattern, "maxLength": 63},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return jsonschema.Draft7Validator(schema)


TRAINJOB = _validator("trainjob-v1alpha1.json")
PYTORCHJOB = _validator("pytorchjob-v1.json")
VALIDATORS = {"trainjob": TRAINJOB, "pytorchjob": PYTORCHJOB}


def _errors(validator, manifest) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def _config(**values) -> TrainConfig:
    base = {"base_model": "/data/models/qwen2.5-7b", "checkpoint_uri": "s3://w4s/train/run-1"}
    return TrainConfig(**{**base, **values})


def _spec(**values) -> trainjob.JobSpec:
    return trainjob.JobSpec(**{"name": "w4s-train", "trajectories": ["/data/trajectories.jsonl"], **values})


def test_vendored_crds_are_the_served_versions():
    for name, kind, version in [
        ("trainjob-v1alpha1.json", "TrainJob", "v1alpha1"),
        ("pytorchjob-v1.json", "PyTorchJob", "v1"),
    ]:
        crd = json.loads((CRDS / name).read_text())
        assert (crd["kind"], crd["version"]) == (kind, version)
        assert "spec" in crd["openAPIV3Schema"]["properties"]
    spec = json.loads((CRDS / "trainjob-v1alpha1.json").read_text())["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["runtimeRef"]
    assert {"numNodes", "numProcPerNode", "resourcesPerNode", "command", "env", "image"} <= set(
        spec["properties"]["trainer"]["properties"]
    )


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_manifest_matches_the_crd_schema(kind, nodes):
    job = trainjob.manifest(kind, _config(), _spec(num_nodes=nodes, data_claim="w4s-data", namespace="ml"))
    assert _errors(VALIDATORS[kind], job) == []
    # what `kubectl apply -f` would read back from the written file
    assert _errors(VALIDATORS[kind], yaml.safe_load(yaml.safe_dump(job))) == []


def test_trainjob_fields():
    job = trainjob.trainjob(_config(), _spec(num_nodes=4, gpus_per_node=8))
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    from w4s.pipelines import settings

    assert trainer["image"] == settings.GPU_IMAGE
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
    assert set(secret_env) == set(settings.MLFLOW_SECRET_KEYS.values())
    assert {ref["name"] for ref in secret_env.values()} == {settings.MLFLOW_SECRET}
    # the operators set PET_*; the TrainJob webhook refuses a trainer env that names them
    assert not [e for e in trainer["env"] if e["name"].startswith("PET_")]


def test_pytorchjob_has_one_master_and_the_other_nodes_as_workers():
    job = trainjob.pytorchjob(_config(), _spec(num_nodes=3, gpus_per_node=4))
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "4"
    (container,) = replicas["Master"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch"
    single = trainjob.pytorchjob(_config(), _spec(num_nodes=1))
    assert set(single["spec"]["pytorchReplicaSpecs"]) == {"Master"}


#: what an operator puts into node 1's environment (Kubeflow Trainer: <job>-node-0-0.<job>, port 29500)
NODE_ENV = {
    "PET_NODE_RANK": "1",
    "PET_MASTER_ADDR": "w4s-train-node-0-0.w4s-train",
    "PET_MASTER_PORT": "29500",
}


def _expand(command: list[str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a container's command from its environment."""
    return [re.sub(r"\$\((\w+)\)", lambda m: NODE_ENV[m.group(1)], part) for part in command]


def _accelerate_and_train(command: list[str]):
    """The launch flags through accelerate's own parser (after the kubelet's expansion), the rest
    through w4s's."""
    from accelerate.commands.launch import launch_command_parser

    assert command[:2] == ["accelerate", "launch"]
    launch = launch_command_parser().parse_args(_expand(command)[2:])
    assert launch.module and launch.training_script == "w4s.cli"
    args = cli.build_parser().parse_args(launch.training_script_args)
    assert args.func is cli.cmd_train
    return launch, args, cli._configs(args, train=(TrainConfig, ""))["train"]


def test_command_is_accelerate_launch_of_w4s_train_and_round_trips_the_config():
    pytest.importorskip("accelerate")
    config = _config(lora=False, turns=[1, 2], max_steps=300, learning_rate=2e-5, bf16="true")
    job = trainjob.trainjob(config, _spec(num_nodes=2, gpus_per_node=8))
    launch, args, parsed = _accelerate_and_train(job["spec"]["trainer"]["command"])
    assert launch.num_machines == 2 and launch.num_processes == 16
    # Kubernetes expands $(VAR) from the container's environment, which the operator fills
    assert "$(PET_NODE_RANK)" in job["spec"]["trainer"]["command"]
    assert (launch.machine_rank, launch.main_process_ip, launch.main_process_port) == (
        1,
        NODE_ENV["PET_MASTER_ADDR"],
        29500,
    )
    assert launch.config_file == f"{trainjob.IMAGE_PACKAGE_DIR}/training/accelerate/multi_gpu_fsdp.yaml"
    assert args.trajectories == ["/data/trajectories.jsonl"]
    expected = trainjob.job_config(config, _spec())
    assert parsed.to_dict() == expected.to_dict()
    assert parsed.output == trainjob.DEFAULT_OUTPUT and parsed.resume_if_possible is True
    assert parsed.checkpoint_uri == "s3://w4s/train/run-1"


def test_single_node_and_deepspeed_launch_flags():
    pytest.importorskip("accelerate")
    one = trainjob.launch_command(_spec(num_nodes=1, gpus_per_node=8), _config())
    assert "--machine_rank" not in one and "--num_processes" in one
    ds = trainjob.launch_command(_spec(num_nodes=2, accelerate_config="deepspeed_zero3"), _config())
    launch, _, _ = _accelerate_and_train(ds)
    assert launch.deepspeed_multinode_launcher == "standard"
    assert launch.config_file.endswith("/training/accelerate/deepspeed_zero3.yaml")


def test_image_package_dir_matches_the_cuda_image():
    """The shipped accelerate configs are read from the image's venv: its Python version is in the path."""
    dockerfile = (ROOT / "images" / "cuda.Dockerfile").read_text()
    version = re.search(r"PYTHON_IMAGE=python:(\d+\.\d+)", dockerfile).group(1)
    assert f"/opt/venv/lib/python{version}/site-packages/w4s" == trainjob.IMAGE_PACKAGE_DIR
    shipped = ROOT / "src" / "w4s" / "training" / "accelerate" / "multi_gpu_fsdp.yaml"
    assert shipped.is_file()


def _valid_trainjob() -> dict:
    return trainjob.trainjob(_config(), _spec())


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda j: j["spec"].pop("runtimeRef"), id="missing-runtimeRef"),
        pytest.param(lambda j: j["spec"]["runtimeRef"].pop("name"), id="missing-runtime-name"),
        pytest.param(lambda j: j["spec"]["trainer"].update(numNodes="2"), id="numNodes-string"),
        pytest.param(lambda j: j["spec"]["trainer"].update(command="w4s train"), id="command-not-list"),
        pytest.param(lambda j: j["spec"]["trainer"].update(gpus=8), id="unknown-trainer-field"),
        pytest.param(lambda j: j["spec"].update(podSpecOverrides=[]), id="unknown-spec-field"),
        pytest.param(lambda j: j["spec"]["trainer"]["env"].append({"value": "x"}), id="env-without-name"),
        pytest.param(
            lambda j: j["spec"]["trainer"]["resourcesPerNode"]["limits"].update({"nvidia.com/gpu": "eight"}),
            id="bad-quantity",
        ),
        pytest.param(lambda j: j.update(apiVersion="kubeflow.org/v1"), id="wrong-apiVersion"),
        pytest.param(lambda j: j["metadata"].update(name="W4S_Train"), id="bad-name"),
    ],
)
def test_invalid_trainjob_is_rejected(breakage):
    job = copy.deepcopy(_valid_trainjob())
    breakage(job)
    assert _errors(TRAINJOB, job)


def test_invalid_pytorchjob_is_rejected():
    job = trainjob.pytorchjob(_config(), _spec())
    broken = copy.deepcopy(job)
    broken["spec"].pop("pytorchReplicaSpecs")
    assert _errors(PYTORCHJOB, broken)
    broken = copy.deepcopy(job)
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert _errors(PYTORCHJOB, broken)
    broken = copy.deepcopy(job)
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["gpus"] = 1
    assert _errors(PYTORCHJOB, broken)


@pytest.mark.parametrize(
    ("config", "spec", "message"),
    [
        ({}, {"name": "Train_1"}, "DNS-1035"),
        ({}, {"name": "x" * 64}, "DNS-1035"),
        ({}, {"num_nodes": 0}, "num_nodes >= 1"),
        ({"base_model": ""}, {}, "needs base_model"),
        ({"checkpoint_uri": None}, {}, "checkpoint_uri"),
        ({"checkpoint_uri": None, "output": "/data/out"}, {}, "checkpoint_uri"),  # no volume: lost
        ({}, {"accelerate_config": "configs/fsdp.yaml"}, "absolute path"),
        ({}, {"trajectories": []}, "trajectories"),
    ],
)
def test_bad_job_settings_fail_with_one_line(config, spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        trainjob.trainjob(_config(**config), _spec(**spec))
    assert "\n" not in str(info.value)


def test_output_on_the_data_volume_needs_no_checkpoint_uri():
    job = trainjob.trainjob(
        _config(checkpoint_uri=None, output="/data/runs/meta-v2"), _spec(data_claim="pvc")
    )
    command = job["spec"]["trainer"]["command"]
    assert command[command.index("--output") + 1] == "/data/runs/meta-v2"
    assert "--checkpoint-uri" not in command
    assert _errors(TRAINJOB, job) == []


def test_explicit_resume_is_kept():
    config = trainjob.job_config(_config(resume=True), _spec())
    assert config.resume is True and config.resume_if_possible is False


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown job kind"):
        trainjob.manifest("mpijob", _config(), _spec())


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_cli_writes_a_valid_manifest(tmp_path, kind, capsys):
    out = tmp_path / "job.yaml"
    code = cli.main(
        [
            "pipeline",
            "trainjob",
            "--kind",
            kind,
            "--name",
            "meta-v2",
            "--out",
            str(out),
            "--trajectories",
            "/data/a.jsonl",
            "/data/b.jsonl",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--base-model",
            "/data/models/qwen",
            "--checkpoint-uri",
            "s3://w4s/meta-v2",
            "--max-steps",
            "300",
            "--data-claim",
            "w4s-data",
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    job = yaml.safe_load(out.read_text())
    assert _errors(VALIDATORS[kind], job) == []
    assert job["metadata"]["name"] == "meta-v2"
    command = json.dumps(job)
    assert '"--max-steps", "300"' in command and '"/data/a.jsonl", "/data/b.jsonl"' in command


def test_cli_refuses_a_bad_job_with_one_line(tmp_path, capsys):
    code = cli.main(
        [
            "pipeline",
            "trainjob",
            "--name",
            "meta-v2",
            "--out",
            str(tmp_path / "job.yaml"),
            "--trajectories",
            "/data/a.jsonl",
            "--base-model",
            "/data/models/qwen",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "checkpoint_uri" in err and "\n" not in err
    assert not (tmp_path / "job.yaml").exists()

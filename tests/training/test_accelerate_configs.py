"""The shipped accelerate configs (src/w4s/training/accelerate/*.yaml) pass through accelerate's own
loader and launch-argument validation, and the FSDP one builds accelerate's FSDP plugin: a syntax or
key error shows here, on a CPU, not on the first multi-GPU node that runs it."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

accelerate = pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file  # noqa: E402
from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

import w4s.training  # noqa: E402

CONFIGS = Path(w4s.training.__file__).parent / "accelerate"
EXPECTED = {
    "single_gpu.yaml": DistributedType.NO,
    "multi_gpu_fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
}


def _launch_args(path: Path):
    """What `accelerate launch --config_file PATH -m w4s.cli train` resolves the config to."""
    parsed = launch_command_parser().parse_args(["--config_file", str(path), "-m", "w4s.cli", "train"])
    args, _defaults, _mixed_precision = _validate_launch_command(parsed)
    return args


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    path = CONFIGS / name
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == EXPECTED[name]
    assert cfg.mixed_precision == "bf16"
    assert cfg.num_processes >= 1
    # the same file through the class method accelerate launch uses, and no key it does not know
    # (ClusterConfig.from_yaml_file raises on unknown keys)
    assert ClusterConfig.from_yaml_file(str(path)).to_dict() == cfg.to_dict()
    assert _launch_args(path).mixed_precision == "bf16"


def test_fsdp_config_builds_accelerates_fsdp_plugin():
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = _launch_args(CONFIGS / "multi_gpu_fsdp.yaml")
    assert args.use_fsdp and not args.use_deepspeed
    env = prepare_multi_gpu_env(args)  # the environment accelerate launch gives each rank
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.auto_wrap_policy is not None  # TRANSFORMER_BASED_WRAP resolved to a policy
    assert plugin.reshard_after_forward is True
    assert plugin.activation_checkpointing is True
    assert plugin.cpu_ram_efficient_loading is True


def test_deepspeed_config_resolves_zero3_settings():
    args = _launch_args(CONFIGS / "deepspeed_zero3.yaml")
    assert args.use_deepspeed and not args.use_fsdp
    assert int(args.zero_stage) == 3
    assert str(args.zero3_init_flag).lower() == "true"
    assert str(args.zero3_save_16bit_model).lower() == "true"
    assert args.offload_optimizer_device == "none" and args.offload_param_device == "none"


def test_a_broken_config_is_refused_by_the_loader(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "multi_gpu_fsdp.yaml").read_text() + "fsdp_not_a_key: 1\n")
    with pytest.raises((TypeError, ValueError)):
        ClusterConfig.from_yaml_file(str(bad))

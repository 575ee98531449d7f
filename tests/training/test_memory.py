"""The memory estimate, the limit it is checked against (cgroup files read from a fake tree) and the
one-line refusal; plus, marked slow, SmolLM2 trained at the defaults on ~2k-token records under a memory
limit, and the CLI refusing a configuration that cannot fit."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.limits import MemoryCgroup, Unavailable
from tests.training.long_records import optimize_records
from w4s.errors import ConfigError
from w4s.training import memory
from w4s.training.memory import GIB

# Qwen2.5-7B's shape
QWEN7B = dict(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064)
QWEN7B_PARAMS = 7_615_616_512
# SmolLM2-135M's shape
SMOL = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152)
SMOL_PARAMS = 134_515_008


def lora_of(shape: dict, rank: int = 16) -> int:
    head_dim = shape["hidden"] // shape["heads"]
    return memory.lora_params(
        shape["hidden"], shape["intermediate"], shape["layers"], shape["kv_heads"] * head_dim, rank
    )


def smol(**overrides) -> dict:
    settings = dict(
        params=SMOL_PARAMS,
        trainable_params=lora_of(SMOL),
        weight_bytes=4,
        tokens_per_batch=4096,
        longest=2048,
        completion_tokens=256,
        gradient_checkpointing=True,
        lora=True,
        **SMOL,
    )
    return memory.estimate_peak(**{**settings, **overrides})


def qwen7b(**overrides) -> dict:
    """Qwen2.5-7B at the defaults: LoRA, bf16, 4k context, 8192 tokens per micro-batch, gradient
    checkpointing (auto: the longest example exceeds 512 tokens), on a GPU."""
    settings = dict(
        params=QWEN7B_PARAMS,
        trainable_params=lora_of(QWEN7B),
        weight_bytes=2,
        tokens_per_batch=8192,
        longest=4096,
        gradient_checkpointing=memory.gradient_checkpointing_on({"gradient_checkpointing": "auto"}, 4096),
        lora=True,
        device="cuda",
        **QWEN7B,
    )
    return memory.estimate_peak(**{**settings, **overrides})


# --- cgroup parsing ----------------------------------------------------------------------------------


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_the_process_and_its_ancestors(tmp_path):
    proc = tmp_path / "cgroup"
    write(proc, "0::/kubepods/pod1/ctr\n")
    root = tmp_path / "fs"
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "kubepods" / "memory.max", "max\n")
    write(root / "kubepods" / "pod1" / "memory.max", str(24 * GIB) + "\n")
    write(root / "kubepods" / "pod1" / "ctr" / "memory.max", "max\n")
    assert memory.cgroup_limit(proc, root) == (24 * GIB, "cgroup memory.max")
    assert memory.cgroup_dirs(proc, root) == {"v2": root / "kubepods" / "pod1" / "ctr"}
    # a tighter limit on the process's own group wins
    write(root / "kubepods" / "pod1" / "ctr" / "memory.max", str(3 * GIB))
    assert memory.cgroup_limit(proc, root) == (3 * GIB, "cgroup memory.max")


def test_cgroup_v2_unlimited_everywhere_is_no_limit(tmp_path):
    proc = tmp_path / "cgroup"
    write(proc, "0::/user.slice\n")
    root = tmp_path / "fs"
    write(root / "cgroup.controllers", "memory\n")
    write(root / "user.slice" / "memory.max", "max\n")
    assert memory.cgroup_limit(proc, root) is None


def test_cgroup_v1_and_hybrid_layouts(tmp_path):
    """v1 memory controller under root/memory (its "unlimited" is a huge number), v2 under root/unified."""
    proc = tmp_path / "cgroup"
    write(proc, "12:pids:/x\n4:memory:/process_api/abc\n0::/\n")
    root = tmp_path / "fs"
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(root / "memory" / "process_api" / "abc" / "memory.limit_in_bytes", str(6 * GIB))
    (root / "unified").mkdir()
    assert memory.cgroup_limit(proc, root) == (6 * GIB, "cgroup memory.limit_in_bytes")
    assert memory.cgroup_dirs(proc, root) == {
        "v1": root / "memory" / "process_api" / "abc",
        "v2": root / "unified",
    }
    write(root / "memory" / "process_api" / "abc" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert memory.cgroup_limit(proc, root) is None


def test_container_without_a_cgroup_namespace_reads_the_mounted_root(tmp_path):
    """/proc/self/cgroup names the host's path, but only the container's own group is mounted."""
    proc = tmp_path / "cgroup"
    write(proc, "0::/system.slice/docker-1234.scope\n")
    root = tmp_path / "fs"
    write(root / "cgroup.controllers", "memory\n")
    write(root / "memory.max", str(2 * GIB))
    assert memory.cgroup_limit(proc, root) == (2 * GIB, "cgroup memory.max")


def test_unreadable_or_odd_files_are_no_limit(tmp_path):
    assert memory.cgroup_limit(tmp_path / "absent", tmp_path) is None
    proc = tmp_path / "cgroup"
    write(proc, "garbage\n0::/a\n")
    write(tmp_path / "fs" / "cgroup.controllers", "")
    write(tmp_path / "fs" / "a" / "memory.max", "not a number")
    assert memory.cgroup_limit(proc, tmp_path / "fs") is None


def test_cpu_limit_is_the_smallest_source(tmp_path):
    proc = tmp_path / "proc"
    write(proc / "meminfo", "MemTotal: 100 kB\nMemAvailable:    8388608 kB\n")
    write(proc / "self" / "status", "Name: python\nVmRSS:  1048576 kB\n")
    write(proc / "self" / "cgroup", "0::/job\n")
    root = tmp_path / "fs"
    write(root / "cgroup.controllers", "memory\n")
    write(root / "job" / "memory.max", "max\n")
    assert memory.cpu_limit(proc, root) == (9 * GIB, "the machine's available memory")
    write(root / "job" / "memory.max", str(4 * GIB))
    assert memory.cpu_limit(proc, root) == (4 * GIB, "cgroup memory.max")


def test_rlimit_as_counts_when_set(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 5 * GIB
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("the hard RLIMIT_AS is below the test's value")
    proc = tmp_path / "proc"
    write(proc / "meminfo", "MemAvailable: 104857600 kB\n")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        assert memory.cpu_limit(proc, tmp_path / "fs") == (limit, "RLIMIT_AS")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_memory_limit_on_this_machine_is_positive():
    limit, source = memory.memory_limit("cpu")
    assert limit > 0 and source


# --- the estimate ------------------------------------------------------------------------------------


def test_parts_add_up_and_are_named():
    estimate = smol()
    assert set(memory.PARTS) <= set(estimate)
    assert estimate["total"] == sum(estimate[name] for name in memory.PARTS)
    assert all(estimate[name] >= 0 for name in memory.PARTS)
    assert estimate["weights"] == pytest.approx(SMOL_PARAMS * 4, rel=0.05)


@pytest.mark.parametrize(
    "name, small, large",
    [
        ("tokens_per_batch", 2048, 8192),
        ("longest", 512, 4096),
        ("completion_tokens", 64, 1024),
        ("weight_bytes", 2, 4),
    ],
)
def test_more_of_anything_needs_more(name, small, large):
    for checkpointing in (True, False):
        assert (
            smol(**{name: small}, gradient_checkpointing=checkpointing)["total"]
            < smol(**{name: large}, gradient_checkpointing=checkpointing)["total"]
        )


def test_checkpointing_and_lora_need_less():
    assert (
        smol(gradient_checkpointing=True)["activations"] < smol(gradient_checkpointing=False)["activations"]
    )
    full = smol(lora=False, trainable_params=SMOL_PARAMS)
    assert smol()["optimizer"] < full["optimizer"] and smol()["total"] < full["total"]
    assert memory.gradient_checkpointing_on({"gradient_checkpointing": "auto"}, 513)
    assert not memory.gradient_checkpointing_on({"gradient_checkpointing": "auto"}, 512)
    assert not memory.gradient_checkpointing_on({"gradient_checkpointing": "false"}, 4096)
    assert memory.gradient_checkpointing_on({"gradient_checkpointing": True}, 10)


def test_lora_params_of_qwen_7b():
    # r=16 on every linear layer of Qwen2.5-7B: peft reports 40,370,176 trainable parameters
    assert lora_of(QWEN7B) == 40_370_176


def test_qwen_7b_with_lora_at_4k_fits_one_80gb_gpu():
    estimate = qwen7b()
    assert estimate["total"] < 80e9, estimate
    memory.check_fits(estimate, (int(80e9), "GPU 0's free memory"))
    # the weights alone are ~15 GB in bf16; the estimate is not trivially small either
    assert estimate["weights"] > 15e9 and estimate["total"] > 20e9


def test_full_fine_tuning_of_7b_in_fp32_does_not_fit_80gb():
    estimate = qwen7b(lora=False, trainable_params=QWEN7B_PARAMS, weight_bytes=4, act_bytes=4)
    assert estimate["total"] > 80e9
    assert estimate["weights"] + estimate["optimizer"] > 80e9  # weights, grads and AdamW alone
    with pytest.raises(ConfigError):
        memory.check_fits(estimate, (int(80e9), "GPU 0's free memory"))


# --- the one-line error ------------------------------------------------------------------------------


def test_the_refusal_is_one_line_with_figures_and_settings():
    estimate = smol(
        tokens_per_batch=65536, longest=4096, gradient_checkpointing=False, completion_tokens=4096
    )
    cfg = {
        "max_tokens_per_batch": 65536,
        "gradient_checkpointing": "false",
        "lora": True,
        "bf16": "auto",
        "max_length": 4096,
    }
    with pytest.raises(ConfigError) as caught:
        memory.check_fits(estimate, (4 * GIB, "cgroup memory.max"), cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"training needs about {estimate['total'] / GIB:.1f} GiB (activations ")
    assert "but cgroup memory.max allows 4.0 GiB" in message
    # the two settings that matter most here come first; the escape hatch last
    assert "lower max_tokens_per_batch (now 65536)" in message
    assert "set gradient_checkpointing=true" in message
    assert message.endswith("or set memory_check=false to try anyway")
    assert message.index("gradient_checkpointing") < message.index("memory_check")


def test_full_fine_tuning_refusal_names_lora():
    estimate = qwen7b(lora=False, trainable_params=QWEN7B_PARAMS, weight_bytes=4, act_bytes=4)
    with pytest.raises(ConfigError) as caught:
        memory.check_fits(
            estimate, (int(80e9), "GPU 0's free memory"), {"lora": False, "max_tokens_per_batch": 8192}
        )
    message = str(caught.value)
    assert "set lora=true" in message and "GPU 0's free memory allows 74.5 GiB" in message
    assert message.index("set lora=true") < message.index("max_tokens_per_batch")


def test_what_fits_passes_silently():
    memory.check_fits(smol(), 64 * GIB)
    memory.check_fits(smol(), (64 * GIB, "cgroup memory.max"), {"max_tokens_per_batch": 8192})


# --- through `w4s train` -----------------------------------------------------------------------------


def w4s_train(*args, preexec=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )


def _rlimit_as_works_with_torch(limit: int) -> bool:
    """Whether a child under RLIMIT_AS=limit can import torch and transformers and run a small model step
    (torch reserves address space far beyond what it touches, so often it cannot)."""

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    probe = (
        "import torch, transformers, peft\n"
        "x = torch.randn(256, 256, requires_grad=True)\n"
        "(x @ x).sum().backward()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, preexec_fn=limited, timeout=300)
    return done.returncode == 0


@pytest.fixture(scope="module")
def long_records(tmp_path_factory, data_dir):
    return optimize_records(tmp_path_factory.mktemp("long-records"), data_dir)


@pytest.mark.slow
def test_defaults_train_smollm2_on_long_records_within_4_gib(long_records, model_cache, tmp_path):
    """The issue's run (killed by the OOM killer at 20-24 GiB before): 4 real ~2k-token records, the
    defaults, LoRA, two steps, in a memory cgroup of 4 GiB (RLIMIT_AS where no cgroup can be made and
    torch runs under it)."""
    from w4s.llm import models

    base = models.model_dir("smollm2-135m")
    if model_cache:
        base = Path(model_cache) / "models" / "smollm2-135m"
    if not (base / "config.json").is_file():
        base = models.model_dir("smollm2-135m")
    lengths = []
    for line in long_records.read_text().splitlines():
        record = json.loads(line)
        lengths.append(sum(len(m["content"]) for m in record["prompt_messages"]))
    assert len(lengths) == 4 and min(lengths) > 5000  # ~2k tokens each
    limit = 4 * GIB
    group = None
    try:
        group = MemoryCgroup.create(limit)
        preexec, how = group.join, f"cgroup {group.version}"
    except Unavailable as exc:
        if not _rlimit_as_works_with_torch(limit):
            pytest.skip(f"no memory limit can be set here: {exc}; RLIMIT_AS of 4 GiB breaks torch itself")

        def preexec():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        how = "RLIMIT_AS"
    try:
        args = [
            "--trajectories",
            str(long_records),
            "--base-model",
            str(base),
            "--output",
            str(tmp_path / "o"),
        ]
        done = w4s_train(
            *args, "--lora", "true", "--max-steps", "2", "--no-tracking", "true", preexec=preexec
        )
        killed = bool(group and group.oom_kills())
    finally:
        if group is not None:
            group.remove()
    assert not killed, f"killed by the OOM killer of its 4 GiB {how}"
    assert done.returncode == 0, f"under a 4 GiB {how}: {done.stderr[-3000:]}"
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert summary["steps"] == 2 and (tmp_path / "o" / "model" / "config.json").is_file()


def test_cli_refuses_what_cannot_fit_in_one_line(model_cache, tmp_path):
    """One ~60k-token example without gradient checkpointing needs far more than any machine here has
    (30 layers of activations for 60k tokens); the check refuses it before training, in one line."""
    from w4s.llm import models

    base = models.model_dir("smollm2-135m")
    if model_cache:
        base = Path(model_cache) / "models" / "smollm2-135m"
    words = " ".join(f"step {i} of the plan" for i in range(12000))
    record = {
        "episode": 0,
        "turn": 1,
        "candidate": 0,
        "prompt_messages": [
            {"role": "system", "content": "write a workflow"},
            {"role": "user", "content": words},
        ],
        "reply": "def solver(agent, task):\n    return '1'\n",
        "reward": 1.0,
        "workflow": "x",
    }
    other = {**record, "candidate": 1, "reward": 0.0}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(other) + "\n")
    group = None
    try:  # a guard: should the check not refuse, the run is killed at 8 GiB rather than growing unbounded
        group = MemoryCgroup.create(8 * GIB)
    except Unavailable:
        pass
    try:
        done = w4s_train(
            *["--trajectories", str(path), "--base-model", str(base), "--output", str(tmp_path / "o")],
            *[
                "--max-length",
                "131072",
                "--max-tokens-per-batch",
                "131072",
                "--gradient-checkpointing",
                "false",
            ],
            *["--max-steps", "1", "--no-tracking", "true"],
            preexec=group.join if group else None,
            timeout=600,
        )
    finally:
        if group is not None:
            group.remove()
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("w4s: error: training needs about "), done.stderr[-3000:]
    assert " GiB (activations " in last and "allows" in last and "set gradient_checkpointing=true" in last
    assert last.endswith("or set memory_check=false to try anyway")
    assert not (tmp_path / "o" / "training_summary.json").exists()


def test_tame_allocator_applies_on_glibc():
    import platform

    applied = memory.tame_allocator()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert memory.allocator_tamed()


def test_allocator_slack_is_a_cpu_part():
    untamed = smol(allocator_slack=True)
    assert untamed["allocator"] > 0 and smol()["allocator"] == 0
    assert untamed["total"] - smol()["total"] == untamed["allocator"]
    assert qwen7b(allocator_slack=True)["allocator"] == 0  # the GPU's caching allocator is in overhead
    with pytest.raises(ConfigError) as caught:
        memory.check_fits(
            untamed, (smol()["total"] + GIB // 10, "cgroup memory.max"), {"max_tokens_per_batch": 4096}
        )
    assert "set MALLOC_MMAP_THRESHOLD_=131072 in the environment" in str(caught.value)

"""Training memory on real trajectory records: peak RSS of `w4s train` at the defaults, against the estimate.

1. `w4s optimize` (gsm8k, 2 turns x 2 candidates) against the scripted meta-agent and executor
   (tests/servers/openai_scripted.py) writes 4 trajectory records whose prompts are ~6k characters
   (~2k tokens): system prompt, task, example workflows, feedback, as every real meta-agent prompt is.
2. `w4s train --trajectories ... --base-model <smollm2-135m> --lora --max-steps 2` runs as a child
   process at the defaults (and any --variant's extra flags); its peak RSS comes from wait4's rusage.
   Each child runs in a memory cgroup of its own (--limit-gib) where one can be made, so a run that
   would outgrow the machine is killed inside it (reported as oom_killed) instead of by the kernel's
   global OOM killer.
3. The estimate of w4s.training.memory for the same model, settings and batch is set beside the
   measured peak.

Goal: peak <= 4 GiB at the defaults. Writes perf/results/train_memory-cpu.json.

Usage: python perf/train_memory.py [--variant LABEL="[NAME=VALUE ...] --flag value ..."] [--limit-gib 12]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.training.limits import MemoryCgroup, Unavailable  # noqa: E402
from tests.training.long_records import optimize_records  # noqa: E402

GIB = 1024**3
GOAL = 4 * GIB


def record_lengths(path: Path, base_model: str) -> list[tuple[int, int]]:
    """(prompt + completion tokens, completion tokens) of each record, through the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    lengths = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        prompt = tokenizer.apply_chat_template(
            record["prompt_messages"], tokenize=False, add_generation_prompt=True
        )
        completion = record.get("final_reply") or record["reply"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n_completion = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1
        lengths.append((n_prompt + n_completion, n_completion))
    return lengths


def biggest_batch(lengths: list[tuple[int, int]], cfg) -> tuple[int, int, int]:
    """(tokens, longest, completion tokens) of the largest micro-batch the trainer makes: filled up to
    max_tokens_per_batch (and batch_size examples), longest first, where the trainer has it; else
    batch_size examples padded to the longest."""
    ordered = sorted(lengths, reverse=True)
    limit = getattr(cfg, "max_tokens_per_batch", None)
    per_batch = getattr(cfg, "batch_size", 4)
    if limit is None:
        batch = ordered[:per_batch]
        return len(batch) * batch[0][0], batch[0][0], sum(c for _, c in batch)
    best = (0, 0, 0)
    current: list[tuple[int, int]] = []
    for item in ordered + [None]:
        if item is None or (
            current and (sum(t for t, _ in current) + item[0] > limit or len(current) >= per_batch)
        ):
            tokens = sum(t for t, _ in current)
            if tokens > best[0]:
                best = (tokens, max(t for t, _ in current), sum(c for _, c in current))
            current = []
        if item is not None:
            current.append(item)
    return best


def split_env(words: list[str]) -> tuple[dict, list[str]]:
    """Leading NAME=VALUE words of a variant are its environment; the rest are flags."""
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, value = words[0].split("=", 1)
        env[name], words = value, words[1:]
    return env, words


def estimate(base_model: str, extra: list[str], lengths) -> dict:
    """The estimate of w4s.training.memory for this run's settings (the defaults plus ``extra``), as the
    child computes it (with the child's environment: glibc tunables change the allocator part)."""
    import torch
    from transformers import AutoModelForCausalLM

    from w4s.training import memory
    from w4s.training.config import TrainConfig

    env, extra = split_env(extra)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return _estimate(base_model, extra, lengths, memory, TrainConfig, torch, AutoModelForCausalLM)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _estimate(base_model, extra, lengths, memory, TrainConfig, torch, AutoModelForCausalLM) -> dict:
    cfg = TrainConfig()
    flags = dict(zip(extra[::2], extra[1::2], strict=False))
    for flag, value in flags.items():
        name = flag.lstrip("-").replace("-", "_")
        current = getattr(cfg, name, None)
        if isinstance(current, bool):
            value = value.lower() in ("true", "1", "yes")
        elif isinstance(current, int) and not isinstance(current, bool):
            value = int(value)
        setattr(cfg, name, value)
    tokens, longest, completion = biggest_batch(lengths, cfg)
    bf16 = getattr(cfg, "bf16", "auto") == "true"
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if bf16 else torch.float32)
    # w4s train tames glibc's allocator itself unless a MALLOC_* variable is set (then glibc's own
    # tunables decide): the estimate is the one the child makes
    env = {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")}
    slack = bool(env) and not memory.allocator_tamed()
    parts = memory.estimate_for(
        model, cfg, tokens, longest, completion_tokens=completion, device="cpu", allocator_slack=slack
    )
    inputs = parts.pop("inputs")
    return {
        "batch": {"tokens": tokens, "longest": longest, "completion_tokens": completion},
        "gradient_checkpointing": inputs["gradient_checkpointing"],
        "gib": {name: round(value / GIB, 3) for name, value in parts.items()},
    }


def train(trajectories: Path, base_model: str, out: Path, extra: list[str], limit: int) -> dict:
    """`w4s train` at the defaults (plus ``extra``) in a child process: peak RSS, wall time, outcome."""
    command = [sys.executable, "-m", "w4s.cli", "train", "--trajectories", str(trajectories)]
    command += ["--base-model", base_model, "--output", str(out), "--lora", "true", "--max-steps", "2"]
    child_env, extra = split_env(extra)
    command += ["--no-tracking", "true", *extra]
    try:
        group = MemoryCgroup.create(limit)
    except Unavailable as exc:
        print(f"no memory cgroup ({exc}): running without a limit", file=sys.stderr)
        group = None
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **child_env}
    log = out.parent / f"{out.name}.log"
    started = time.perf_counter()
    with open(log, "w") as stream:
        child = subprocess.Popen(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=group.join if group else None,
        )
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "command": shlex.join([*(f"{k}={v}" for k, v in child_env.items()), "w4s", *command[3:]]),
        "returncode": child.returncode,
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),
        "wall_s": round(seconds, 1),
        "cgroup_limit_gib": round(limit / GIB, 1) if group else None,
        "oom_killed": bool(group and group.oom_kills()),
    }
    if group is not None:
        peak = group.peak()
        result["cgroup_peak_gib"] = round(peak / GIB, 3) if peak else None  # page cache included
        group.remove()
    if child.returncode != 0:
        result["log_tail"] = log.read_text()[-1500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default=None, help="default: the pulled smollm2-135m")
    parser.add_argument(
        "--data-dir", default=os.environ.get("W4S_DATA_DIR") or str(REPO.parent / "shared" / "datasets")
    )
    parser.add_argument("--limit-gib", type=float, default=12.0, help="memory cgroup of each training child")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='LABEL="--flag value ...": another run with these flags',
    )
    parser.add_argument("--out", default=str(REPO / "perf" / "results" / "train_memory-cpu.json"))
    args = parser.parse_args()
    from w4s.llm import models

    base_model = args.base_model or str(models.model_dir("smollm2-135m"))
    if not (Path(base_model) / "config.json").is_file():
        raise SystemExit(f"no model at {base_model}: run `w4s models pull smollm2-135m` first")
    variants = [("defaults", [])] + [
        (label, shlex.split(flags)) for label, flags in (v.split("=", 1) for v in args.variant)
    ]
    with tempfile.TemporaryDirectory(prefix="w4s-train-memory-") as tmp:
        tmp = Path(tmp)
        trajectories = optimize_records(tmp, Path(args.data_dir))
        records = [json.loads(line) for line in trajectories.read_text().splitlines()]
        lengths = record_lengths(trajectories, base_model)
        runs = []
        for index, (label, extra) in enumerate(variants):
            run = {"label": label, "flags": extra}
            run.update(
                train(trajectories, base_model, tmp / f"ckpt{index}", extra, int(args.limit_gib * GIB))
            )
            run["estimate"] = estimate(base_model, extra, lengths)
            total = run["estimate"]["gib"]["total"]
            run["estimate_over_measured"] = (
                round(total / run["peak_rss_gib"], 3) if run["returncode"] == 0 else None
            )
            runs.append(run)
            print(json.dumps(run), flush=True)
    defaults = runs[0]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB",
        "model": "smollm2-135m",
        "records": {
            "count": len(records),
            "prompt_chars": [sum(len(m["content"]) for m in r["prompt_messages"]) for r in records],
            "tokens": [t for t, _ in lengths],
            "completion_tokens": [c for _, c in lengths],
        },
        "goal": "peak RSS <= 4 GiB at the defaults",
        "goal_met": defaults["returncode"] == 0 and defaults["peak_rss_gib"] * GIB <= GOAL,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"defaults: peak RSS {defaults['peak_rss_gib']:.2f} GiB (estimate {defaults['estimate']['gib']['total']:.2f}), "
        f"{defaults['wall_s']:.0f} s, exit {defaults['returncode']}; goal <= 4 GiB "
        f"{'met' if result['goal_met'] else 'NOT met'}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()

"""`w4s train` as a user runs it: inputs checked with clear errors, checkpoints resumable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.training import tiny
from w4s.errors import ConfigError
from w4s.training.config import TrainConfig
from w4s.training.dataset import build_examples, read_records, tokenize

PROMPT = [{"role": "system", "content": "write a workflow"}, {"role": "user", "content": "task 1 2"}]


def record(i, reward, reply="good answer is 1", turn=1, episode=0, workflow="x"):
    return {
        "episode": episode,
        "turn": turn,
        "candidate": i,
        "prompt_messages": PROMPT,
        "reply": reply,
        "reward": reward,
        "workflow": workflow,
    }


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_weights_and_filters(tmp_path):
    records = [record(0, 1.0), record(1, 0.0, workflow=None), record(2, -0.1, turn=2, episode=1)]
    examples = build_examples(records, TrainConfig())
    assert [round(e.weight, 4) for e in examples] == [12.1825, 1.0, 0.7788]
    assert len(build_examples(records, TrainConfig(drop_failed=True))) == 2
    assert len(build_examples(records, TrainConfig(only_success_episodes=True))) == 2
    assert len(build_examples(records, TrainConfig(turns=[2], allow_uniform_weights=True))) == 1


def test_completion_only_labels():
    tok = tiny.tokenizer()
    row = tokenize(build_examples([record(0, 1.0), record(1, 0.0)], TrainConfig()), tok, TrainConfig())[0]
    completion = tok("good answer is 1", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    labelled = [t for t in row["labels"] if t != -100]
    assert labelled == completion and row["input_ids"][-len(completion) :] == completion


@pytest.mark.parametrize(
    ("records", "cfg", "message"),
    [
        ([], TrainConfig(), "hold no records; run `w4s optimize` first"),
        ([record(0, 0.5), record(1, 0.5)], TrainConfig(), "every reward equals 0.5"),
        ([record(0, 1.0), record(1, 0.0)], TrainConfig(turns=[7]), "no trajectory records are left"),
    ],
)
def test_bad_trajectories(records, cfg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_examples(records, cfg)


def test_too_long_sequences(tmp_path):
    tok = tiny.tokenizer()
    examples = build_examples([record(0, 1.0), record(1, 0.0, reply="bad " * 100)], TrainConfig())
    with pytest.raises(ConfigError, match="1 examples are longer than max_length=50 tokens"):
        tokenize(examples, tok, TrainConfig(max_length=50))
    assert len(tokenize(examples, tok, TrainConfig(max_length=50, drop_long=True))) == 1


def test_not_a_trajectories_file(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match="x.jsonl:1 is not a JSON line"):
        read_records([bad])
    with pytest.raises(ConfigError, match="does not exist"):
        read_records([tmp_path / "missing.jsonl"])


def w4s(*args):
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", "train", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_errors_are_one_line(tmp_path):
    good = write(tmp_path / "t.jsonl", [record(0, 1.0), record(1, 0.0)])
    empty = write(tmp_path / "e.jsonl", [])
    cases = [
        (
            [
                "--trajectories",
                str(good),
                "--base-model",
                str(tmp_path / "nope"),
                "--output",
                str(tmp_path / "o"),
            ],
            "base model",
            "does not exist",
        ),
        (
            ["--trajectories", str(empty), "--base-model", str(tmp_path), "--output", str(tmp_path / "o")],
            "hold no records",
            None,
        ),
        (
            [
                "--trajectories",
                str(good),
                "--base-model",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
                "--learning-rate",
                "-1",
            ],
            "learning_rate=-1.0 is invalid",
            None,
        ),
    ]
    for args, message, more in cases:
        done = w4s(*args)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("w4s: error:") and message in last and (more is None or more in last), (
            done.stderr
        )


def test_cli_trains_and_resumes_from_a_checkpoint(tmp_path):
    base = tiny.save_base(tmp_path / "base")
    data = write(tmp_path / "t.jsonl", [record(i, 1.0 if i % 2 else -0.1) for i in range(6)])
    common = [
        "--trajectories",
        str(data),
        "--base-model",
        str(base),
        "--output",
        str(tmp_path / "out"),
        "--lora",
        "--batch-size",
        "2",
        "--save-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--max-length",
        "64",
    ]
    first = w4s(*common, "--max-steps", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    second = w4s(*common, "--max-steps", "6", "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-4") and summary["steps"] == 6
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")  # merged: plain transformers
    assert model.config.num_hidden_layers == 2
